"""Shared pytest fixtures.

Tests that need the real data and reference fixtures read them from ``../shared`` (beside the
repository root, or wherever ``MASK3D_ROS_SHARED`` points). In a user's clone it is absent and
those tests skip with the reason; in CI (``CI=true``) a missing ``../shared`` is a failure.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Keep DDS discovery on this machine and give every test process its own domain, so parallel
# test runs (and other ROS users on the machine) never hear each other. Set before rclpy loads.
# Domains 1..101 keep Fast DDS's ports below Linux's ephemeral range (32768+).
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 101))
os.environ.setdefault("ROS_LOG_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "mask3d_ros_test_logs"))


def _shared_root() -> Path:
    return Path(os.environ.get("MASK3D_ROS_SHARED", REPO_ROOT.parent / "shared")).resolve()


def require_shared(*parts: str) -> Path:
    """Return ``../shared/<parts>``; skip (or fail in CI) when it is missing."""
    path = _shared_root().joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent (real data and parity fixtures live in ../shared beside the repo)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI run without shared data: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def mosd_dir() -> Path:
    return require_shared("data", "mosd")


@pytest.fixture(scope="session")
def ouster_bag_dir() -> Path:
    return require_shared("data", "ouster_os1_64", "ouster_os1_rosbag2_mcap")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require_shared("fixtures", "mask3d_parity")
