"""The node as its own process, as users run it: `python -m mask3d_ros.node --ros-args --params-file
config/mask3d_tabletop.yaml ...`, the real model (random weights until the bundled model exists),
a 640 x 480 depth cloud published reliably from this process with default QoS, outputs received,
then Ctrl-C (SIGINT) ends it within 2 s."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from ros_harness import Inbox, interrupt, stamp, wait_for
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from test_node import check_outputs

from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.ros.poses import NS_PER_S
from mask3d_ros.tools.harness import spun_graph

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 90.0  # importing torch and building the model on a shared 2-core machine


@pytest.fixture
def graph():
    with spun_graph("process_test_client") as node:
        yield node


def start_node(*extra):
    cmd = [sys.executable, "-m", "mask3d_ros.node", "--ros-args",
           "--params-file", str(REPO / "config" / "mask3d_tabletop.yaml"),
           "-p", "model.checkpoint:=''", "-p", "model.allow_random_weights:=true",
           "-p", "model.score_threshold:=0.0", "-p", "model.min_instance_points:=1", *extra]
    # the environment (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_LOG_DIR set by conftest) is inherited
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_process_segments_a_reliable_depth_cloud_and_stops_on_sigint(graph, mosd_dir):
    table = read_pcd(mosd_dir / "val" / "test1.pcd")
    assert (table.width, table.height) == (640, 480)
    msg = create_cloud(Header(frame_id="kinect_rgb_optical_frame", stamp=stamp(42.5)), table.points.dtype,
                       table.grid())
    clouds, instances, diagnostics = Inbox(), Inbox(), Inbox()
    graph.create_subscription(PointCloud2, "/mask3d/labeled_cloud", clouds, QoSProfile(depth=5))
    graph.create_subscription(InstanceArray, "/mask3d/instances", instances, QoSProfile(depth=5))
    graph.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, QoSProfile(depth=5))
    publisher = graph.create_publisher(PointCloud2, "points", 10)  # default QoS: reliable, volatile
    process = start_node()
    try:
        try:
            wait_for(lambda: publisher.get_subscription_count() > 0 or process.poll() is not None,
                     STARTUP_TIMEOUT, "the node to subscribe")
            assert process.poll() is None, "the node exited early"
            wait_for(lambda: graph.count_publishers("/mask3d/labeled_cloud") > 0, STARTUP_TIMEOUT,
                     "the node's publishers")
            publisher.publish(msg)
            cloud = clouds.wait(1, STARTUP_TIMEOUT)
            inst = instances.wait(1, STARTUP_TIMEOUT)
        except AssertionError:
            process.kill()
            raise AssertionError(process.communicate(timeout=10)[0]) from None
        points = check_outputs(cloud, inst, int(42.5 * NS_PER_S), "kinect_rgb_optical_frame")
        assert len(points) > 1000
        assert np.isfinite(points["x"]).all(), "NaNs of the organized input never reach the output"
        status = diagnostics.wait(1, 30).status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert values["device"] == "cpu" and int(values["inferences"]) + int(values["inference_busy"] == "True") >= 0

        # Ctrl-C while the next inference is (probably) running: exit within 2 s
        msg.header.stamp = stamp(43.0)
        publisher.publish(msg)
        wait_for(lambda: any(int({kv.key: kv.value for kv in d.status[0].values}["clouds_received"]) >= 2
                             for d in diagnostics.messages), 30, "the second cloud")
        elapsed, output = interrupt(process, 2.0)
        assert process.returncode == 0, output
        assert "RANDOM WEIGHTS" in output, "random weights are loudly warned"
        print(f"exit {elapsed:.2f} s after SIGINT")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
