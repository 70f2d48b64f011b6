"""The README's node tables and workflows table name every node the pack registers, with every input, and
every workflow file (the tables are written by hand: this keeps them from going stale)."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfy

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def node_rows() -> dict[str, str]:
    """node id -> its table row: rows start ``| Display name (`NodeId`) |``."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\| (.+?) \(`(\w+)`\) \|", line)
        if match:
            assert match[2] not in rows, f"README lists {match[2]} twice"
            rows[match[2]] = line
    return rows


def all_nodes(pack):
    from comfyui_pulid.nodes import legacy

    registered = pack.nodes.node_list()
    return registered + [n for n in legacy.NODES if n not in registered]  # legacy ids: only without cubiq's pack


def test_every_node_has_a_row_with_its_display_name_and_inputs(pack):
    rows = node_rows()
    schemas = {cls.define_schema().node_id: cls.define_schema() for cls in all_nodes(pack)}
    names = {node_id: schema.display_name for node_id, schema in schemas.items()}
    problems = []
    for node_id, schema in schemas.items():
        row = rows.get(node_id)
        if row is None:
            problems.append(f"{node_id}: no row")
            continue
        if not row.startswith(f"| {schema.display_name} (`{node_id}`)"):
            problems.append(f"{node_id}: the row does not give the display name {schema.display_name!r}")
        # "Apply PuLID's inputs, ..." stands for every input of that node.
        inherited = {i.id for other, name in names.items() if f"| {name}'s inputs" in row for i in schemas[other].inputs}
        missing = [i.id for i in schema.inputs if f"`{i.id}`" not in row and i.id not in inherited]
        if missing:
            problems.append(f"{node_id}: inputs not in its row: {', '.join(missing)}")
    extra = sorted(set(rows) - set(schemas))
    assert not problems and not extra, "; ".join(problems + [f"{n}: a row for a node the pack lacks" for n in extra])


def test_every_workflow_is_in_the_workflows_table():
    table = README.split("## Example workflows", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([\w.]+\.json)`", table))
    files = {p.name for p in (REPO / "workflows").glob("*.json")}
    assert files == listed, f"missing from README: {sorted(files - listed)}; not in workflows/: {sorted(listed - files)}"
