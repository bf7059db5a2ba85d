"""The package layout is the architecture: the core imports no ROS, layers import only downward,
and there are no import cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mask3d_ros"
CORE = ("model", "data", "training", "evaluation")
LAYERS = ("model", "data", "training", "evaluation", "ros", "tools")
"""Each subpackage may import from the ones before it, never from the ones after it."""
ALLOWED = {
    "model": {"model"},
    "data": {"model", "data"},
    "training": {"model", "data", "training"},
    "evaluation": {"model", "data", "evaluation"},
    "ros": {"model", "data", "ros"},
    "tools": set(LAYERS),
}
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "visualization_msgs",
               "diagnostic_msgs", "vision_msgs", "tf2_ros", "builtin_interfaces", "rosidl_runtime_py",
               "mask3d_ros.msg")

BLOCKER = """
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked: the core must not import ROS")
sys.meta_path.insert(0, Block())
import mask3d_ros.{sub} as sub
for info in pkgutil.walk_packages(sub.__path__, sub.__name__ + "."):
    importlib.import_module(info.name)
print("ok")
"""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def first_party_imports(path: Path) -> set[str]:
    """mask3d_ros modules imported anywhere in ``path`` (top level or not)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mask3d_ros"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mask3d_ros"))
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules}


def sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("sub", CORE)
def test_core_subpackages_import_without_ros(sub):
    """Every module of the core imports with rclpy and every message package made unimportable."""
    script = BLOCKER.format(blocked=ROS_MODULES, sub=sub)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_imports_go_only_downward():
    wrong = []
    for path in sources():
        layer = module_name(path).split(".")[1]
        for target in first_party_imports(path):
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and parts[1] not in ALLOWED[layer]:
                wrong.append(f"{module_name(path)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module_name(p): first_party_imports(p) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt.startswith(node + "."):  # itself, or a package's own submodule
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
