"""How the pack's nodes appear in the ComfyUI frontend next to what an artist may have installed
(from an adversarial review, 2026-11-27)."""

import pytest

pytestmark = pytest.mark.comfy

# cubiq/PuLID_ComfyUI (archived), pulid.py: its NODE_DISPLAY_NAME_MAPPINGS and its nodes' CATEGORY ("pulid").
# The pack supports being installed next to it (nodes/__init__.py: cubiq_pack_installed leaves these ids to it).
CUBIQ_CATEGORY = "pulid"
CUBIQ_DISPLAY_NAMES = {
    "PulidModelLoader": "Load PuLID Model",
    "PulidInsightFaceLoader": "Load InsightFace (PuLID)",
    "PulidEvaClipLoader": "Load Eva Clip (PuLID)",
    "ApplyPulid": "Apply PuLID",
    "ApplyPulidAdvanced": "Apply PuLID Advanced",
}


def test_no_node_shares_a_display_name_with_cubiqs_pack_it_installs_beside(pack, monkeypatch):
    """With cubiq's pack installed, the node library's "pulid" folder and the node search must not show two
    entries with the same name whose PULID outputs the other pack's Apply node refuses (both were shown as
    "Load PuLID Model" and "Apply PuLID"). Without it, the names stay as they are."""
    from comfyui_pulid.nodes import loaders, pulid, types

    pack.nodes.node_list()  # registers the pack's model folders (the loaders' schemas list them)
    assert loaders.PuLIDModelLoader.define_schema().display_name == "Load PuLID Model"
    assert pulid.PuLIDApply.define_schema().display_name == "Apply PuLID"
    types._beside_cubiq.cache_clear()
    monkeypatch.setattr(pack.nodes, "cubiq_pack_installed", lambda: True)
    monkeypatch.setattr(pack.nodes, "node_list", lambda: loaders.NODES + pulid.NODES)
    clashes = []
    for cls in pack.nodes.node_list():
        schema = cls.define_schema()
        for cubiq_id, name in CUBIQ_DISPLAY_NAMES.items():
            if schema.node_id != cubiq_id and schema.display_name == name:
                clashes.append(f"{schema.node_id} ({schema.category}) and cubiq's {cubiq_id} ({CUBIQ_CATEGORY}) "
                               f"are both shown as {name!r}")
    types._beside_cubiq.cache_clear()  # (monkeypatch restores cubiq_pack_installed after this test)
    assert not clashes, "; ".join(clashes)


def test_display_names_are_unique_within_the_pack_and_against_comfyui_core(pack):
    from comfyui_pulid.nodes import legacy

    import nodes as comfy_nodes

    ours = {}
    for cls in pack.nodes.node_list() + [n for n in legacy.NODES if n not in pack.nodes.node_list()]:
        schema = cls.define_schema()
        ours.setdefault(schema.display_name, []).append(schema.node_id)
    assert all(len(ids) == 1 for ids in ours.values()), ours
    core = {name: node_id for node_id, name in comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS.items()
            if node_id not in sum(ours.values(), [])}
    assert not set(ours) & set(core), set(ours) & set(core)


def test_every_widget_default_is_in_range_and_on_its_step(pack):
    from comfy_api.latest import io
    from comfyui_pulid.nodes import legacy

    problems = []
    for cls in pack.nodes.node_list() + legacy.NODES:
        schema = cls.define_schema()
        for spec in schema.inputs:
            if isinstance(spec, (io.Float.Input, io.Int.Input)):
                if not spec.min <= spec.default <= spec.max:
                    problems.append(f"{schema.node_id}.{spec.id}")
                step = spec.step or 1
                if abs(round((spec.default - spec.min) / step) * step - (spec.default - spec.min)) > 1e-9:
                    problems.append(f"{schema.node_id}.{spec.id} default off its step")
            if isinstance(spec, io.Combo.Input) and spec.default is not None and spec.options:
                if spec.default not in spec.options:
                    problems.append(f"{schema.node_id}.{spec.id} default not an option")
    assert not problems, problems
