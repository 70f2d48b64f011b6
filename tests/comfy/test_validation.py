"""Tier 2: values from API clients and hand-edited workflows are checked at the node.

ComfyUI 0.3.75 does not check a V3 node's COMBO value against its options for an API
prompt, and its FLOAT range check lets NaN through, so each node checks its inputs and
names itself, the input and the allowed values. These calls go straight to ``execute``
(as ComfyUI does after its own, partial, validation).
"""

import math
from types import SimpleNamespace

import pytest
import torch

from pulid_core.errors import PuLIDError

pytestmark = pytest.mark.comfy

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def nodes(pack):
    pack.nodes.node_list()  # registers the pack's model folders (the loaders' schemas list them)
    from comfyui_pulid.nodes import embeds, flux, legacy, loaders, photomaker, pulid

    return SimpleNamespace(embeds=embeds, flux=flux, legacy=legacy, loaders=loaders, photomaker=photomaker,
                           pulid=pulid)


def fake_adapter(nodes, version="v1"):
    """A PuLIDAdapter whose model only reports its version (every check runs before the model is used)."""
    return nodes.loaders.PuLIDAdapter(SimpleNamespace(model=SimpleNamespace(version=version)), "tiny.safetensors")


def fake_embeds(nodes, version="v1"):
    return nodes.pulid.IDEmbeds(version, torch.zeros(1, 10, 8), torch.zeros(1, 10, 8), 1, "average")


def apply_args(**kw):
    args = dict(model=None, pulid=None, eva_clip=None, face_analysis=None, image=None, method="fidelity",
                weight=0.8, start_at=0.0, end_at=1.0)
    args.update(kw)
    return args


def advanced_args(**kw):
    return apply_args(method="custom", projection="ortho_v2", num_zero=8, uncond_noise=0.0,
                      face_selection="largest", face_index=0, on_no_face="error", combine="average") | kw


# (node class path, execute kwargs, input named in the message, allowed values or None for a number)
COMBO_CASES = [
    ("pulid.PuLIDApply", apply_args(method="fidelityy"), "method", "fidelity, style, neutral"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(projection="bogus"), "projection", "ortho_v2, ortho, none"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(combine="sum"), "combine", "average, concat"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(face_selection="smallest"), "face_selection",
     "largest, center, left_to_right"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(on_no_face="ignore"), "on_no_face", "error, skip"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(method="auto"), "method", "fidelity, style, neutral, custom"),
    ("loaders.PuLIDEvaClipLoader", dict(eva_clip="EVA02_CLIP_L_336_psz14_s6B.pt", precision="fp64"), "precision",
     "fp32, fp16, bf16"),
    ("loaders.PuLIDInsightFaceLoader", dict(provider="TPU", pack="antelopev2", alignment="retinaface"), "provider",
     "CPU, CUDA, ROCM, CoreML, DirectML"),
    ("loaders.PuLIDInsightFaceLoader", dict(provider="CPU", pack="antelopev2", alignment="dlib"), "alignment",
     "retinaface, insightface"),
    ("legacy.ApplyPulid", apply_args(method="Fidelity"), "method", "fidelity, style, neutral"),
    ("legacy.ApplyPulidAdvanced", dict(apply_args(projection="orthogonal", fidelity=8, noise=0.0), method=None),
     "projection", "ortho_v2, ortho, none"),
    ("legacy.PulidInsightFaceLoader", dict(provider="cuda"), "provider", "CPU, CUDA, ROCM"),
]


def node_class(nodes, path):
    module, name = path.split(".")
    return getattr(getattr(nodes, module), name)


def call(cls, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if not (k == "method" and v is None)}
    return cls.execute(**kwargs)


@pytest.mark.parametrize("path, kwargs, input_name, allowed", COMBO_CASES, ids=[f"{c[0]}-{c[2]}" for c in COMBO_CASES])
def test_unknown_combo_value_names_node_input_and_options(nodes, path, kwargs, input_name, allowed):
    cls = node_class(nodes, path)
    display = cls.define_schema().display_name
    with pytest.raises(PuLIDError) as err:
        call(cls, kwargs)
    message = str(err.value)
    assert message.startswith(f"{display}: {input_name} is ")
    assert allowed in message


NUMBER_CASES = [
    ("pulid.PuLIDApply", apply_args(weight=NAN), "weight"),
    ("pulid.PuLIDApply", apply_args(start_at=NAN), "start_at"),
    ("pulid.PuLIDApply", apply_args(end_at=INF), "end_at"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(uncond_noise=NAN), "uncond_noise"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(weight=-INF), "weight"),
    ("pulid.PuLIDApplyAdvanced", advanced_args(num_zero=8.5), "num_zero"),
    ("legacy.ApplyPulid", apply_args(weight=NAN), "weight"),
    ("legacy.ApplyPulidAdvanced", dict(apply_args(projection="ortho", fidelity=8, noise=NAN), method=None), "noise"),
    ("photomaker.PuLIDPhotoMakerLoader", dict(model=None, photomaker_file="x.bin", lora_strength=NAN),
     "lora_strength"),
    ("photomaker.PuLIDPhotoMakerEncode", dict(clip=None, photomaker=None, image=None, text="a man img",
                                              trigger_word="img", style_strength=NAN), "style_strength"),
]


@pytest.mark.parametrize("path, kwargs, input_name", NUMBER_CASES, ids=[f"{c[0]}-{c[2]}" for c in NUMBER_CASES])
def test_non_finite_numbers_are_refused_at_the_node(nodes, path, kwargs, input_name):
    cls = node_class(nodes, path)
    display = cls.define_schema().display_name
    with pytest.raises(PuLIDError, match=rf"^{display.replace('(', '[(]').replace(')', '[)]')}: {input_name} must be"):
        call(cls, kwargs)


def test_numbers_outside_the_schema_range_are_refused(nodes):
    with pytest.raises(PuLIDError, match="Apply PuLID: start_at must be between 0.0 and 1.0; got 1.5"):
        nodes.pulid.PuLIDApply.execute(**apply_args(start_at=1.5))


@pytest.mark.parametrize("mask, problem", [
    (torch.full((1, 8, 8), NAN), "NaN or infinite"),
    (torch.full((8, 8), 2.0), "from 2 to 2"),
    (-torch.ones(2, 8, 8), "from -1 to -1"),
])
def test_bad_masks_are_refused(nodes, mask, problem):
    with pytest.raises(PuLIDError, match=f"Apply PuLID: attn_mask has .*{problem}"):
        nodes.pulid.PuLIDApply.execute(**apply_args(attn_mask=mask))


# Every node that takes an IMAGE, with its other inputs (checked after the image or never reached).
IMAGE_NODES = [
    ("pulid.PuLIDApply", apply_args()),
    ("pulid.PuLIDApplyAdvanced", advanced_args()),
    ("embeds.PuLIDEncodeFace", dict(pulid=None, eva_clip=None, face_analysis=None, face_selection="largest",
                                    face_index=0, on_no_face="error", combine="average")),
    ("flux.PuLIDFluxApply", dict(model=None, pulid=None, eva_clip=None, face_analysis=None, weight=1.0,
                                 start_at=0.0, end_at=1.0)),
    ("legacy.ApplyPulid", apply_args()),
    ("legacy.ApplyPulidAdvanced", dict(apply_args(projection="ortho", fidelity=8, noise=0.0), method=None)),
    ("photomaker.PuLIDPhotoMakerEncode", dict(clip=None, photomaker=None, text="a man img", trigger_word="img",
                                              style_strength=20.0)),
]


@pytest.mark.parametrize("path, kwargs", IMAGE_NODES, ids=[c[0] for c in IMAGE_NODES])
@pytest.mark.parametrize("image, problem", [
    (torch.rand(64, 48, 3), r"is one image of shape \(64, 48, 3\) without its batch dimension"),
    (torch.rand(1, 3, 64, 48), r"has shape \(1, 3, 64, 48\); an IMAGE is \[batch, height, width, channels\]"),
    (torch.rand(0, 64, 48, 3), "has shape"),
    ("photo.png", "must be an IMAGE; got str"),
], ids=["unbatched", "channels-first", "empty", "a-path"])
def test_images_that_are_not_an_image_batch_are_named(nodes, path, kwargs, image, problem):
    # An unbatched [H, W, C] image (a custom node or script can send one) was taken as H one-row images:
    # "too small (3x48 px)" for each, or a traceback in PhotoMaker.
    cls = node_class(nodes, path)
    display = cls.define_schema().display_name
    with pytest.raises(PuLIDError, match=rf"^{display.replace('(', '[(]').replace(')', '[)]')}: image {problem}"):
        call(cls, dict(kwargs, image=image))


def test_apply_embeds_checks_what_api_clients_send(nodes):
    # Apply PuLID Embeds (and any caller of apply_embeds) gets the same checks from the shared function.
    adapter, embeds = fake_adapter(nodes), fake_embeds(nodes)
    apply = nodes.pulid.apply_embeds
    base = dict(node="Apply PuLID Embeds", weight=0.8, projection="ortho_v2", num_zero=8, start_at=0.0, end_at=1.0)
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: projection is 'bogus'.*ortho_v2, ortho, none"):
        apply(None, adapter, embeds, **(base | {"projection": "bogus"}))
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: weight must be a finite number; got nan"):
        apply(None, adapter, embeds, **(base | {"weight": NAN}))
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: weight must be between -1.0 and 5.0; got 7.0"):
        apply(None, adapter, embeds, **(base | {"weight": 7.0}))
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: end_at must be a finite number"):
        apply(None, adapter, embeds, **(base | {"end_at": NAN}))
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: attn_mask has NaN"):
        apply(None, adapter, embeds, **base, attn_mask=torch.full((1, 4, 4), NAN))
    with pytest.raises(PuLIDError, match="Apply PuLID Embeds: projection is 'bogus'"):
        nodes.embeds.PuLIDApplyEmbeds.execute(None, adapter, embeds, "custom", 0.8, 0.0, 1.0, projection="bogus")


def test_encode_faces_refuses_an_unknown_combine_instead_of_averaging(nodes):
    eva = nodes.loaders.EvaClipModel(None, "eva.pt", torch.float32)
    pipeline = SimpleNamespace(prepare_batch=lambda *a, **k: pytest.fail("the faces were processed"))
    with pytest.raises(PuLIDError, match="Encode Face [(]PuLID[)]: combine is 'sum'.*average, concat"):
        nodes.embeds.PuLIDEncodeFace.execute(fake_adapter(nodes), eva, pipeline, torch.zeros(1, 8, 8, 3),
                                             "largest", 0, "error", "sum")
    with pytest.raises(PuLIDError, match="bench: uncond_noise must be a finite number"):
        nodes.pulid.encode_faces(fake_adapter(nodes), eva, pipeline, torch.zeros(1, 8, 8, 3), node="bench",
                                 noise=NAN)


def test_wrong_inputs_name_the_loader_by_its_current_display_name(nodes):
    loaders = nodes.loaders
    with pytest.raises(PuLIDError, match="must come from 'Load PuLID Model' of this pack"):
        nodes.pulid.check_adapter(object(), "Apply PuLID")
    face_loader = loaders.PuLIDInsightFaceLoader.define_schema().display_name
    with pytest.raises(PuLIDError) as err:
        nodes.pulid.encode_faces(fake_adapter(nodes), loaders.EvaClipModel(None, "e", torch.float32), object(),
                                 torch.zeros(1, 8, 8, 3), node="Apply PuLID")
    assert f"'{face_loader}'" in str(err.value)
    with pytest.raises(PuLIDError) as err:
        nodes.photomaker.face_embeddings(object(), [])
    assert f"'{face_loader}'" in str(err.value)


def test_combo_options_come_from_pulid_core(nodes):
    from pulid_core import options

    def combo(cls, name):
        return list(next(i.options for i in cls.define_schema().inputs if i.id == name))

    advanced = nodes.pulid.PuLIDApplyAdvanced
    assert combo(advanced, "projection") == list(options.PROJECTIONS)
    assert combo(nodes.legacy.ApplyPulidAdvanced, "projection") == list(options.PROJECTIONS)
    assert combo(advanced, "face_selection") == list(options.SELECTIONS)
    assert combo(nodes.embeds.PuLIDEncodeFace, "face_selection") == list(options.SELECTIONS)
    assert combo(advanced, "combine") == list(options.COMBINES)
    assert combo(nodes.loaders.PuLIDInsightFaceLoader, "provider") == list(options.PROVIDERS)
    assert combo(nodes.legacy.PulidInsightFaceLoader, "provider") == list(options.PROVIDERS)
    assert combo(nodes.loaders.PuLIDEvaClipLoader, "precision") == list(options.PRECISIONS)
    assert combo(nodes.pulid.PuLIDApply, "method") == list(options.METHODS)
    assert combo(nodes.legacy.ApplyPulid, "method") == list(options.METHODS)


def test_every_node_named_in_a_schema_or_message_exists(nodes, pack):
    """Descriptions, tooltips and messages name other nodes by their current display names."""
    import asyncio
    import re
    from pathlib import Path

    classes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    names = {cls.define_schema().display_name for cls in classes}
    texts = []
    for cls in classes:
        schema = cls.define_schema()
        texts.append(schema.description or "")
        texts += [getattr(i, "tooltip", None) or "" for i in schema.inputs + (schema.outputs or [])]
    texts += [p.read_text() for p in Path(nodes.pulid.__file__).parent.glob("*.py")]
    quoted = {m for t in texts for m in re.findall(r"'((?:Load|Apply|Encode|Save|PhotoMaker Encode) [^']+)'", t)}
    quoted = {q for q in quoted if "{" not in q}  # f-string templates are filled from the schema
    assert quoted and quoted <= names, sorted(quoted - names)
