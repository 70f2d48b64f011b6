"""Tier 2: Save / Load / Apply PuLID Embeds never lose a file and refuse bad embeddings by name."""

import contextlib
import os
import resource

import pytest
import torch
from safetensors.torch import save_file

pytestmark = pytest.mark.comfy

FORMAT = "comfyui-pulid/id-embeds/1"


@pytest.fixture(scope="module")
def env(pack, model_folders):
    """Tiny v1 / v1.1 / FLUX adapters and an empty embeddings folder, registered as ComfyUI's first folders."""
    from comfy_testpack import stand_ins_pulid as s

    root = model_folders("embeds_models", "pulid", "pulid_embeds")
    s.write_tiny_pulid(root / "pulid" / "ip-adapter_pulid_sdxl_fp16.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_v1.1.safetensors")
    s.write_tiny_pulid(root / "pulid" / "pulid_flux_v0.9.1.safetensors")
    pack.nodes.node_list()
    from comfyui_pulid.nodes import loaders

    adapters = {
        "v1": loaders.PuLIDModelLoader.execute("ip-adapter_pulid_sdxl_fp16.safetensors").result[0],
        "v1.1": loaders.PuLIDModelLoader.execute("pulid_v1.1.safetensors").result[0],
        "flux": loaders.PuLIDModelLoader.execute("pulid_flux_v0.9.1.safetensors").result[0],
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


# -- defects a review found (each docstring says what happened before the fix) ---------------------

# -- saving (edges) ----------------------------------------------------------------------------------


def test_a_save_that_fails_at_close_leaves_no_truncated_file(env):
    """Disk full / quota exceeded while writing: ``write_embeds`` removes the file only when
    ``fh.write`` raises. When the disk fills within the last few KB, write(2) returns a short count,
    Python's BufferedWriter keeps the rest (<= 8 KB) in its buffer and ``fh.write`` succeeds; the error
    comes from the flush in ``close()`` (the ``with`` exit, outside the try), so today the node reports
    "could not write" but leaves a truncated ``cut_00002_.safetensors`` behind, listed in 'Load PuLID
    Embeds'. (NFS/SMB report quota errors at close too.) A user expects no half-written file.
    Simulated with RLIMIT_FSIZE (a real short write, EFBIG); Python ignores SIGXFSZ."""
    from pulid_core.errors import PuLIDError

    embeds = make(env, seed=11)
    save(embeds, "cut")
    size = (env["folder"] / "cut_00001_.safetensors").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size - 100, hard))  # room for all but the last 100 bytes
    try:
        with pytest.raises(PuLIDError, match="Save PuLID Embeds: could not write"):
            save(embeds, "cut")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    left = sorted(p.name for p in env["folder"].glob("cut_*"))
    assert left == ["cut_00001_.safetensors"], f"a truncated file was left behind: {left}"


def test_a_prefix_that_is_not_valid_unicode_is_a_clear_error(env):
    """An API client POSTs ``"filename_prefix": "face\\ud800"`` (JSON allows lone surrogates; Python's
    json decodes them). ``new_file_path`` measures ``part.encode("utf-8")`` unguarded, so today the node
    dies with a bare UnicodeEncodeError traceback. Expected: a PuLIDError naming the node and the fix."""
    from pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError, match="Save PuLID Embeds: .*filename_prefix"):
        save(make(env, seed=12), "face\ud800")


def test_a_backslash_prefix_makes_a_subfolder_not_a_backslash_file_name(env):
    """A workflow made on Windows has ``filename_prefix`` "people\\\\bob". ``new_file_path`` treats the
    backslash as a separator when it checks the prefix (so "..\\\\x" is refused), but then hands the raw
    prefix to ComfyUI, so on Linux/macOS the file is ``people\\bob_00001_.safetensors`` in the top folder,
    a name with a literal backslash (invalid when the folder is copied back to Windows). Expected: the
    same file as with "people/bob", in the subfolder ``people``."""
    text = save(make(env, seed=13), "people\\bob")
    names = sorted(str(p.relative_to(env["folder"])) for p in env["folder"].rglob("*bob_*"))
    assert names == [os.path.join("people", "bob_00001_.safetensors")], (names, text)


@contextlib.contextmanager
def first_embeds_folder(folder):
    """``folder`` (made here) listed first for pulid_embeds, as extra_model_paths.yaml puts a user's folder."""
    import folder_paths
    from comfyui_pulid.nodes.embeds import EMBEDS_FOLDER

    folder.mkdir()
    dirs, exts = folder_paths.folder_names_and_paths[EMBEDS_FOLDER]
    folder_paths.folder_names_and_paths[EMBEDS_FOLDER] = ([str(folder)] + list(dirs), exts)
    try:
        yield folder
    finally:
        folder_paths.folder_names_and_paths[EMBEDS_FOLDER] = (dirs, exts)


def test_the_save_message_says_which_folder_the_file_went_to(env):
    """With extra_model_paths.yaml listing a ``pulid_embeds`` folder (ComfyUI puts it first), Save writes
    there, while its description says "models/pulid_embeds" and its message shows only the relative
    name ("saved face_00001_.safetensors ..."): the artist looks in models/pulid_embeds and does not find
    the file. Expected: the message names the folder it wrote to."""
    other = env["folder"].parent / "nas_embeds"
    with first_embeds_folder(other):
        text = save(make(env, seed=14), "where")
    assert (other / "where_00001_.safetensors").is_file()
    assert str(other) in text, text


def test_a_save_never_takes_a_name_another_embeds_folder_already_has(env):
    """Two embeddings folders (extra_model_paths.yaml lists one, ComfyUI's models/pulid_embeds is the
    other): Save writes to the first and counts only the names there. The user's older
    ``shadow_00001_.safetensors`` in the second folder gets a namesake in the first; the Load list shows
    one entry and ``folder_paths.get_full_path`` resolves it to the new file, so every workflow that
    loaded the old identity now silently gets the new face, and the old file cannot be chosen any more.
    Expected: Save skips names any embeddings folder already holds (here: shadow_00002_)."""
    old = make(env, seed=20)
    save(old, "shadow")  # into env["folder"], today's first folder
    with first_embeds_folder(env["folder"].parent / "yaml_embeds"):
        text = save(make(env, seed=21), "shadow")
        assert "shadow_00001_" not in text, f"{text}: the name of an existing file in {env['folder']}"
        assert torch.equal(load("shadow_00001_.safetensors").cond, old.cond)


# -- loading ---------------------------------------------------------------------------------


def test_load_errors_name_the_file_with_its_subfolder(env):
    """Save supports subfolders, and "alice/face" and "bob/face" both give ``face_00001_.safetensors``.
    ``read_embeds`` names files by ``os.path.basename``, so a broken ``bob/face_00001_.safetensors``
    is reported as "face_00001_.safetensors ... is not a readable safetensors file": the user cannot
    tell which of the two to delete. Expected: the name as the Load list shows it (bob/face_00001_...)."""
    from pulid_core.errors import PuLIDError

    save(make(env, seed=15), "alice/face")
    save(make(env, seed=16), "bob/face")
    broken = env["folder"] / "bob" / "face_00001_.safetensors"
    broken.write_bytes(broken.read_bytes()[:-100])
    with pytest.raises(PuLIDError, match="Load PuLID Embeds: ") as err:
        load("bob/face_00001_.safetensors")
    assert "bob/face_00001_.safetensors" in str(err.value), str(err.value)


def test_load_fingerprint_sees_a_changed_file_with_the_same_mtime(env):
    """``PuLIDLoadEmbeds.fingerprint_inputs`` is the file's mtime only. Every embeddings file of one kind
    has the same size, so a file replaced within the file system's timestamp granularity (FAT/exFAT 2 s,
    HFS+ 1 s, some SMB/NFS mounts) or restored with ``cp -p``/``rsync -a``/unzip keeps the fingerprint,
    and ComfyUI reuses the cached, stale identity: a silently wrong face. Expected: a fingerprint that
    changes with the content (ComfyUI's LoadImage hashes the file; these files are ~0.5 MB)."""
    from comfyui_pulid.nodes.embeds import PuLIDLoadEmbeds

    path = env["folder"] / "swap.safetensors"
    w, gen = env["width"], torch.Generator().manual_seed(17)
    save_file({"cond": torch.randn(1, 32, w, generator=gen), "uncond": torch.randn(1, 32, w, generator=gen)},
              str(path), metadata=_meta())
    before = PuLIDLoadEmbeds.fingerprint_inputs(embeds_file="swap.safetensors")
    first = load("swap.safetensors").cond
    stat = path.stat()
    save_file({"cond": torch.randn(1, 32, w, generator=gen), "uncond": torch.randn(1, 32, w, generator=gen)},
              str(path), metadata=_meta())
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same timestamp, new content
    assert not torch.equal(load("swap.safetensors").cond, first)  # the file did change
    after = PuLIDLoadEmbeds.fingerprint_inputs(embeds_file="swap.safetensors")
    assert after != before, "the fingerprint did not change, so ComfyUI keeps the old embeddings"


def _write(env, name, tensors, meta):
    save_file(tensors, str(env["folder"] / name), metadata=meta)
    return name


def test_a_file_with_deeply_nested_extra_json_is_refused_by_name(env):
    """A hostile or corrupt shared file whose metadata field ``extra`` is deeply nested JSON
    (``{"a": [[[[...]]]]}``, 100k levels): ``parse_metadata`` catches only TypeError/ValueError from
    ``json.loads``, so today the Load node dies with a bare RecursionError traceback. Expected: a
    PuLIDError naming the node and the file ("broken JSON in the metadata field 'extra'")."""
    from pulid_core.errors import PuLIDError

    w = env["width"]
    name = _write(env, "deep_extra.safetensors", {"cond": torch.zeros(1, 32, w), "uncond": torch.zeros(1, 32, w)},
                  _meta(extra='{"a": ' + "[" * 100000 + "]" * 100000 + "}"))
    with pytest.raises(PuLIDError, match="Load PuLID Embeds: deep_extra.safetensors"):
        load(name)


def test_a_file_with_zero_width_tokens_is_refused_by_name(env):
    """A file whose cond/uncond are [1, 32, 0]: without an adapter, ``check_tokens`` takes the width from
    cond (0), the shape check passes, and ``t.abs().max()`` of an empty tensor raises a bare
    RuntimeError ("max(): Expected reduction dim ...") from 'Load PuLID Embeds' (and from 'Save PuLID
    Embeds'). Expected: a PuLIDError naming the file and its shape."""
    from pulid_core.errors import PuLIDError

    name = _write(env, "zero_width.safetensors", {"cond": torch.zeros(1, 32, 0), "uncond": torch.zeros(1, 32, 0)},
                  _meta())
    with pytest.raises(PuLIDError, match="Load PuLID Embeds: zero_width.safetensors"):
        load(name)


def test_an_unknown_combine_in_a_file_is_refused(env):
    """``parse_metadata`` accepts any string as ``combine`` ("Concat", "bogus", "concat" on a v1.1 file)
    and the node passes it on (and Save writes it back). For v1 it decides the expected token count, so
    a "Concat" v1 file of 3 photos is measured against 10 tokens and refused with a misleading
    "PuLID v1 embeddings are [1, 10, ...]". Every value should be checked where it enters: expected a
    PuLIDError naming the field and the known values (average/concat for v1, idformer for v1.1/FLUX)."""
    from pulid_core.errors import PuLIDError

    w = env["width"]
    name = _write(env, "bogus_combine.safetensors", {"cond": torch.zeros(1, 10, w), "uncond": torch.zeros(1, 10, w)},
                  _meta(pulid_version="v1", combine="bogus"))
    with pytest.raises(PuLIDError, match="bogus_combine.safetensors.*combine"):
        load(name)


# -- applying --------------------------------------------------------------------------------


def test_sdxl_embeds_on_the_flux_apply_node_name_the_file(env, tiny_flux):
    """'Apply PuLID Embeds' (SDXL) names a loaded file in its kind-mismatch message, but
    ``apply_flux_embeds`` checks ``embeds.version != "flux"`` before ``checked_embeds`` and says only
    "these ID embeddings were made with PuLID v1.1 (SDXL)": with several Load nodes the user cannot
    tell which file is wrong. Expected: the file name, as on the SDXL node."""
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    from pulid_core.errors import PuLIDError

    name = save(make(env, "v1.1", seed=18), "sdxl_for_flux").split()[1]
    with pytest.raises(PuLIDError, match=r"Apply PuLID Embeds \(FLUX\): .*made with PuLID v1.1") as err:
        PuLIDFluxApplyEmbeds.execute(tiny_flux, env["adapters"]["flux"], load(name), 1.0, 0.0, 1.0)
    assert name in str(err.value), str(err.value)


def test_flux_embeds_on_the_sdxl_apply_embeds_node_point_to_the_flux_embeds_node(env, tiny_sdxl):
    """A user with saved FLUX embeds wires them, with the PuLID-FLUX adapter, into 'Apply PuLID Embeds'
    (the node named for embeds). ``cross_attn_layers`` answers "PuLID for SDXL: ... is a PuLID-FLUX
    adapter. For FLUX.1 use 'Apply PuLID (FLUX)'": no node name, and it sends the user to a node that
    encodes a photo and has no embeds input. Expected: "Apply PuLID Embeds: ..." pointing to
    'Apply PuLID Embeds (FLUX)'."""
    from comfyui_pulid.nodes.embeds import PuLIDApplyEmbeds

    from pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError) as err:
        PuLIDApplyEmbeds.execute(tiny_sdxl[0], env["adapters"]["flux"], make(env, "flux", seed=19), "fidelity",
                                 0.8, 0.0, 1.0)
    message = str(err.value)
    assert message.startswith("Apply PuLID Embeds: "), message
    assert "Apply PuLID Embeds (FLUX)" in message, message


def test_sdxl_embeds_on_the_flux_embeds_node_point_to_the_sdxl_embeds_node(env, tiny_flux):
    """The other way round: SDXL embeds and an SDXL adapter in 'Apply PuLID Embeds (FLUX)'.
    ``check_flux_adapter`` says "... for SDXL use 'Apply PuLID'", a node that takes a photo, not
    embeddings. Expected: it points to 'Apply PuLID Embeds'."""
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    from pulid_core.errors import PuLIDError

    with pytest.raises(PuLIDError, match=r"Apply PuLID Embeds \(FLUX\): pulid_v1.1.safetensors") as err:
        PuLIDFluxApplyEmbeds.execute(tiny_flux, env["adapters"]["v1.1"], make(env, "v1.1", seed=22), 1.0, 0.0, 1.0)
    assert "'Apply PuLID Embeds'" in str(err.value), str(err.value)
