"""A bare node, as a user first runs it: no parameters file, no arguments, started from an unrelated
working directory. It must come up with the bundled model and the tabletop defaults and answer a
real Kinect frame with instances."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rclpy.qos import QoSProfile
from ros_harness import Inbox, interrupt, stamp, wait_for
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros.cloud import create_cloud
from mask3d_ros.tools.harness import spun_graph

pytestmark = [pytest.mark.ros, pytest.mark.slow]

STARTUP_TIMEOUT = 120.0  # importing torch and loading the model on a shared 2-core machine
ENTRY_POINTS = {
    "mask3d_node": lambda: [shutil.which("mask3d_node", path=str(Path(sys.executable).parent)) or "mask3d_node"],
    "python -m mask3d_ros.node": lambda: [sys.executable, "-m", "mask3d_ros.node"],
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bare_node_answers_a_real_frame_with_the_bundled_model(entry, tmp_path, mosd_dir):
    frame = read_pcd(mosd_dir / "val" / "test43.pcd")  # mixed objects on a table
    msg = create_cloud(Header(frame_id="kinect_rgb_optical_frame", stamp=stamp(7.0)), frame.points.dtype,
                       frame.grid())
    with spun_graph("zero_config_client") as graph:
        clouds, instances = Inbox(), Inbox()
        graph.create_subscription(PointCloud2, "/mask3d/labeled_cloud", clouds, QoSProfile(depth=2))
        graph.create_subscription(InstanceArray, "/mask3d/instances", instances, QoSProfile(depth=2))
        publisher = graph.create_publisher(PointCloud2, "/points", 10)
        process = subprocess.Popen(ENTRY_POINTS[entry](), cwd=tmp_path, env=dict(os.environ),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                wait_for(lambda: publisher.get_subscription_count() > 0 or process.poll() is not None,
                         STARTUP_TIMEOUT, "the node to subscribe")
                assert process.poll() is None, "the node exited"
                wait_for(lambda: graph.count_publishers("/mask3d/instances") > 0, STARTUP_TIMEOUT,
                         "the node's publishers")
                publisher.publish(msg)
                answer = instances.wait(1, STARTUP_TIMEOUT)
                clouds.wait(1, STARTUP_TIMEOUT)
            except AssertionError:
                process.kill()
                raise AssertionError(process.communicate(timeout=10)[0]) from None
        finally:
            if process.poll() is None:
                _, output = interrupt(process, within_s=10.0)
            else:
                output = process.communicate(timeout=10)[0]
    assert "RANDOM WEIGHTS" not in output
    assert "model tabletop (model/mask3d_tabletop.ckpt)" in output, output
    names = {item.class_name for item in answer.instances}
    assert len(answer.instances) >= 3 and names <= {"object", "table"}, names
