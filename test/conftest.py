"""Shared pytest fixtures.

Tests that need the real data and reference fixtures read them from ``../shared`` (beside the
repository root, or wherever ``MASK3D_ROS_SHARED`` points). In a user's clone it is absent and
those tests skip with the reason; in CI (``CI=true``) a missing ``../shared`` is a failure.
"""
import os
import shutil
import signal
import sys
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


# --- the ROS 2 test overlay -----------------------------------------------------------------------
# scripts/build_ros_overlay.sh builds launch, launch_ros, the ros2 CLI, tf2_ros, vision_msgs and
# sensor_msgs_py from ../shared/ros2-src into .ros-overlay/; scripts/overlay_env.sh activates it.
# When it is built but this pytest was started without it (plain `.venv/bin/python -m pytest`),
# pytest is restarted once with it active (as the venv's ros_wheels_bootstrapper does for
# LD_LIBRARY_PATH: compiled libraries are found only through the environment of a new process).
# MASK3D_ROS_OVERLAY=0 runs without it (the real-package tests then skip, or fail in CI).
OVERLAY = REPO_ROOT / ".ros-overlay"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def overlay_environment(base: dict | None = None) -> dict:
    """``base`` (default: os.environ) with the overlay active, as scripts/overlay_env.sh sets it."""
    env = dict(os.environ if base is None else base)

    def prepend(name: str, *paths: Path) -> None:
        parts = [p for p in env.get(name, "").split(os.pathsep) if p]
        env[name] = os.pathsep.join([str(p) for p in paths if str(p) not in parts] + parts)

    venv = REPO_ROOT / ".venv"
    prepend("AMENT_PREFIX_PATH", OVERLAY / "install", venv)
    prepend("CMAKE_PREFIX_PATH", OVERLAY / "install")
    prepend("LD_LIBRARY_PATH", OVERLAY / "install" / "lib")
    prepend("PYTHONPATH", OVERLAY / "python", OVERLAY / "install" / "lib" / "python3.11" / "site-packages")
    prepend("PATH", venv / "bin", OVERLAY / "python" / "bin", OVERLAY / "install" / "bin")
    env["MASK3D_ROS_OVERLAY"] = str(OVERLAY)
    return env


def pytest_configure(config):
    """Let the processes the tests start take Ctrl-C; restart pytest once with the overlay active
    when it is built but not active here."""
    # A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT
    # ignored, and every process it starts inherits that: ros2 launch, or a plain Python child, then
    # never sees the SIGINT a test sends it (rclpy nodes install their own handler and still stop).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if "MASK3D_ROS_OVERLAY" in os.environ or not (OVERLAY / "stamp").is_file():
        return
    if "rclpy" in sys.modules or not getattr(sys, "orig_argv", None) or hasattr(config, "workerinput"):
        return  # too late, no command line to repeat, or an xdist worker: require_overlay() says what to do
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()  # give the new process the real stdout and stderr
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, overlay_environment())


def require_overlay(module_level: bool = False) -> Path:
    """The ROS 2 test overlay, active in this process; skip with the reason (fail in CI) otherwise.
    ``module_level``: called at the top of a test module, before it imports the overlay's packages."""
    active = os.environ.get("MASK3D_ROS_OVERLAY", "")
    if active and active != "0":
        try:
            import launch_ros  # noqa: F401, PLC0415 - the overlay's packages, importable only when it is active
            import sensor_msgs_py  # noqa: F401, PLC0415 - as above
            import tf2_ros  # noqa: F401, PLC0415 - as above
            import vision_msgs.msg  # noqa: F401, PLC0415 - as above
        except ImportError as error:
            pytest.fail(f"the ROS 2 overlay {active} is active but does not import ({error});"
                        " rebuild it: scripts/build_ros_overlay.sh --force")
        if shutil.which("ros2") is None:
            pytest.fail(f"the ROS 2 overlay {active} is active but has no ros2 executable on PATH")
        return Path(active)
    shared = _shared_root() / "ros2-src"
    if active == "0":
        reason = "MASK3D_ROS_OVERLAY=0: running without the ROS 2 test overlay"
    elif not shared.exists():
        reason = (f"{shared} is absent, so there is no ROS 2 test overlay (launch, tf2_ros, vision_msgs, ros2 CLI;"
                  " scripts/build_ros_overlay.sh builds it from there)")
    elif not (OVERLAY / "stamp").is_file():
        reason = "the ROS 2 test overlay is not built: run scripts/build_ros_overlay.sh (or scripts/run_tests.sh)"
    else:
        reason = "the ROS 2 test overlay is built but not active: source scripts/overlay_env.sh"
    if in_ci():
        pytest.fail(f"CI run without the ROS 2 test overlay: {reason}")
    pytest.skip(reason, allow_module_level=module_level)


@pytest.fixture(scope="session")
def ros_overlay() -> Path:
    return require_overlay()
