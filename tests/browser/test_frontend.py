"""Tier 4: the real ComfyUI frontend in Debian's chromium opens every shipped workflow.

No node may be missing and no widget may hold a value the node does not accept;
the frontend's own graph→prompt conversion must agree with the one the server
tier uses. With the model files absent, the frontend must offer the files each
workflow declares in its nodes' ``properties.models``. A screenshot per workflow
is kept in tests/artifacts/. Runs with the frontend ComfyUI ships, or the one
named by PULID_FRONTEND_ROOT (scripts/test.sh --frontend VERSION).
"""

import json
import os
import shutil
from pathlib import Path

import pytest

import comfy_harness

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = comfy_harness.REPO / "tests" / "artifacts"
SHIPPED = comfy_harness.workflow_files()
WORKFLOWS = SHIPPED + comfy_harness.legacy_workflow_files()

INSPECT = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
    widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value,
        values: Array.isArray(w.options && w.options.values) ? w.options.values : null,
        min: w.options && w.options.min, max: w.options && w.options.max}))
}))"""

# Node types still unknown to the frontend: it fetches /object_info and registers
# the types after app.graph exists, so a graph loaded earlier shows every node as missing.
UNREGISTERED = """(types) => (window.app && window.app.graph && window.LiteGraph
    && window.LiteGraph.registered_node_types) ? types.filter(t => !window.LiteGraph.registered_node_types[t]) : types"""

# What the frontend recorded as missing models, as {name, url, directory}: up to
# frontend 1.5x the missing-models dialog's props, later the missing-model store
# that feeds the Issues panel.
MISSING_MODELS = """() => {
    const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
    const pick = m => ({name: m.name, url: m.url || null, directory: m.directory || null});
    const store = pinia._s.get('missingModel');
    if (store) return (store.missingModelCandidates || []).map(pick);
    const dialogs = pinia._s.get('dialog');
    if (!dialogs) return null;
    const shown = dialogs.dialogStack.find(d => d.key === 'global-missing-models-warning');
    return shown ? shown.contentProps.missingModels.map(pick) : [];
}"""


def _node_types(paths) -> list[str]:
    return sorted({node["type"] for path in paths for node in comfy_harness.load_workflow(path)["nodes"]})


def _open_frontend(pw, url: str, profile: Path, node_types: list[str], before_goto=None):
    """Chromium on the frontend, once it has registered every node type of ``node_types``."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed: apt-get install --no-install-recommends chromium "
                    "(scripts/setup_env.sh --browser does it as root)")
    # A fresh profile each run (Playwright passes it as --user-data-dir).
    context = pw.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    if before_goto:
        before_goto(page)
    page.goto(url)
    try:
        page.wait_for_function(f"({UNREGISTERED})({json.dumps(node_types)}).length === 0", timeout=180_000)
    except Exception as e:  # playwright's TimeoutError
        missing = page.evaluate(UNREGISTERED, node_types)
        context.close()
        pytest.fail(f"the frontend did not register these node types within 180 s: {missing} ({e})")
    wanted = os.environ.get("PULID_FRONTEND_VERSION")
    if wanted:
        assert page.evaluate("window.__COMFYUI_FRONTEND_VERSION__") == wanted
    return context, page


@pytest.fixture(scope="module")
def pw():
    """One Playwright for the module: its sync API cannot be started twice in a thread."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def page(comfy_server, pw, tmp_path_factory):
    # A first start opens the template browser over the canvas; mark the tour as done.
    comfy_server.post("/settings/Comfy.TutorialCompleted", True)
    # The photos the Load Image nodes name (the server tier puts them there too, if it ran first).
    for path in WORKFLOWS:
        prompt = comfy_harness.to_api(comfy_harness.load_workflow(path), comfy_server.info)
        comfy_harness.provide_input_images(prompt, comfy_server.input_dir, None)
    context, page = _open_frontend(pw, comfy_server.url, tmp_path_factory.mktemp("chromium"), _node_types(WORKFLOWS))
    yield page
    context.close()


# A frontend extension whose beforeRegisterNodeDef hook is slow (a loaded machine, or
# another pack's extension doing I/O): the frontend does not await the registrations, so
# app.graph exists while this pack's node types are still unregistered.
SLOW_EXTENSION = """import { app } from "../../scripts/app.js";
app.registerExtension({name: "pulid.test.slowRegistration", async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name.startsWith("PuLID")) await new Promise(resolve => setTimeout(resolve, 4000));
}});
"""


def _with_slow_extension(page):
    def extensions(route):
        listing = route.fetch().json()
        route.fulfill(json=listing + ["/extensions/pulid_test_slow/slow_registration.js"])

    page.route("**/extensions", extensions)
    page.route("**/extensions/pulid_test_slow/slow_registration.js",
               lambda route: route.fulfill(body=SLOW_EXTENSION, content_type="text/javascript"))


def test_workflows_wait_until_the_frontend_knows_the_node_types(comfy_server, pw, tmp_path):
    context, page = _open_frontend(pw, comfy_server.url, tmp_path / "chromium", _node_types(WORKFLOWS),
                                   before_goto=_with_slow_extension)
    try:
        assert page.evaluate("() => window.app.extensions.some(e => e.name === 'pulid.test.slowRegistration')")
        _load(page, SHIPPED[0])
        assert [n["type"] for n in page.evaluate(INSPECT) if not n["registered"]] == []
    finally:
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


def _load(page, path: Path) -> dict:
    workflow = json.loads(path.read_text())
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                  [workflow, path.stem])
    return workflow


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_opens_in_the_frontend(page, comfy_server, path: Path):
    workflow = _load(page, path)
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


# -- missing model files --------------------------------------------------------
def _declared_models(workflow: dict) -> list[dict]:
    return [m for node in workflow["nodes"] for m in node.get("properties", {}).get("models", [])]


@pytest.fixture(scope="module")
def bare_page(pw, tmp_path_factory):
    """The frontend of a server with this pack but no model files at all."""
    server = comfy_harness.ComfyServer(models_dirs=[], with_testpack=False)
    try:
        server.wait_ready()
        server.post("/settings/Comfy.TutorialCompleted", True)
        context, page = _open_frontend(pw, server.url, tmp_path_factory.mktemp("chromium_bare"), _node_types(SHIPPED))
        yield page
        context.close()
    finally:
        server.cleanup()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_frontend_offers_the_declared_model_files_when_absent(bare_page, path: Path):
    workflow = _load(bare_page, path)
    declared = _declared_models(workflow)
    if not declared:
        pytest.skip(f"{path.name} loads no model file")
    listed = None
    for _ in range(40):  # newer frontends check the files in the background
        bare_page.wait_for_timeout(250)
        listed = bare_page.evaluate(MISSING_MODELS)
        assert listed is not None, "this frontend has neither a missing-models dialog nor a missing-model store"
        if all(m in listed for m in declared):
            break
    missing = [m for m in declared if m not in listed]
    assert not missing, f"declared but not offered by the frontend: {missing}; it listed {listed}"

    # And on screen: the dialog (older frontends) or the Issues panel behind "View details".
    details = bare_page.get_by_text("View details")
    if details.count():
        details.first.click()
        bare_page.wait_for_timeout(500)
    text = bare_page.evaluate("() => document.body.innerText")
    for model in declared:
        assert model["name"] in text and model["directory"] in text, model
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    bare_page.screenshot(path=str(ARTIFACTS / f"browser_missing_models_{path.stem}.png"))
    # Close the dialog before the next workflow (the Issues panel follows the loaded graph).
    bare_page.evaluate("""() => { const d = document.querySelector('#vue-app').__vue_app__.config.globalProperties
        .$pinia._s.get('dialog'); if (d) d.closeDialog({key: 'global-missing-models-warning'}); }""")
