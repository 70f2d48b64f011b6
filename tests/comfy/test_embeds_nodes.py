"""Tier 2: Save / Load / Apply PuLID Embeds never lose a file and refuse bad embeddings by name."""

import os

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfy

FORMAT = "comfyui-pulid/id-embeds/1"


@pytest.fixture(scope="module")
def env(pack, model_folders):
    """Tiny v1 / v1.1 adapters and an empty embeddings folder, registered as ComfyUI's first folders."""
    from comfy_testpack import stand_ins_pulid as s

    root = model_folders("embeds_models", "pulid", "pulid_embeds")
    s.write_tiny_pulid(root / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_v1.1.safetensors")
    pack.nodes.node_list()
    from comfyui_pulid.nodes import loaders

    adapters = {
        "v1": loaders.PuLIDModelLoader.execute("ip-adapter_pulid_sdxl_fp16.safetensors").result[0],
        "v1.1": loaders.PuLIDModelLoader.execute("pulid_v1.1.safetensors").result[0],
    }
    return {"folder": root / "pulid_embeds", "adapters": adapters, "width": s.TOKEN_DIM}


def make(env, version="v1.1", t=None, seed=0, cond=None, uncond=None, images=1, combine=None):
    from comfyui_pulid.nodes.pulid import IDEmbeds

    t = t or (10 if version == "v1" else 32)
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, t, env["width"], generator=gen) if cond is None else cond
    uncond = torch.randn(1, t, env["width"], generator=gen) if uncond is None else uncond
    combine = combine or ("average" if version == "v1" else "idformer")
    return IDEmbeds(version, cond, uncond, images, combine, {"adapter": "tiny"})


def save(embeds, prefix):
    from comfyui_pulid.nodes.embeds import PuLIDSaveEmbeds

    return PuLIDSaveEmbeds.execute(embeds, prefix).ui["text"][0]


def load(name):
    from comfyui_pulid.nodes.embeds import PuLIDLoadEmbeds

    return PuLIDLoadEmbeds.execute(name).result[0]


def apply(tiny_sdxl, env, embeds, version):
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds

    return PuLIDApplyEmbeds.execute(tiny_sdxl[0], env["adapters"][version], embeds, "fidelity", 0.8, 0.0, 1.0).result[0]


# -- saving ----------------------------------------------------------------------------------


def test_saving_twice_with_the_same_prefix_keeps_both_files(env):
    first, second = make(env, seed=1), make(env, seed=2)
    text1 = save(first, "twice")
    saved = sorted(p.name for p in env["folder"].glob("twice_*"))
    data1 = (env["folder"] / saved[0]).read_bytes()
    text2 = save(second, "twice")
    saved = sorted(p.name for p in env["folder"].glob("twice_*"))
    assert saved == ["twice_00001_.safetensors", "twice_00002_.safetensors"]
    assert "twice_00001_" in text1 and "twice_00002_" in text2
    assert (env["folder"] / saved[0]).read_bytes() == data1  # the first file is intact
    assert torch.equal(load(saved[0]).cond, first.cond) and torch.equal(load(saved[1]).cond, second.cond)


def test_a_taken_name_the_counter_missed_is_skipped_not_overwritten(env, monkeypatch):
    import folder_paths

    save(make(env, seed=3), "taken")
    before = (env["folder"] / "taken_00001_.safetensors").read_bytes()
    real = folder_paths.get_save_image_path
    monkeypatch.setattr(folder_paths, "get_save_image_path",
                        lambda prefix, folder, *a: (*real(prefix, folder)[:2], 1, *real(prefix, folder)[3:]))
    text = save(make(env, seed=4), "taken")
    assert "taken_00002_" in text
    assert (env["folder"] / "taken_00001_.safetensors").read_bytes() == before


def test_a_subfolder_prefix(env):
    text = save(make(env, seed=5), "people/alice")
    assert os.path.join("people", "alice_00001_.safetensors") in text
    assert load("people/alice_00001_.safetensors").version == "v1.1"


@pytest.mark.parametrize("prefix, match", [
    ("../outside", "points outside"),
    ("a/../../outside", "points outside"),
    ("ABSOLUTE", "points outside"),
    ("x" * 300, "too long for the file system"),
    ("sub/" + "y" * 260, "too long for the file system"),
    ("", "not a usable file name prefix"),
    ("   ", "not a usable file name prefix"),
])
def test_bad_prefixes_are_clear_errors(env, prefix, match):
    from pulid_core.errors import PuLIDError

    outside = env["folder"].parent
    prefix = prefix.replace("ABSOLUTE", str(outside / "absolute"))
    before = sorted(str(p) for p in outside.rglob("*"))
    with pytest.raises(PuLIDError, match=f"Save PuLID Embeds: .*{match}"):
        save(make(env), prefix)
    assert sorted(str(p) for p in outside.rglob("*")) == before


# -- loading ---------------------------------------------------------------------------------


def _meta(**over):
    m = {"format": FORMAT, "pulid_version": "v1.1", "images": "1", "combine": "idformer", "extra": "{}"}
    m.update(over)
    return m


def _bad_file(env, case):
    w, gen = env["width"], torch.Generator().manual_seed(0)
    good = {"cond": torch.randn(1, 32, w, generator=gen), "uncond": torch.randn(1, 32, w, generator=gen)}
    path = env["folder"] / f"bad_{case}.safetensors"
    if case == "empty":
        path.write_bytes(b"")
        return path
    tensors, meta = dict(good), _meta()
    if case == "no_uncond":
        del tensors["uncond"]
    elif case == "v1_shape_for_v11":
        tensors = {k: v[:, :10] for k, v in good.items()}
    elif case == "t_differs":
        tensors["uncond"] = good["uncond"][:, :10]
    elif case == "batch3":
        tensors["cond"] = torch.randn(3, 32, w, generator=gen)
    elif case == "int":
        tensors["cond"] = torch.zeros(1, 32, w, dtype=torch.int32)
    elif case == "nan":
        tensors["cond"][0, 0, 0] = float("nan")
    elif case == "inf":
        tensors["uncond"][0, 5, 1] = float("inf")
    elif case == "huge":
        tensors["cond"] = tensors["cond"] * 1e6
    elif case == "images_abc":
        meta["images"] = "abc"
    elif case == "broken_json":
        meta["extra"] = '{"adapter": '
    save_file(tensors, str(path), metadata=meta)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    return path


@pytest.mark.parametrize("case, match", [
    ("empty", "is empty"),
    ("truncated", "not a readable safetensors file"),
    ("no_uncond", "no 'uncond' tensor"),
    ("v1_shape_for_v11", r"'cond' has shape \[1, 10, 48\]; PuLID v1.1 embeddings are \[1, 32, 48\]"),
    ("t_differs", r"'uncond' has shape \[1, 10, 48\]"),
    ("batch3", r"\[3, 32, 48\].*a batch of several"),
    ("int", "'cond' is int32; ID tokens are floats"),
    ("nan", "'cond' contains 1 NaN or infinite"),
    ("inf", "'uncond' contains 1 NaN or infinite"),
    ("huge", "'cond' has values up to"),
    ("images_abc", "broken metadata field images='abc'"),
    ("broken_json", "broken JSON in the metadata field 'extra'"),
])
def test_load_refuses_bad_files_by_name(env, case, match):
    from pulid_core.errors import PuLIDError

    path = _bad_file(env, case)
    with pytest.raises(PuLIDError, match=match) as err:
        load(path.name)
    assert str(err.value).startswith("Load PuLID Embeds: ") and path.name in str(err.value)


def test_v1_concat_and_flux_files_load(env):
    w = env["width"]
    save_file({"cond": torch.zeros(1, 20, w), "uncond": torch.zeros(1, 20, w)},
              str(env["folder"] / "concat3.safetensors"),
              metadata=_meta(pulid_version="v1", images="3", combine="concat"))
    assert load("concat3.safetensors").cond.shape == (1, 20, w)
    save_file({"cond": torch.zeros(1, 32, w, dtype=torch.bfloat16), "uncond": torch.zeros(1, 32, w)},
              str(env["folder"] / "flux.safetensors"), metadata=_meta(pulid_version="flux"))
    flux = load("flux.safetensors")
    assert flux.version == "flux" and flux.cond.dtype == torch.float32


# -- applying --------------------------------------------------------------------------------


@pytest.mark.parametrize("made, loaded, file", [
    ("v1.1", "v1", "pulid_v1.1.safetensors"),
    ("v1", "v1.1", "ip-adapter_pulid_sdxl_fp16.safetensors"),
    ("flux", "v1.1", "pulid_flux_v0.9.1.safetensors"),
])
def test_apply_names_the_adapter_file_the_embeddings_need(tiny_sdxl, env, made, loaded, file):
    from pulid_core.errors import PuLIDError

    text = save(make(env, made, t=10 if made == "v1" else 32), f"kind_{made}")
    name = text.split()[1]
    with pytest.raises(PuLIDError, match=f"Apply PuLID Embeds: {name}: made with PuLID {made}") as err:
        apply(tiny_sdxl, env, load(name), loaded)
    assert file in str(err.value)


def test_apply_refuses_a_cond_batch_of_three(tiny_sdxl, env):
    from pulid_core.errors import PuLIDError

    three = make(env, "v1", cond=torch.randn(3, 10, env["width"]))
    with pytest.raises(PuLIDError, match=r"Apply PuLID Embeds: .*'cond' has shape \[3, 10, 48\]"):
        apply(tiny_sdxl, env, three, "v1")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e8])
def test_apply_refuses_values_that_give_a_black_image(tiny_sdxl, env, value):
    from pulid_core.errors import PuLIDError

    bad = make(env, "v1")
    bad.uncond[0, 0, 0] = value
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: embeds from 'Encode Face \\(PuLID\\)': 'uncond'"):
        apply(tiny_sdxl, env, bad, "v1")


def test_apply_refuses_tokens_of_another_width(tiny_sdxl, env):
    from pulid_core.errors import PuLIDError

    wide = make(env, "v1", cond=torch.randn(1, 10, 2048), uncond=torch.randn(1, 10, 2048))
    with pytest.raises(PuLIDError, match=r"'cond' has shape \[1, 10, 2048\]; PuLID v1 embeddings are \[1, 10, 48\]"):
        apply(tiny_sdxl, env, wide, "v1")


def test_good_embeddings_still_apply_after_a_round_trip(tiny_sdxl, env):
    embeds = make(env, "v1", t=20, images=3, combine="concat", seed=9)
    name = save(embeds, "good").split()[1]
    out = apply(tiny_sdxl, env, load(name), "v1")
    assert len(out.model_options["transformer_options"]["patches_replace"]["attn2"]) == 70
