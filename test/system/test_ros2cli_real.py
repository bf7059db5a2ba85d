"""`ros2 param describe`, `get` and `set` (ros2cli of the ROS 2 test overlay) against a running
mask3d_node process: descriptions and ranges as declared, run-time changes accepted, out-of-range
values and start-up-only parameters refused with the reason."""
from __future__ import annotations

import subprocess
import time

import pytest
from conftest import require_overlay
from real_ros import STARTUP_TIMEOUT, VENV_BIN, Process, processes_with, ros_environment, unique_name

require_overlay(module_level=True)

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A mask3d_node process (random weights, CPU) with a unique name; (name, environment)."""
    name = unique_name()
    env = ros_environment(tmp_path_factory.mktemp("no_prefix"))
    process = Process([str(VENV_BIN / "mask3d_node"), "--ros-args", "-r", f"__node:={name}",
                       "-p", "model.allow_random_weights:=true", "-p", "model.checkpoint:=''",
                       "-p", "model.device:=cpu"], env)
    try:
        process.wait_output("listening on", STARTUP_TIMEOUT)
        yield name, env
        code, _ = process.interrupt(timeout=15)
        assert code == 0, process.output
    finally:
        process.kill()
    assert not processes_with(name)


def ros2(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`ros2 *args` without a daemon (none is left behind), retried while discovery has not found the
    node yet (it can take seconds on a loaded machine)."""
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(["ros2", *args, "--no-daemon", "--spin-time", "2"], env=env, capture_output=True,
                              text=True, timeout=60, cwd="/tmp")
        if "Node not found" not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done


def test_param_describe_shows_the_declared_description_and_range(node):
    name, env = node
    done = ros2(env, "param", "describe", f"/{name}", "model.score_threshold", "markers.style")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Parameter name: model.score_threshold" in out and "Type: double" in out, out
    assert "Minimum instance score reported." in out, out
    assert "Additional constraints: >= 0 and <= 1" in out, out
    assert "Min value: 0.0" in out and "Max value: 1.0" in out, "a range for rqt_reconfigure's slider"
    assert "Parameter name: markers.style" in out and "Type: string" in out, out
    assert "cube" in out and "line_list" in out, out


def test_param_set_at_run_time_and_refusals(node):
    name, env = node
    done = ros2(env, "param", "set", f"/{name}", "model.score_threshold", "0.75")
    assert done.returncode == 0 and "Set parameter successful" in done.stdout, done.stdout + done.stderr
    done = ros2(env, "param", "get", f"/{name}", "model.score_threshold")
    assert "0.75" in done.stdout, done.stdout + done.stderr
    done = ros2(env, "param", "set", f"/{name}", "model.score_threshold", "1.5")
    assert "Setting parameter failed: Parameter model.score_threshold out of range" in done.stderr, done.stderr
    done = ros2(env, "param", "get", f"/{name}", "model.score_threshold")
    assert "0.75" in done.stdout, "a refused value leaves the old one"
    done = ros2(env, "param", "set", f"/{name}", "markers.style", "line_list")
    assert "Set parameter successful" in done.stdout, done.stdout + done.stderr
    done = ros2(env, "param", "set", f"/{name}", "model.device", "cuda")
    assert "Setting parameter failed: Trying to set a read-only parameter: model.device" in done.stderr, done.stderr
