"""Tier 4: the real ComfyUI frontend in Debian's chromium opens every shipped workflow.

No node may be missing and no widget may hold a value the node does not accept;
the frontend's own graph→prompt conversion must agree with the one the server
tier uses. A screenshot per workflow is kept in tests/artifacts/.
"""

import json
import shutil
from pathlib import Path

import pytest

import comfy_harness

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = comfy_harness.REPO / "tests" / "artifacts"
WORKFLOWS = comfy_harness.workflow_files() + comfy_harness.legacy_workflow_files()

INSPECT = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value,
        values: Array.isArray(w.options && w.options.values) ? w.options.values : null,
        min: w.options && w.options.min, max: w.options && w.options.max}))
}))"""


@pytest.fixture(scope="module")
def page(comfy_server, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed: apt-get install chromium (scripts/setup_env.sh --browser does it)")
    from playwright.sync_api import sync_playwright

    # A first start opens the template browser over the canvas; mark the tour as done.
    comfy_server.post("/settings/Comfy.TutorialCompleted", True)
    with sync_playwright() as pw:
        # A fresh profile each run (Playwright passes it as --user-data-dir).
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.goto(comfy_server.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        yield page
        context.close()


def _problems(nodes: list[dict]) -> list[str]:
    problems = []
    for node in nodes:
        if not node["registered"]:
            problems.append(f"node {node['id']}: missing node type {node['type']}")
            continue
        for w in node["widgets"]:
            value = w["value"]
            if w["values"] is not None and value not in w["values"]:
                problems.append(f"node {node['id']} {node['type']}.{w['name']}: {value!r} not in {w['values'][:8]}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if w["min"] is not None and value < w["min"] or w["max"] is not None and value > w["max"]:
                    problems.append(f"node {node['id']} {node['type']}.{w['name']}: {value} outside [{w['min']}, {w['max']}]")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_in_the_frontend(page, comfy_server, path: Path):
    workflow = json.loads(path.read_text())
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                  [workflow, path.stem])
    page.wait_for_timeout(500)
    nodes = page.evaluate(INSPECT)
    assert len(nodes) == len(workflow["nodes"])
    assert _problems(nodes) == []

    # The frontend's own conversion agrees with the converter the server tier uses.
    frontend = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = comfy_harness.to_api(workflow, comfy_server.info)
    assert {k: v["class_type"] for k, v in frontend.items()} == {k: v["class_type"] for k, v in ours.items()}
    for node_id, node in ours.items():
        assert frontend[node_id]["inputs"] == node["inputs"], f"node {node_id} {node['class_type']}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_{path.stem}.png"))
