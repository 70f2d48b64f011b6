"""Edge cases of the PuLID (SDXL) and PuLID-FLUX nodes from an adversarial review (2026-11-27).

Each test asserts the behaviour the project promises (README: Nodes, Bad input); each docstring
says how the code behaved before its fix, so each test fails on that code. Calls go straight to
``execute``, as ComfyUI does after its own (partial) validation; the tiny models and fixtures are
the ones the other in-process tests use (tests/comfy_testpack).
"""

import pytest
import torch

from pulid_core.errors import PuLIDError

pytestmark = pytest.mark.comfy


def sample_flux(model, steps=4, cfg=1.0, seed=0):
    import comfy.sample

    gen = torch.Generator().manual_seed(5)
    context, pooled = torch.randn(1, 8, 64, generator=gen), torch.randn(1, 32, generator=gen)
    positive = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    negative = [[torch.zeros_like(context), {"pooled_output": torch.zeros_like(pooled), "guidance": 3.5}]]
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True)


# -- 1. start_at / end_at follow the schedule of the sampled model ---------------------
@pytest.mark.parametrize("steps", [4, 8])
def test_flux_end_at_follows_a_model_sampling_flux_node_placed_after_apply(tiny_flux, loaded, face_image, steps):
    """FLUX workflows commonly set the schedule's shift with ComfyUI's ModelSamplingFlux node. Whether
    it sits before or after Apply PuLID (FLUX), end_at=0.5 must mean half of the schedule the sampler
    really runs (ComfyUI's own ConditioningSetTimestepRange and ControlNet start/end resolve their
    percentages at sampling time). Before the fix the Apply node converted end_at to a sigma with the model
    sampling of its *input* model, so a ModelSamplingFlux downstream silently moves where the
    identity stops (shift 4: end_at 0.5 acts at sigma 0.76 instead of 0.98)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace
    from comfyui_pulid.nodes.flux import PuLIDFluxApplyEmbeds

    embeds = PuLIDEncodeFace.execute(loaded["flux"], loaded["eva"], loaded["face"], face_image, "largest", 0,
                                     "error", "average").result[0]

    def shifted(model):  # max_shift 4, base_shift 3 at 1024x1024: shift 4
        return ModelSamplingFlux().patch(model, 4.0, 3.0, 1024, 1024)[0]

    def pulid(model):
        return PuLIDFluxApplyEmbeds.execute(model, loaded["flux"], embeds, 1.0, 0.0, 0.5).result[0]

    shift_first = sample_flux(pulid(shifted(tiny_flux)), steps=steps)
    pulid_first = sample_flux(shifted(pulid(tiny_flux)), steps=steps)
    no_id = sample_flux(shifted(tiny_flux), steps=steps)
    assert (shift_first - no_id).abs().max() > 1e-3  # the identity is there at all
    torch.testing.assert_close(pulid_first, shift_first, atol=1e-4, rtol=0)


# -- 2. null / non-string COMBO values from an API client ---------------------------------------------
def _file_combo_cases():
    return [
        ("loaders.PuLIDModelLoader", dict(pulid_file=None), "pulid_file"),
        ("loaders.PuLIDModelLoader", dict(pulid_file=5), "pulid_file"),
        ("loaders.PuLIDEvaClipLoader", dict(eva_clip=None, precision="fp32"), "eva_clip"),
        ("loaders.PuLIDInsightFaceLoader", dict(provider="CPU", pack=5, alignment="insightface"), "pack"),
        ("embeds.PuLIDLoadEmbeds", dict(embeds_file=None), "embeds_file"),
        ("embeds.PuLIDLoadEmbeds", dict(embeds_file=7), "embeds_file"),
        ("photomaker.PuLIDPhotoMakerLoader", dict(model=None, photomaker_file=None, lora_strength=1.0),
         "photomaker_file"),
        ("legacy.PulidModelLoader", dict(pulid_file=""), "pulid_file"),
    ]


@pytest.mark.parametrize("path, kwargs, input_name", _file_combo_cases(),
                         ids=[f"{c[0]}-{c[2]}={c[1][c[2]]!r}" for c in _file_combo_cases()])
def test_loaders_refuse_a_null_or_numeric_file_choice_by_name(models_dir, path, kwargs, input_name):
    """ComfyUI 0.3.75 does not check a V3 COMBO value for an API prompt (execution.validate_inputs
    accepts ``"pulid_file": null``), so the loader must. Before the fix: a raw
    ``TypeError: join() argument must be str, bytes, or os.PathLike object, not 'NoneType'`` from
    deep inside folder_paths."""
    from comfyui_pulid.nodes import embeds, legacy, loaders, photomaker

    module, name = path.split(".")
    cls = getattr({"loaders": loaders, "embeds": embeds, "photomaker": photomaker, "legacy": legacy}[module], name)
    display = cls.define_schema().display_name
    with pytest.raises(PuLIDError) as err:
        cls.execute(**kwargs)
    assert display in str(err.value) and input_name in str(err.value), str(err.value)


def test_insightface_loader_null_pack_does_not_blame_a_pulid_model_file(models_dir):
    """``pack: null`` from an API client: before the fix the message said
    ``ip-adapter_pulid_sdxl_fp16.safetensors not found in .../insightface. Download it from
    https://huggingface.co/huchenlei/... and put it in .../insightface`` (registry entries without a
    pack match None), sending the user to download a PuLID adapter into the InsightFace folder."""
    from comfyui_pulid.nodes import loaders

    with pytest.raises(PuLIDError) as err:
        loaders.PuLIDInsightFaceLoader.execute("CPU", None, "insightface")
    message = str(err.value)
    assert "ip-adapter_pulid" not in message and "huchenlei" not in message, message
    assert "pack" in message, message


def _null_choice_cases():
    base = dict(pulid=None, eva_clip=None, face_analysis=None, weight=0.8, start_at=0.0, end_at=1.0)
    advanced = dict(base, method="custom", projection="ortho_v2", num_zero=8, uncond_noise=0.0,
                    face_selection="largest", face_index=0, on_no_face="error", combine="average")
    return [
        ("pulid.PuLIDApply", dict(base, method=None), "method"),
        ("pulid.PuLIDApplyAdvanced", dict(advanced, method=None), "method"),
        ("pulid.PuLIDApplyAdvanced", dict(advanced, face_selection=None), "face_selection"),
        ("flux.PuLIDFluxApply", dict(base, weight=1.0, face_selection=None, face_index=0, on_no_face="error"),
         "face_selection"),
    ]


@pytest.mark.parametrize("path, kwargs, input_name", _null_choice_cases(),
                         ids=[f"{c[0]}-{c[2]}=None" for c in _null_choice_cases()])
def test_apply_nodes_name_themselves_and_the_input_for_a_null_choice(tiny_sdxl, tiny_flux, loaded, face_image,
                                                                      path, kwargs, input_name):
    """README (Bad input): a COMBO value that is not one of the node's options gives an error naming
    the node, the input and the allowed values. ``check_inputs`` skips None, so a null from an API
    client ends in an inner message instead: ``Unknown PuLID method None; use one of fidelity, style,
    neutral.`` (no node) or ``Apply PuLID (FLUX): Unknown face selection (None, 0): use 'largest',
    'center' or (order, index) ...`` (no input name, an internal tuple)."""
    from comfyui_pulid.nodes import flux, pulid

    module, name = path.split(".")
    cls = getattr({"pulid": pulid, "flux": flux}[module], name)
    display = cls.define_schema().display_name
    adapter = loaded["flux"] if module == "flux" else loaded["v1"]
    model = tiny_flux if module == "flux" else tiny_sdxl[0]
    args = dict(kwargs, model=model, pulid=adapter, eva_clip=loaded["eva"], face_analysis=loaded["face"],
                image=face_image)
    with pytest.raises(PuLIDError) as err:
        cls.execute(**args)
    assert str(err.value).startswith(f"{display}: {input_name}"), str(err.value)


# -- 3. Save PuLID Embeds: a prefix that names no file ---------------------------------------------
@pytest.mark.parametrize("prefix", [".", "./", "x/.."])
def test_save_embeds_refuses_a_prefix_that_normalises_to_no_name(loaded, face_image, models_dir, prefix):
    """README: an empty filename_prefix is an error naming the node and the prefix, nothing written.
    A prefix that normalises to "." is as empty, yet it was saved as the hidden file
    ``pulid_embeds/._00001_.safetensors`` (invisible to ``ls``; on macOS a "._" file is AppleDouble
    metadata that Finder hides and cleanup tools delete)."""
    from comfyui_pulid.nodes.embeds import PuLIDEncodeFace, PuLIDSaveEmbeds

    embeds = PuLIDEncodeFace.execute(loaded["v1"], loaded["eva"], loaded["face"], face_image, "largest", 0,
                                     "error", "average").result[0]
    folder = models_dir / "pulid_embeds"
    before = set(folder.rglob("*"))
    with pytest.raises(PuLIDError, match="Save PuLID Embeds: filename_prefix"):
        PuLIDSaveEmbeds.execute(embeds, prefix)
    assert set(folder.rglob("*")) == before
