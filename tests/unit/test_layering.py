"""The layer rule: pulid_core imports nothing from the nodes or ComfyUI; the nodes hold no tensor math.

pulid_core is the framework-free library (scripts and unit tests import it on its own); nodes/
are thin ComfyUI adapters that call it. Checked by reading the source (AST) and by importing
pulid_core in a fresh interpreter where ComfyUI cannot be imported.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "pulid_core"
NODES = REPO / "nodes"
# Top-level names that belong to ComfyUI (or to this pack's ComfyUI layer).
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "node_helpers", "latent_preview"}

# -- what the nodes may do with tensors ---------------------------------------------
# Module-level functions any node may call: building tensors from data, no-grad, casts.
NODE_CALLS = {
    "torch.no_grad", "torch.from_numpy", "torch.tensor",
    # Preview and batch plumbing of per-photo results (images, embeddings), not ID math.
    "np.asarray", "np.ascontiguousarray", "np.stack", "np.concatenate", "np.ones_like",
}
# Tensor methods that are math or reshaping; forbidden in the nodes unless allowed below.
TENSOR_METHODS = {
    "mean", "sum", "prod", "softmax", "log_softmax", "matmul", "bmm", "baddbmm", "mm", "einsum", "norm", "exp",
    "log", "sqrt", "rsqrt", "pow", "clamp", "clip", "abs", "reshape", "view", "repeat", "repeat_interleave",
    "expand", "transpose", "permute", "flip", "cat", "stack", "interpolate", "linear", "scaled_dot_product_attention",
}
# The attention patches turn ComfyUI's batch into rows of the ID K/V and of the mask: they may
# index, concatenate, repeat, expand and reshape rows, and resize the mask to a layer's token grid.
PATCH_ROW_OPS = {"torch.cat", "F.interpolate", "reshape", "expand", "repeat", "repeat_interleave", "cat",
                 "interpolate"}
# The sigma gate flattens the step's sigmas to read its first value (a read, not math).
PER_FILE = {"attn_patch.py": PATCH_ROW_OPS, "flux_patch.py": PATCH_ROW_OPS, "sigma_gate.py": {"reshape"}}


def py_files(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path):
    """(module, level) of every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, node.lineno


def test_pulid_core_imports_nothing_from_comfyui_or_the_nodes():
    bad = []
    for path in py_files(CORE):
        depth = len(path.relative_to(CORE).parts)  # pulid_core/x.py: 1; pulid_core/face/x.py: 2
        for module, level, line in imports(path):
            top = module.split(".")[0]
            if level == 0 and top in COMFY_MODULES:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
            if level >= depth + 1 or (level == depth and top in {"nodes", "tests", "scripts", "benchmarks"}):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {'.' * level}{module} from outside pulid_core")
            if level == 0 and top in {"tests", "scripts", "benchmarks", "pulid_core"}:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module} absolutely (use a relative import)")
    assert not bad, "\n".join(bad)


def test_pulid_core_imports_where_comfyui_cannot_be_imported():
    """Every module of pulid_core, imported as ``somepack.pulid_core`` (as ComfyUI imports the pack) with
    ComfyUI unimportable and no top-level ``pulid_core`` on the path: no ComfyUI module gets loaded and
    no absolute ``pulid_core`` import hides anywhere (lazy exports included)."""
    blocked = sorted(COMFY_MODULES | {"pulid_core"})
    script = f"""
import importlib, pkgutil, sys, types
sys.path[:] = [p for p in sys.path if p not in ("", {str(REPO)!r}, {str(REPO / 'tests')!r})]
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it raises ImportError
pack = types.ModuleType("somepack")
pack.__path__ = [{str(REPO)!r}]
sys.modules["somepack"] = pack
core = importlib.import_module("somepack.pulid_core")
names = [m.name for m in pkgutil.walk_packages(core.__path__, "somepack.pulid_core.")
         if not m.name.endswith("__main__")]
for name in names:
    module = importlib.import_module(name)
    for export in getattr(module, "_EXPORTS", {{}}):
        getattr(module, export)
loaded = sorted(n for n in sys.modules if n.split(".")[0] in {blocked!r} and sys.modules[n] is not None)
assert not loaded, loaded
print(len(names))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO / "scripts",
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 20  # every submodule was imported


def dotted(expr) -> str | None:
    """``torch.nn.functional.pad`` for a plain dotted name, None for a method of a computed value."""
    parts = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    return ".".join([expr.id, *reversed(parts)]) if isinstance(expr, ast.Name) else None


def node_violations(path: Path) -> list[str]:
    allowed = PER_FILE.get(path.name, set())
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found.append(f"{path.name}:{node.lineno} uses @")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pulid_core"):
            found.append(f"{path.name}:{node.lineno} imports {node.module} absolutely (use ..pulid_core)")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = dotted(node.func)
        if name and name.split(".")[0] in {"torch", "F", "np", "numpy"}:
            short = name.replace("torch.nn.functional.", "F.").replace("numpy.", "np.")
            if short not in NODE_CALLS and short not in allowed:
                found.append(f"{path.name}:{node.lineno} calls {name}")
        elif node.func.attr in TENSOR_METHODS and node.func.attr not in allowed:
            found.append(f"{path.name}:{node.lineno} calls .{node.func.attr}()")
    return found


def test_nodes_hold_no_tensor_math():
    found = [v for path in py_files(NODES) for v in node_violations(path)]
    assert not found, "tensor math in nodes/ (move it to pulid_core):\n" + "\n".join(found)


@pytest.mark.parametrize("snippet, what", [
    ("def f(a, b):\n    return torch.cat([a, b[1:, :5]], dim=1)\n", "calls torch.cat"),
    ("def f(x):\n    return x.mean(0, keepdim=True)\n", "calls .mean()"),
    ("def f(q, k):\n    return q @ k\n", "uses @"),
    ("def f(x):\n    return F.softmax(x, -1)\n", "calls F.softmax"),
    ("from pulid_core.identity import encode_identity\n", "imports pulid_core.identity absolutely"),
])
def test_the_node_scan_sees_math(tmp_path, snippet, what):
    path = tmp_path / "pulid.py"
    path.write_text(snippet)
    assert any(what in v for v in node_violations(path))
    patch = tmp_path / "attn_patch.py"
    patch.write_text("def f(a, b):\n    return torch.cat([a, b]).reshape(2, -1)\n")
    assert node_violations(patch) == []


def test_the_pack_entry_point_does_not_touch_sys_path():
    # ComfyUI imports the pack as a package: its modules import each other relatively.
    assert not [m for m, level, _ in imports(REPO / "__init__.py") if level == 0 and m.split(".")[0] == "sys"]
