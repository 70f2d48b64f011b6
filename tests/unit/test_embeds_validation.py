"""Saved ID embeddings are input: every way a file can be wrong gets a message naming the file."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pulid_core import embeds as E
from pulid_core.errors import PuLIDError

NODE = "Load PuLID Embeds"


def tokens(t=10, width=2048, batch=1, seed=0, dtype=torch.float32):
    return torch.randn(batch, t, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def meta(version="v1", images=1, combine="average", over=None):
    m = E.embeds_metadata(version, images, combine, {"adapter": "x.safetensors"})
    m.update(over or {})
    return {k: v for k, v in m.items() if v is not None}


def write(tmp_path, tensors, metadata, name="face_00001_.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def refused(path_or_pair, match, **kw):
    with pytest.raises(PuLIDError, match=match) as err:
        if isinstance(path_or_pair, tuple):
            E.check_embeds(*path_or_pair, name="face.safetensors", node=NODE, **kw)
        else:
            E.read_embeds(path_or_pair, node=NODE, **kw)
    message = str(err.value)
    assert message.startswith(NODE)
    return message


@pytest.mark.parametrize(
    "version, t, images, combine",
    [("v1", 10, 1, "average"), ("v1", 10, 4, "average"), ("v1", 20, 3, "concat"), ("v1.1", 32, 2, "idformer"),
     ("flux", 32, 1, "idformer")],
)
def test_good_files_load_as_fp32(tmp_path, version, t, images, combine):
    path = write(tmp_path, {"cond": tokens(t, dtype=torch.float16), "uncond": tokens(t, seed=1)},
                 meta(version, images, combine))
    got = E.read_embeds(path, node=NODE)
    assert (got.version, got.images, got.combine) == (version, images, combine)
    assert got.cond.dtype == got.uncond.dtype == torch.float32 and got.cond.shape == (1, t, 2048)
    assert got.metadata == {"adapter": "x.safetensors"}
    torch.testing.assert_close(got.cond, tokens(t, dtype=torch.float16).float())


def test_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    message = refused(empty, "empty.safetensors is empty")
    assert "Save PuLID Embeds" in message
    path = write(tmp_path, {"cond": tokens(), "uncond": tokens()}, meta())
    data = path.read_bytes()
    for cut in (7, 100, len(data) - 1000):
        path.write_bytes(data[:cut])
        refused(path, r"face_00001_.safetensors \(.* bytes\) is not a readable safetensors file")
    (tmp_path / "page.safetensors").write_bytes(b"<html>404</html>" * 10)
    refused(tmp_path / "page.safetensors", "page.safetensors .*not a readable safetensors file")


@pytest.mark.parametrize("drop", ["cond", "uncond"])
def test_missing_tensor(drop):
    tensors = {"cond": tokens(), "uncond": tokens()}
    del tensors[drop]
    refused((tensors, meta()), f"face.safetensors: no '{drop}' tensor")


def test_other_files_are_named():
    refused(({"cond": tokens(), "uncond": tokens()}, {}), "not a PuLID embeddings file")
    lora = {"lora_unet_down.lora_up.weight": torch.zeros(2)}
    refused((lora, {"format": "x"}), "not a PuLID embeddings file.*looks like a LoRA")
    refused(({"cond": tokens(), "uncond": tokens(), "junk": tokens()}, meta()), "other than cond and uncond")


@pytest.mark.parametrize(
    "version, combine, images, cond_shape, uncond_shape, match",
    [
        ("v1", "average", 1, (1, 32, 2048), (1, 32, 2048), r"'cond' has shape \[1, 32, 2048\]; PuLID v1 .* \[1, 10, "),
        ("v1.1", "idformer", 1, (1, 10, 2048), (1, 10, 2048), r"PuLID v1.1 embeddings are \[1, 32, 2048\]"),
        ("flux", "idformer", 1, (1, 10, 2048), (1, 10, 2048), r"PuLID flux embeddings are \[1, 32, 2048\]"),
        ("v1.1", "idformer", 1, (1, 32, 2048), (1, 10, 2048), r"'uncond' has shape \[1, 10, 2048\]"),
        ("v1", "average", 1, (1, 10, 2048), (1, 10, 768), r"'uncond' has shape \[1, 10, 768\]"),
        ("v1", "concat", 3, (1, 10, 2048), (1, 10, 2048), r"of 3 photos \(concat\) are \[1, 20, 2048\]"),
        ("v1", "average", 1, (3, 10, 2048), (1, 10, 2048), r"\[3, 10, 2048\].*a batch of several"),
        ("v1", "average", 1, (10, 2048), (10, 2048), r"'cond' has shape \[10, 2048\]"),
        ("v1", "average", 1, (1, 1, 10, 2048), (1, 1, 10, 2048), r"'cond' has shape \[1, 1, 10, 2048\]"),
    ],
)
def test_shapes(version, combine, images, cond_shape, uncond_shape, match):
    gen = torch.Generator().manual_seed(0)
    tensors = {"cond": torch.randn(cond_shape, generator=gen), "uncond": torch.randn(uncond_shape, generator=gen)}
    refused((tensors, meta(version, images, combine)), match)


def test_width_is_the_adapters_when_known():
    pair = ({"cond": tokens(width=48), "uncond": tokens(width=48)}, meta())
    assert E.check_embeds(*pair, name="f", node=NODE).cond.shape == (1, 10, 48)
    refused(pair, r"\[1, 10, 2048\]", width=2048)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.bool])
def test_non_float_dtypes(dtype):
    bad = torch.zeros(1, 10, 2048, dtype=dtype)
    refused(({"cond": bad, "uncond": tokens()}, meta()), f"'cond' is {str(dtype).split('.')[-1]}; ID tokens are floats")


@pytest.mark.parametrize("value, match", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"),
                                          (-float("inf"), "NaN or infinite"), (5.0e4, "values up to 5e"),
                                          (1.0e30, "values up to 1e")])
def test_values_that_would_give_a_black_image(tmp_path, value, match):
    bad = tokens()
    bad[0, 3, 7] = value
    path = write(tmp_path, {"cond": tokens(), "uncond": bad}, meta())
    message = refused(path, match)
    assert "'uncond'" in message and "face_00001_.safetensors" in message


def test_fp64_beyond_fp32_is_refused_not_turned_into_inf():
    bad = tokens().double()
    bad[0, 0, 0] = 1e300
    refused(({"cond": bad, "uncond": tokens()}, meta()), "NaN or infinite|values up to")


@pytest.mark.parametrize(
    "over, match",
    [
        ({"images": "abc"}, r"broken metadata field images='abc'"),
        ({"images": "0"}, "metadata says 0 photos"),
        ({"images": "-2"}, "metadata says -2 photos"),
        ({"images": "1e9"}, r"broken metadata field images='1e9'"),
        ({"extra": "{broken"}, "broken JSON in the metadata field 'extra'"),
        ({"extra": "[1, 2]"}, "'extra' is not a JSON object"),
        ({"pulid_version": "v2"}, "unknown PuLID kind 'v2'"),
        ({"pulid_version": None}, "unknown PuLID kind None"),
        ({"format": "something/else"}, "not a PuLID embeddings file"),
    ],
)
def test_metadata_that_does_not_parse(tmp_path, over, match):
    path = write(tmp_path, {"cond": tokens(), "uncond": tokens()}, meta(over=over))
    message = refused(path, match)
    assert "face_00001_.safetensors" in message


@pytest.mark.parametrize(
    "made, loaded, file",
    [("v1.1", "v1", "pulid_v1.1.safetensors"), ("v1", "v1.1", "ip-adapter_pulid_sdxl_fp16.safetensors"),
     ("v1", "flux", "pulid_v1.bin"), ("flux", "v1.1", "pulid_flux_v0.9.1.safetensors")],
)
def test_embeddings_of_another_adapter_kind_name_the_file_to_load(made, loaded, file):
    t = E.TOKENS[made]
    pair = ({"cond": tokens(t), "uncond": tokens(t)}, meta(made, 1, "idformer" if t == 32 else "average"))
    message = refused(pair, f"made with PuLID {made}, but the loaded PuLID model is {loaded}", expected_version=loaded)
    assert file in message and "face.safetensors" in message


def test_check_tokens_for_embeds_in_memory():
    cond, uncond = E.check_tokens(tokens(32).half(), tokens(32), "v1.1", "idformer", 2, name="x", node="Apply")
    assert cond.dtype == torch.float32 and uncond.shape == (1, 32, 2048)
    with pytest.raises(PuLIDError, match="Apply: x: unknown PuLID kind 'v3'"):
        E.check_tokens(tokens(), tokens(), "v3", "", 1, name="x", node="Apply")
    with pytest.raises(PuLIDError, match="no 'cond' tensor"):
        E.check_tokens(None, tokens(), "v1", "average", 1, name="x", node="Apply")
    # A combine that is not the kind's own (any string used to pass, and decided v1's token count).
    for version, combine in (("v1", ""), ("v1", "Concat"), ("v1.1", "average"), ("flux", "concat")):
        with pytest.raises(PuLIDError, match=f"unknown combine '{combine}' for PuLID {version}"):
            E.check_tokens(tokens(32), tokens(32), version, combine, 1, name="x", node="Apply")


def test_write_never_replaces_a_file(tmp_path):
    path = tmp_path / "a_00001_.safetensors"
    m = meta()
    E.write_embeds(path, tokens(), tokens(seed=1), m)
    first = path.read_bytes()
    with pytest.raises(FileExistsError):
        E.write_embeds(path, tokens(seed=2), tokens(seed=3), m)
    assert path.read_bytes() == first
    assert E.read_embeds(path, node=NODE).metadata == json.loads(m["extra"]) == {"adapter": "x.safetensors"}
