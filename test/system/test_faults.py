"""Injected faults, each with the node's documented reaction.

Covered elsewhere, not repeated here: one failed inference then an answered cloud
(test_node.py::test_a_failed_inference_is_logged_and_the_node_carries_on), a missing checkpoint file
(test_node.py::BAD_PARAMETER_CASES: exit status 1, "not found", the paths looked at), malformed clouds
(test_node.py and test_fuzz_node.py), a cloud newer than every odometry sample
(test_node.py::test_odometry_poses_interpolated_at_the_cloud_stamp).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile
from ros_harness import FakeModel, Harness, Inbox, close_all, cloud_msg, interrupt, stamp, wait_for
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.ros.poses import NS_PER_S, stamp_to_ns
from mask3d_ros.tools.harness import spun_graph

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT = 120.0  # importing torch and building the model on a shared 2-core machine


@pytest.fixture
def harness_factory():
    made = []

    def make(params=None, **kwargs):
        h = Harness({"model.allow_random_weights": True, "model.min_instance_points": 5, **(params or {})}, **kwargs)
        made.append(h)
        return h

    yield make
    close_all(made)


def table_cloud(t_s: float, frame: str = "camera") -> PointCloud2:
    rng = np.random.default_rng(int(t_s * 100))
    xyz = rng.uniform((0, 0, 0.5), (1, 1, 0.8), (2000, 3)).astype(np.float32)
    return cloud_msg(xyz, rng.integers(0, 255, (2000, 3)), frame, t_s)


def node_logs(inbox: Inbox, text: str, name: str = "mask3d") -> list:
    return [m for m in list(inbox.messages) if m.name == name and text in m.msg]


def pipeline_status(array: DiagnosticArray) -> DiagnosticStatus:
    return next(s for s in array.status if s.name.endswith(": pipeline"))


def last_message(inbox: Inbox) -> str:
    """The message of the newest pipeline status ('' before the first)."""
    return pipeline_status(inbox.last).message if len(inbox) else ""


def run_node(*args: str, timeout: float = PROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    """The node process as users start it; the environment (domain, localhost discovery) is inherited."""
    cmd = [sys.executable, "-m", "mask3d_ros.node", "--ros-args", "--params-file",
           str(REPO / "config" / "mask3d_tabletop.yaml"), *args]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)


# --- inference -----------------------------------------------------------------------------


class FailingModel(FakeModel):
    """A model that raises on its next ``failures`` calls (e.g. a device out of memory for a while)."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = failures

    def segment(self, xyz, rgb):
        if self.failures > 0:
            self.failures -= 1
            self.calls += 1
            raise MemoryError("simulated: out of memory in the backbone")
        return super().segment(xyz, rgb)


def test_repeated_inference_failures_are_logged_counted_and_reported_then_recover(harness_factory):
    model = FailingModel(failures=3)
    h = harness_factory({"diagnostics.period": 0.2}, model=model)
    rosout = h.subscribe(Log, "/rosout", QoSProfile(depth=200))
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    for i in range(3):
        h.publish(table_cloud(1.0 + i))
        wait_for(lambda: h.node.worker.stats.failed == i + 1, what=f"failure {i + 1} to be counted")
    assert len(clouds) == 0 and h.node.worker.alive
    stats = h.node.stats()
    assert stats["inference_failures"] == 3 and "MemoryError: simulated" in stats["last_error"]
    errors = wait_for(lambda: node_logs(rosout, "inference failed, the node carries on"), what="the error log")
    assert errors[0].level == Log.ERROR and "MemoryError" in errors[0].msg
    wait_for(lambda: any(pipeline_status(d).level == DiagnosticStatus.ERROR and "inference failed" in
                         pipeline_status(d).message for d in diagnostics.messages), what="an ERROR status")
    h.publish(table_cloud(4.0))
    assert stamp_to_ns(clouds.wait(1).header.stamp) == 4 * NS_PER_S, "the next cloud is answered"
    count = len(diagnostics)
    wait_for(lambda: len(diagnostics) > count + 1 and last_message(diagnostics) == "ok",
             what="the status to return to OK")


# --- model loading ---------------------------------------------------------------------------


def test_checkpoint_with_wrong_shapes_refuses_to_start_listing_the_keys(tmp_path):
    checkpoint = torch.load(REPO / "model" / "mask3d_tabletop.ckpt", map_location="cpu", weights_only=True)
    key = "model.query_projection.layers.2.weight"
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key][:-8].clone()
    broken = tmp_path / "wrong_shapes.ckpt"
    torch.save(checkpoint, broken)
    done = run_node("-p", f"model.checkpoint:={broken}", "-p", "model.device:=cpu")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "wrong shape" in output and "query_projection.layers.2.weight" in output, output
    assert str(broken) in output and "Not starting." in output, output


@pytest.mark.parametrize("device,code,messages", [
    ("cuda:7", 1, ["model.device", "cuda:7", "Not starting."]),
    ("tpu", 2, ["model.device", "must be auto, cpu, cuda or cuda:N", "Not starting."]),
])
def test_unsupported_device_refuses_to_start(device, code, messages):
    done = run_node("-p", f"model.device:={device}")
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    for text in messages:
        assert text in output, output
    if device == "cuda:7":
        assert "CUDA is not available" in output or "CUDA device(s) present" in output, output


# --- poses -----------------------------------------------------------------------------------


def odometry(t_s: float) -> Odometry:
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id, msg.header.stamp = "odom", "base_link", stamp(t_s)
    msg.pose.pose.orientation.w = 1.0
    return msg


def test_poses_that_never_arrive_are_counted_and_warned_then_outputs_resume(harness_factory):
    h = harness_factory({"pose_source": "odometry", "fixed_frame": "odom", "pose_timeout": 0.05})
    rosout = h.subscribe(Log, "/rosout", QoSProfile(depth=200))
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    started = time.monotonic()
    for i in range(6):
        h.publish_cloud_and_wait(table_cloud(10.0 + 0.1 * i), "pose_failures")
    elapsed = time.monotonic() - started
    assert h.node.counters["pose_failures"] == 6 and h.node.map.num_points == 0 and len(clouds) == 0
    warnings = wait_for(lambda: node_logs(rosout, "cloud skipped, no pose"), what="the warning")
    assert warnings[0].level == Log.WARN
    assert len(node_logs(rosout, "cloud skipped, no pose")) <= 1 + elapsed / 5.0, "throttled (one per 5 s)"
    answer = h.call(GetParameters, "/mask3d/get_parameters", GetParameters.Request(names=["pose_source"]))
    assert answer.values[0].string_value == "odometry", "the node answers meanwhile"

    odom = h.publisher(Odometry, "odom", depth=100)
    wait_for(lambda: odom.get_subscription_count() > 0, what="the odometry subscription")
    for k in range(21):
        odom.publish(odometry(11.0 + 0.05 * k))
    wait_for(lambda: len(h.node.odometry) == 21, what="the odometry samples")
    h.publish(table_cloud(11.5))
    assert stamp_to_ns(clouds.wait(1).header.stamp) == int(11.5 * NS_PER_S), "outputs resume"
    assert clouds.last.header.frame_id == "odom" and h.node.counters["pose_failures"] == 6


# --- input --------------------------------------------------------------------------------------


def test_a_publisher_that_stops_and_resumes(harness_factory):
    h = harness_factory({"diagnostics.period": 0.2, "diagnostics.input_timeout": 2.0})
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    for i in range(3):
        h.publish(table_cloud(1.0 + i))
        clouds.wait(i + 1)
    h.client.destroy_publisher(h._publishers.pop(next(iter(h._publishers))))  # the driver goes away
    wait_for(lambda: "no cloud for" in last_message(diagnostics), what="the no-input warning")
    assert pipeline_status(diagnostics.last).level == DiagnosticStatus.WARN
    assert h.node.worker.alive and h.node.map.num_points > 0

    h.publish(table_cloud(4.0))  # a new publisher: the driver restarted
    assert stamp_to_ns(clouds.wait(4).header.stamp) == 4 * NS_PER_S
    count = len(diagnostics)
    wait_for(lambda: len(diagnostics) > count and last_message(diagnostics) == "ok", what="the status to return to OK")
    assert h.node.counters["clouds_received"] == 4 and h.node.counters["malformed_clouds"] == 0


class BuggyPoses:
    """A pose source with a bug on its first lookup: an exception the node does not expect."""

    def __init__(self):
        self.calls = 0

    def lookup(self, frame_id, stamp_ns):
        self.calls += 1
        if self.calls == 1:
            raise KeyError("simulated bug in a pose source")
        return np.eye(4)


def test_an_unforeseen_exception_in_the_cloud_callback_is_counted_and_the_node_carries_on(harness_factory):
    h = harness_factory(pose_source=BuggyPoses())
    rosout = h.subscribe(Log, "/rosout", QoSProfile(depth=200))
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    h.publish(table_cloud(1.0))
    wait_for(lambda: h.node.stats()["cloud_errors"] == 1, what="the error to be counted")
    errors = wait_for(lambda: node_logs(rosout, "internal error"), what="the error log")
    assert errors[0].level == Log.ERROR and "KeyError: 'simulated bug" in errors[0].msg, "with its traceback"
    h.publish(table_cloud(2.0))
    assert stamp_to_ns(clouds.wait(1).header.stamp) == 2 * NS_PER_S, "the executor survived: the next cloud is answered"


# --- Ctrl-C -------------------------------------------------------------------------------------


def large_cloud(t_s: float, points: int = 400_000) -> PointCloud2:
    """Random points 1-1.5 m in front of the camera: seconds of inference on a CPU."""
    rng = np.random.default_rng(1)
    dtype = np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4", "<f4", "<f4", "<u4"]})
    records = np.zeros(points, dtype)
    records["x"], records["y"] = rng.uniform(-1, 1, (2, points))
    records["z"] = rng.uniform(1.0, 1.5, points)
    records["rgb"] = rng.integers(0, 2**24, points)
    return create_cloud(Header(frame_id="camera", stamp=stamp(t_s)), dtype, records)


@pytest.mark.slow
def test_sigint_during_inference_exits_cleanly_within_2_s():
    with spun_graph("sigint_test_client") as graph:
        diagnostics = Inbox()
        graph.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, QoSProfile(depth=50))
        publisher = graph.create_publisher(PointCloud2, "points", 10)
        cmd = [sys.executable, "-m", "mask3d_ros.node", "--ros-args", "--params-file",
               str(REPO / "config" / "mask3d_tabletop.yaml"), "-p", "model.checkpoint:=''",
               "-p", "model.allow_random_weights:=true", "-p", "model.device:=cpu", "-p", "diagnostics.period:=0.1",
               "-p", "accumulation.voxel_size:=0.002"]
        process = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            try:
                wait_for(lambda: publisher.get_subscription_count() > 0 or process.poll() is not None,
                         PROCESS_TIMEOUT, "the node to subscribe")
                assert process.poll() is None, "the node exited early"
                publisher.publish(large_cloud(5.0))

                def busy():
                    values = [{kv.key: kv.value for kv in pipeline_status(d).values} for d in diagnostics.messages[-3:]]
                    return any(v.get("inference_busy") == "True" and v.get("inferences") == "0" for v in values)

                wait_for(busy, PROCESS_TIMEOUT, "the inference to start")
            except AssertionError:
                process.kill()
                raise AssertionError(process.communicate(timeout=10)[0]) from None
            elapsed, output = interrupt(process, 2.0)
            assert process.returncode == 0, output
            assert "Traceback" not in output, output
            print(f"exit {elapsed:.2f} s after SIGINT; abandoned a running inference:"
                  f" {'an inference is still running' in output}")
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
