"""What scripts/setup_env.sh installs into the venv prefix for ROS tools: the share/mask3d_ros copies
of launch/, config/ and model/ follow the tree (ros2 launch starts the node with the parameters file
it finds there)."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from conftest import in_ci

REPO = Path(__file__).resolve().parents[2]
VENV_SHARE = REPO / ".venv" / "share" / "mask3d_ros"


def load_build_interfaces():
    spec = importlib.util.spec_from_file_location("build_interfaces", REPO / "scripts" / "build_interfaces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def differences(share: Path) -> list[str]:
    """Files of launch/, config/ and model/ that differ between the tree and ``share``, either way."""
    found = []
    for name in ("launch", "config", "model"):
        tree = {p.relative_to(REPO / name): p for p in (REPO / name).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
        copy = {p.relative_to(share / name): p for p in (share / name).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
        found += [f"{name}/{rel}" for rel in sorted(set(tree) ^ set(copy))]
        found += [f"{name}/{rel}" for rel in sorted(set(tree) & set(copy))
                  if tree[rel].read_bytes() != copy[rel].read_bytes()]
    return found


def test_mirror_copies_changed_files_and_removes_stale_ones(tmp_path):
    build_interfaces = load_build_interfaces()
    share = tmp_path / "share" / "mask3d_ros"
    shutil.copytree(REPO / "config", share / "config")
    (share / "config" / "mask3d_tabletop.yaml").write_text("# an older parameters file\n")
    (share / "config" / "removed_since.yaml").write_text("{}\n")
    assert build_interfaces.mirror_shared_files(tmp_path) > 0
    assert differences(share) == []
    assert build_interfaces.mirror_shared_files(tmp_path) == 0, "nothing left to do"


def test_the_venv_prefix_holds_the_trees_launch_config_and_model():
    if not VENV_SHARE.is_dir():
        reason = f"{VENV_SHARE} is not there: run scripts/setup_env.sh"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    assert differences(VENV_SHARE) == [], "scripts/setup_env.sh (build_interfaces.py) did not refresh them"
