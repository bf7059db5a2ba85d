"""pose_source tf (mask3d_ros/ros/poses.py TfPoses) through the node, with the real tf2_ros of the ROS 2
test overlay: the node's own Buffer and TransformListener, fed by a real StaticTransformBroadcaster
(base_link -> camera_optical) and TransformBroadcaster (a moving odom -> base_link). Points land
within 8e-6 m of the exact transform, at a sample stamp and between samples (tf2 interpolates: the
motion is chosen so that its lerp and slerp are exact); a stamp past the newest transform and an
unknown frame are skipped with a warning that names the frames and tf2's reason."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_overlay
from geometry_msgs.msg import TransformStamped
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile
from ros_harness import Harness, close_all, cloud_msg, stamp, wait_for
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2

from mask3d_ros.ros.cloud import read_points
from mask3d_ros.ros.poses import matrix_from_pose

require_overlay(module_level=True)
import tf2_ros  # noqa: E402 - after the overlay check, which may skip

pytestmark = pytest.mark.ros

PARAMS = {"model.allow_random_weights": True, "model.min_instance_points": 5, "pose_source": "tf",
          "fixed_frame": "odom", "accumulation.max_frames": 1, "accumulation.voxel_size": 0.001,
          "pose_timeout": 0.3, "trigger.min_points": 1}
MOUNT = ((0.2, -0.05, 0.4), Rotation.from_euler("xyz", [-90, 0, -90], degrees=True).as_quat())  # optical frame


def body_pose(t: float) -> np.ndarray:
    """odom -> base_link: 0.4 m/s along x, 0.1 m/s along y, constant yaw rate 15 deg/s about z (exact
    under tf2's linear interpolation of the translation and slerp of the rotation)."""
    return matrix_from_pose((1.0 + 0.4 * t, -2.0 + 0.1 * t, 0.0),
                            Rotation.from_euler("z", 30 + 15 * t, degrees=True).as_quat())


def transform_msg(parent: str, child: str, matrix: np.ndarray, t_s: float) -> TransformStamped:
    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id, msg.header.stamp = parent, child, stamp(t_s)
    x, y, z = matrix[:3, 3]
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = float(x), float(y), float(z)
    q = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in q)
    return msg


@pytest.fixture
def harness():
    made = []

    def make():
        h = Harness(dict(PARAMS))
        made.append(h)
        return h

    yield make
    close_all(made)


def grid_points(n: int = 400, seed: int = 0) -> np.ndarray:
    """Points in front of the camera, at least 2 cm apart (no two share a map voxel)."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(20 * 20, size=n, replace=False)
    u, v = cells % 20, cells // 20
    return np.stack([(u - 10) * 0.05, (v - 10) * 0.05, 1.0 + 0.02 * (u % 3)], 1).astype(np.float32)


def broadcast(h: Harness, t0: float = 10.0, samples: int = 11, step: float = 0.1):
    static = tf2_ros.StaticTransformBroadcaster(h.client)
    static.sendTransform(transform_msg("base_link", "camera_optical", matrix_from_pose(*MOUNT), 0.0))
    moving = tf2_ros.TransformBroadcaster(h.client)
    for k in range(samples):
        t = t0 + k * step
        moving.sendTransform(transform_msg("odom", "base_link", body_pose(t - t0), t))
    buffer = h.node._tf_buffer  # the node's own tf2_ros.Buffer, as its TransformListener fills it
    assert isinstance(buffer, tf2_ros.Buffer)
    newest = stamp(t0 + (samples - 1) * step)
    wait_for(lambda: buffer.can_transform("odom", "camera_optical", newest), what="the transforms in the node's buffer")
    return static, moving


def rosout(h: Harness):
    inbox = []
    h.client.create_subscription(Log, "/rosout", inbox.append, QoSProfile(depth=100))
    return inbox


def warnings_of(inbox, node_name: str = "mask3d") -> list[str]:
    return [m.msg for m in list(inbox) if m.name.endswith(node_name) and m.level >= Log.WARN]


@pytest.mark.parametrize("t_offset", [0.3, 0.45], ids=["at_a_sample", "between_samples"])
def test_points_transformed_through_real_tf2_buffers(harness, t_offset):
    h = harness()
    keep = broadcast(h)  # noqa: F841 - the broadcasters live until the end of the test
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    xyz = grid_points()
    h.publish(cloud_msg(xyz, np.full((len(xyz), 3), 200, np.uint8), "camera_optical", 10.0 + t_offset))
    cloud = clouds.wait(1)
    assert cloud.header.frame_id == "odom"
    points = read_points(cloud)
    got = np.stack([points["x"], points["y"], points["z"]], 1).astype(np.float64)
    exact = body_pose(t_offset) @ matrix_from_pose(*MOUNT)
    expected = xyz.astype(np.float64) @ exact[:3, :3].T + exact[:3, 3]
    assert len(got) == len(expected), "every point is in the map once"
    distance, _ = cKDTree(expected).query(got)
    assert distance.max() < 8e-6, f"max error {distance.max():.2e} m"
    assert h.node.counters["pose_failures"] == 0


def test_extrapolation_into_the_future_warns_clearly(harness):
    h = harness()
    log = rosout(h)
    keep = broadcast(h)  # noqa: F841 - the broadcasters live until the end of the test
    h.publish_cloud_and_wait(cloud_msg(grid_points(50), None, "camera_optical", 25.0), "pose_failures")
    wait_for(lambda: any("no pose" in m for m in warnings_of(log)), what="the warning on /rosout")
    [text] = [m for m in warnings_of(log) if "no pose" in m]
    assert "'camera_optical' -> 'odom'" in text and "25.000 s" in text, text
    assert "ExtrapolationException" in text and "extrapolation into the future" in text, text
    assert h.node.stats()["tf_failures"] == 1


def test_unknown_frame_warns_clearly(harness):
    h = harness()
    log = rosout(h)
    keep = broadcast(h)  # noqa: F841 - the broadcasters live until the end of the test
    h.publish_cloud_and_wait(cloud_msg(grid_points(50), None, "lidar_top", 10.5), "pose_failures")
    wait_for(lambda: any("no pose" in m for m in warnings_of(log)), what="the warning on /rosout")
    [text] = [m for m in warnings_of(log) if "no pose" in m]
    assert "'lidar_top' -> 'odom'" in text and "LookupException" in text and "lidar_top" in text, text
    assert h.node.map.num_points == 0 and h.node.stats()["tf_failures"] == 1
