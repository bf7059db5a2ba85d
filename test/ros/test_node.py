"""The node in real rclpy graphs (in-process; a fake model unless stated): inputs, every output,
accumulation with injected and odometry poses, latest-wins, bad input, services, parameters."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from ros_harness import FakeModel, Harness, close_all, cloud_msg, stamp, wait_for
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker, MarkerArray

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.model.results import NO_CLASS
from mask3d_ros.msg import InstanceArray
from mask3d_ros.ros import params
from mask3d_ros.ros.cloud import create_cloud, read_points
from mask3d_ros.ros.poses import NS_PER_S, IdentityPoses, StaticPoses, matrix_from_pose, stamp_to_ns

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
BASE = {"model.allow_random_weights": True, "model.min_instance_points": 5}
LABELED_FIELDS = {"x": 7, "y": 7, "z": 7, "rgb": 7, "label": 6, "instance_id": 6, "score": 7}


@pytest.fixture
def harness_factory():
    made = []

    def make(params_=None, base=True, **kwargs):
        h = Harness({**(BASE if base else {}), **(params_ or {})}, **kwargs)
        made.append(h)
        return h

    yield make
    close_all(made)


# --- checks shared by the tests ------------------------------------------------------------


def check_outputs(cloud: PointCloud2, instances: InstanceArray, stamp_ns: int, frame: str, class_names=None):
    """Fields, stamps, frames and index consistency between the labeled cloud and the instances."""
    assert {f.name: f.datatype for f in cloud.fields} == LABELED_FIELDS
    assert stamp_to_ns(cloud.header.stamp) == stamp_ns and cloud.header.frame_id == frame
    assert instances.header == cloud.header
    points = read_points(cloud)
    assert len(points) == cloud.width * cloud.height
    ids = points["instance_id"]
    listed = 0
    for inst in instances.instances:
        rows = np.asarray(inst.point_indices)
        assert inst.id != 0 and len(rows) == inst.point_count > 0
        assert np.all(ids[rows] == inst.id), "indices point at the instance's points"
        assert np.all(points["label"][rows] == inst.class_id)
        assert np.allclose(points["score"][rows], inst.score)
        if class_names:
            assert inst.class_name == class_names[inst.class_id]
        xyz = np.stack([points["x"][rows], points["y"][rows], points["z"][rows]], 1)
        centre = (xyz.min(0) + xyz.max(0)) / 2
        assert np.allclose([inst.center.position.x, inst.center.position.y, inst.center.position.z], centre, atol=1e-4)
        listed += len(rows)
    assert listed == np.count_nonzero(ids), "every labelled point belongs to a listed instance"
    assert np.all(points["label"][ids == 0] == NO_CLASS)
    scores = [i.score for i in instances.instances]
    assert scores == sorted(scores, reverse=True)
    return points


def xyz_of(points):
    return np.stack([points["x"], points["y"], points["z"]], 1)


# --- synthetic scene and camera motion ----------------------------------------------------------


def world_scene():
    """A 1 x 1 m table top at z = 0.7 with two 10 cm boxes on it (surface points), fixed frame."""
    g = np.arange(0.0, 1.0, 0.01) + 0.003
    u, v = np.meshgrid(g, g)
    table = np.stack([u.ravel(), v.ravel(), np.full(u.size, 0.7)], 1)
    boxes = []
    for cx, cy in ((0.3, 0.3), (0.7, 0.6)):
        s = np.arange(-0.05, 0.05, 0.01) + 0.003
        a, b = np.meshgrid(s, s)
        a, b = a.ravel(), b.ravel()
        top = np.stack([cx + a, cy + b, np.full(a.size, 0.8)], 1)
        side = np.stack([cx + a, np.full(a.size, cy - 0.05), 0.75 + b / 1.0], 1)
        boxes += [top, side]
    xyz = np.concatenate([table] + boxes).astype(np.float32)
    rgb = np.zeros((len(xyz), 3), np.uint8)
    rgb[: len(table)] = (150, 110, 60)
    rgb[len(table):] = (30, 90, 200)
    return xyz, rgb


def camera_pose(t):
    """A camera 0.6 m above the table moving along x and turning, looking down (optical frame)."""
    look_down = Rotation.from_euler("x", 180, degrees=True)  # optical z points down
    turn = Rotation.from_euler("z", 20 * t, degrees=True)
    return matrix_from_pose((0.2 + 0.3 * t, 0.5, 1.3), (turn * look_down).as_quat())


def view(world_xyz, world_rgb, pose, radius=0.45):
    """The scene points within ``radius`` (xy) of the camera, in the camera frame."""
    near = np.linalg.norm(world_xyz[:, :2] - pose[:2, 3], axis=1) < radius
    inv = np.linalg.inv(pose)
    cam = world_xyz[near] @ inv[:3, :3].T + inv[:3, 3]
    return cam.astype(np.float32), world_rgb[near]


# --- tests -----------------------------------------------------------------------------------------


def test_real_depth_frames_produce_consistent_outputs(harness_factory, mosd_dir):
    """Organized 640 x 480 Kinect frames with NaNs and packed rgba, pose_source none."""
    h = harness_factory({"accumulation.voxel_size": 0.01})
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    markers = h.subscribe(MarkerArray, "/mask3d/markers")
    diagnostics = h.subscribe(DiagnosticArray, "/diagnostics")
    wait_for(lambda: h.node.markers_pub.get_subscription_count() > 0, what="the marker subscription")
    for i, name in enumerate(("test1.pcd", "test10.pcd")):
        table = read_pcd(mosd_dir / "val" / name)
        assert table.is_organized and np.isnan(table.points["x"]).any()
        msg = cloud_msg_from_table(table, "kinect_rgb_optical_frame", 100.0 + i)
        h.publish(msg)
        cloud = clouds.wait(i + 1)
        inst = instances.wait(i + 1)
        pts = check_outputs(cloud, inst, int((100.0 + i) * NS_PER_S), "kinect_rgb_optical_frame", FakeModel.class_names)
        finite = np.isfinite(table.points["x"]) & np.isfinite(table.points["z"])
        assert 0 < len(pts) < finite.sum(), "the voxel-deduplicated frame (pose_source none: this frame only)"
        assert len(pts) == h.model.sizes[-1]
        assert len(inst.instances) > 0
        marker_array = markers.wait(i + 1)
        added = [m for m in marker_array.markers if m.action == Marker.ADD]
        assert len(added) == 2 * len(inst.instances)
        assert {m.id for m in added} == {x.id for x in inst.instances}
        assert all(m.header == cloud.header for m in marker_array.markers)
    assert h.model.calls == 2
    assert h.node.counters["malformed_clouds"] == 0
    model_rgb = h.model.inputs[-1][1]
    input_rgb = unpack_rgb(read_pcd(mosd_dir / "val" / "test10.pcd").points["rgba"])
    assert len(np.unique(model_rgb, axis=0)) > 100, "real colours went to the model"
    assert set(map(tuple, model_rgb[:200])) <= set(map(tuple, input_rgb)), "unchanged"
    status = diagnostics.wait(1).status[0]
    values = {kv.key: kv.value for kv in status.values}
    for key in ("input_rate_hz", "stamp_age_s", "pose_failures", "dropped_frames", "last_inference_ms",
                "map_points", "map_voxels", "device", "device_memory", "malformed_clouds"):
        assert key in values, key
    assert status.name == "mask3d: pipeline"


def cloud_msg_from_table(table, frame, t_s):
    return create_cloud(Header(frame_id=frame, stamp=stamp(t_s)), table.points.dtype, table.grid())


def test_moving_camera_accumulates_in_the_fixed_frame_with_injected_poses(harness_factory):
    world, colours = world_scene()
    poses = StaticPoses(lambda frame, ns: camera_pose(ns / NS_PER_S - 5.0) if frame == "camera_optical" else None)
    h = harness_factory({"pose_source": "tf", "fixed_frame": "odom", "accumulation.max_frames": 0,
                         "accumulation.voxel_size": 0.005}, pose_source=poses)
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    sizes = []
    for i, t in enumerate((0.0, 0.5, 1.0)):
        xyz, rgb = view(world, colours, camera_pose(t))
        h.publish(cloud_msg(xyz, rgb, "camera_optical", 5.0 + t))
        cloud = clouds.wait(i + 1)
        points = check_outputs(cloud, instances.wait(i + 1), int((5.0 + t) * NS_PER_S), "odom")
        sizes.append(len(points))
        distance, _ = cKDTree(world).query(xyz_of(points))
        assert distance.max() < 1e-3, "accumulated points land on the world geometry"
    assert sizes[0] < sizes[1] < sizes[2], "the map grows as the camera uncovers the table"
    assert h.node.map.num_frames >= 2


def test_odometry_poses_interpolated_at_the_cloud_stamp(harness_factory):
    """Odometry of base_link at 20 Hz, a camera mounted with an extrinsic, clouds between samples."""
    world, colours = world_scene()
    extrinsic = [0.1, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]  # optical frame looking forward along body x
    t_bs = matrix_from_pose(extrinsic[:3], extrinsic[3:])

    def body_pose(t):  # x forward at 0.3 m/s, turning at 20 deg/s: both exact under lerp / slerp
        return matrix_from_pose((0.3 * t - 0.3, 0.5, 0.45), Rotation.from_euler("z", 20 * t, degrees=True).as_quat())

    h = harness_factory({"pose_source": "odometry", "fixed_frame": "odom", "odometry.body_frame": "base_link",
                         "odometry.body_to_sensor": extrinsic, "accumulation.max_frames": 0,
                         "pose_timeout": 0.05, "accumulation.voxel_size": 0.005})
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    odom_pub = h.publisher(Odometry, "odom", depth=100)
    wait_for(lambda: odom_pub.get_subscription_count() > 0, what="the odometry subscription")
    for k in range(25):
        t = k * 0.05
        m = body_pose(t)
        q = Rotation.from_matrix(m[:3, :3]).as_quat()
        msg = Odometry()
        msg.header.frame_id, msg.child_frame_id, msg.header.stamp = "odom", "base_link", stamp(10.0 + t)
        msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z = m[:3, 3]
        o = msg.pose.pose.orientation
        o.x, o.y, o.z, o.w = q
        odom_pub.publish(msg)
    wait_for(lambda: len(h.node.odometry) == 25, what="all odometry samples")
    for i, t in enumerate((0.33, 0.87)):
        sensor_pose = body_pose(t) @ t_bs
        near = world[:, 0] < sensor_pose[0, 3] + 0.6  # what lies ahead of the camera
        inv = np.linalg.inv(sensor_pose)
        xyz = (world[near] @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
        h.publish(cloud_msg(xyz, colours[near], "camera_optical", 10.0 + t))
        points = check_outputs(clouds.wait(i + 1), instances.wait(i + 1), int(round((10.0 + t) * NS_PER_S)), "odom")
        distance, _ = cKDTree(world).query(xyz_of(points))
        assert distance.max() < 2e-3, "interpolated pose x extrinsic puts the points on the world"
    # a cloud newer than any odometry is skipped and counted, not guessed
    h.publish_cloud_and_wait(cloud_msg(world[:100], colours[:100], "camera_optical", 30.0), "pose_failures")
    assert h.node.counters["pose_failures"] == 1 and len(clouds) == 2
    # odometry in another frame is refused with a reason
    bad = Odometry()
    bad.header.frame_id, bad.child_frame_id, bad.header.stamp = "map", "base_link", stamp(11.5)
    bad.pose.pose.orientation.w = 1.0
    odom_pub.publish(bad)
    wait_for(lambda: h.node.counters["odometry_rejected"] == 1, what="the foreign odometry to be rejected")


def test_missing_pose_skips_the_frame_and_keeps_the_map(harness_factory):
    poses = StaticPoses({"camera": np.eye(4)})
    h = harness_factory({"pose_source": "tf", "fixed_frame": "odom"}, pose_source=poses)
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.publish(cloud_msg(world, colours, "camera", 1.0))
    first = clouds.wait(1)
    h.publish_cloud_and_wait(cloud_msg(world + 5, colours, "lidar", 2.0), "pose_failures")
    assert h.node.counters["pose_failures"] == 1 and h.node.stats()["tf_failures"] == 1
    assert h.node.map.num_points == first.width, "nothing lost"
    h.call(Trigger, "/mask3d/segment_now", Trigger.Request())
    again = clouds.wait(2)
    assert again.header == first.header and again.width == first.width


def test_latest_wins_under_a_30_hz_flood(harness_factory):
    """Inference held busy while 30 clouds arrive: one waits, the rest are dropped and counted,
    and the result published after the busy one is the newest cloud's."""
    model = FakeModel()
    model.gate = threading.Event()
    h = harness_factory({"accumulation.voxel_size": 0.01}, model=model)
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.publish(cloud_msg(world, colours, "camera", 0.0))
    assert model.started.wait(20)
    last = 29
    for i in range(1, last + 1):  # 30 Hz
        h.publish(cloud_msg(world, colours, "camera", i / 30.0), wait_matched=False)
        time.sleep(1 / 30.0)
    wait_for(lambda: h.node.map.newest_stamp_ns == stamp_to_ns(stamp(last / 30.0)), what="the last cloud")
    stats = h.node.worker.stats
    assert stats.busy and h.node.worker.pending, "one inference runs, exactly one waits"
    # the executor stays responsive while the model is busy: services and parameter services answer

    answer = h.call(GetParameters, "/mask3d/get_parameters", GetParameters.Request(names=["trigger.mode"]))
    assert answer.values[0].string_value == "per_frame"
    assert h.call(Trigger, "/mask3d/segment_now", Trigger.Request()).success
    assert stats.busy, "still busy: the answers did not wait for the model"
    requests = h.node.counters["inference_requests"]
    assert stats.dropped == requests - 2 >= 1, "every other request was dropped and counted"
    model.gate.set()
    h.wait_idle()
    assert model.calls == 2
    newest = clouds.wait(2)
    assert stamp_to_ns(newest.header.stamp) == stamp_to_ns(stamp(last / 30.0)), "latest wins"
    assert h.node.stats()["dropped_frames"] == stats.dropped


def test_malformed_clouds_are_counted_and_the_node_keeps_its_map(harness_factory):
    h = harness_factory()
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.publish(cloud_msg(world, colours, "camera", 1.0))
    good = clouds.wait(1)

    truncated = cloud_msg(world, colours, "camera", 2.0)
    truncated.data = bytes(truncated.data)[:-7]
    no_z = cloud_msg(world, colours, "camera", 2.0)
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    no_frame = cloud_msg(world, colours, "", 2.0)
    bad_type = cloud_msg(world, colours, "camera", 2.0)
    bad_type.fields[0].datatype = 42
    for i, msg in enumerate((truncated, no_z, no_frame, bad_type)):
        h.publish_cloud_and_wait(msg, "malformed_clouds")
        assert h.node.counters["malformed_clouds"] == i + 1
    nan = np.full((50, 3), np.nan, np.float32)
    h.publish_cloud_and_wait(cloud_msg(nan, np.zeros((50, 3), np.uint8), "camera", 2.0, organized_shape=(5, 10)),
                             "empty_clouds")
    assert h.node.map.num_points == good.width and len(clouds) == 1, "nothing lost, nothing published"
    assert h.call(Trigger, "/mask3d/segment_now", Trigger.Request()).success
    assert clouds.wait(2).width == good.width
    assert h.node.stats()["malformed_clouds"] == 4


def test_a_map_already_segmented_is_not_segmented_again_unless_asked(harness_factory):
    """A worker job that starts after the next cloud entered the map segments that cloud too; the
    next cloud's own request then finds nothing new and is skipped (counted), instead of
    publishing the same result twice. ``~/segment_now`` always runs."""
    h = harness_factory()
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.publish(cloud_msg(world, colours, "camera", 1.0))
    clouds.wait(1)
    h.wait_idle()
    calls = h.model.calls
    assert h.node._request_inference()  # the request of a cloud the previous job already covered
    h.wait_idle()
    assert h.model.calls == calls and h.node.counters["inferences_skipped_unchanged"] == 1 and len(clouds) == 1
    assert h.call(Trigger, "/mask3d/segment_now", Trigger.Request()).success
    assert stamp_to_ns(clouds.wait(2).header.stamp) == 1 * NS_PER_S and h.model.calls == calls + 1


def test_a_failed_inference_is_logged_and_the_node_carries_on(harness_factory):
    h = harness_factory()
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.model.fail_next = True
    h.publish(cloud_msg(world, colours, "camera", 1.0))
    wait_for(lambda: h.node.worker.stats.failed == 1, what="the failure to be counted")
    assert "simulated CUDA out of memory" in h.node.stats()["last_error"]
    h.publish(cloud_msg(world, colours, "camera", 2.0))
    assert stamp_to_ns(clouds.wait(1).header.stamp) == 2 * NS_PER_S


def test_enable_disable_reset_and_segment_now(harness_factory):
    h = harness_factory()
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    off = h.call(SetBool, "/mask3d/enable", SetBool.Request(data=False))
    assert off.success and "disabled" in off.message
    wait_for(lambda: h.model.released == 1, what="the model to be released")
    h.publish_cloud_and_wait(cloud_msg(world, colours, "camera", 1.0), "clouds_accumulated")
    assert h.model.calls == 0, "no inference while disabled; the map still accumulates"
    refused = h.call(Trigger, "/mask3d/segment_now", Trigger.Request())
    assert not refused.success and "disabled" in refused.message
    on = h.call(SetBool, "/mask3d/enable", SetBool.Request(data=True))
    assert on.success
    assert stamp_to_ns(clouds.wait(1).header.stamp) == NS_PER_S, "enabling segments the current map"
    reset = h.call(Trigger, "/mask3d/reset", Trigger.Request())
    assert reset.success and h.node.map.num_points == 0
    empty = h.call(Trigger, "/mask3d/segment_now", Trigger.Request())
    assert not empty.success and "empty" in empty.message


def test_on_demand_trigger_only_runs_when_asked(harness_factory):
    h = harness_factory({"trigger.mode": "on_demand"})
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    for t in (1.0, 2.0):
        h.publish_cloud_and_wait(cloud_msg(world, colours, "camera", t), "clouds_accumulated")
    assert h.model.calls == 0
    response = h.call(Trigger, "/mask3d/segment_now", Trigger.Request())
    assert response.success and "queued" in response.message
    assert stamp_to_ns(clouds.wait(1).header.stamp) == 2 * NS_PER_S


def test_rate_trigger_runs_on_the_node_clock_with_sim_time(harness_factory):
    """use_sim_time: the rate timer follows /clock, so nothing runs while the clock stands still."""
    h = harness_factory({"trigger.mode": "rate", "trigger.rate": 2.0, "use_sim_time": True})
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    clock_pub = h.publisher(Clock, "/clock")
    wait_for(lambda: clock_pub.get_subscription_count() > 0, what="the /clock subscription")
    clock_pub.publish(Clock(clock=stamp(100.0)))
    # the jump from 0 to 100 s makes the timer fire once (on an empty map); wait until it has
    wait_for(lambda: h.node.get_clock().now().nanoseconds == 100 * NS_PER_S
             and h.node.rate_timer.time_until_next_call() > 0, what="the node clock to follow /clock")
    h.publish_cloud_and_wait(cloud_msg(world, colours, "camera", 100.0), "clouds_accumulated")
    time.sleep(0.3)
    assert h.model.calls == 0, "sim time stands still: no timer tick"
    t = 100.0
    while not len(clouds):
        t += 0.25
        clock_pub.publish(Clock(clock=stamp(t)))
        time.sleep(0.02)
        assert t < 200, "the rate timer never fired on sim time"
    assert stamp_to_ns(clouds.last.header.stamp) == 100 * NS_PER_S
    h.wait_idle()
    calls = h.model.calls
    for _ in range(8):  # the map did not change: the timer does not re-run inference
        t += 0.25
        clock_pub.publish(Clock(clock=stamp(t)))
        time.sleep(0.02)
    h.wait_idle()
    assert h.model.calls == calls


def test_lidar_scan_with_float_intensity_and_no_colour(harness_factory, ouster_bag_dir):
    """A real Ouster OS1-64 scan (organized 64 x 2048, 9 fields, float intensity): grey from intensity."""
    with AnyReader([ouster_bag_dir]) as reader:
        connection = next(c for c in reader.connections if c.msgtype == "sensor_msgs/msg/PointCloud2")
        raw = next(raw for c, _, raw in reader.messages(connections=[connection]))
    msg = deserialize_message(raw, PointCloud2)
    h = harness_factory({"accumulation.voxel_size": 0.1, "model.min_instance_points": 20}, model=FakeModel(cell=2.0))
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    h.publish(msg)
    check_outputs(clouds.wait(1), instances.wait(1), stamp_to_ns(msg.header.stamp), msg.header.frame_id)
    rgb = h.model.inputs[0][1]
    assert np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]), "grey"
    assert rgb.max() == 255 and len(np.unique(rgb[:, 0])) > 50, "intensity spread over the grey range"


def test_lidar_uint8_intensity_and_constant_colour(harness_factory):
    xyz = np.random.default_rng(0).uniform(-5, 5, (3000, 3)).astype(np.float32)
    intensity = (np.arange(3000) % 256).astype(np.uint8)
    lidar = {"accumulation.voxel_size": 0.001, "roi.min_range": 0.0, "roi.max_range": 0.0}  # no tabletop crop
    h = harness_factory(lidar, model=FakeModel(cell=3.0))
    h.publish(cloud_msg(xyz, None, "lidar", 1.0, intensity=intensity))
    wait_for(lambda: h.model.inputs, what="inference")
    grey = h.model.inputs[0][1]
    assert sorted(np.unique(grey[:, 0])) == list(range(256)), "uint8 intensity is the grey value"
    h2 = harness_factory({**lidar, "input.colour_source": "constant", "input.constant_colour": [10, 20, 30]},
                         model=FakeModel(cell=3.0), namespace="constant")
    h2.publish(cloud_msg(xyz, None, "lidar", 1.0, intensity=intensity), topic="/constant/points")
    wait_for(lambda: h2.model.inputs, what="inference")
    assert np.all(h2.model.inputs[0][1] == [10, 20, 30])


def test_bounded_runtime_parameters_carry_their_range_in_the_descriptor(harness_factory):
    """rqt_reconfigure draws a slider from the descriptor's range; read-only and one-sided ones have none."""
    node = harness_factory().node
    threshold = node.describe_parameter("model.score_threshold").floating_point_range[0]
    assert (threshold.from_value, threshold.to_value) == (0.0, 1.0)
    assert node.describe_parameter("markers.alpha").floating_point_range[0].to_value == 1.0
    assert not node.describe_parameter("accumulation.voxel_size").floating_point_range    # read-only
    assert not node.describe_parameter("model.max_instances").integer_range                # no upper bound
    refused = node.set_parameters([Parameter("markers.alpha", value=1.5)])[0]
    assert not refused.successful and "out of range" in refused.reason
    assert node.describe_parameter("markers.alpha").description.startswith("Opacity")    # kept


def test_runtime_parameters_validated_and_applied(harness_factory):
    h = harness_factory()
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    instances = h.subscribe(InstanceArray, "/mask3d/instances")
    world, colours = world_scene()
    ok = h.node.set_parameters([Parameter("model.score_threshold", value=0.95)])
    assert ok[0].successful
    h.publish(cloud_msg(world, colours, "camera", 1.0))
    assert len(instances.wait(1).instances) == 0, "the fake scores 0.9 < 0.95"
    assert read_points(clouds.wait(1))["instance_id"].max() == 0
    bad = h.node.set_parameters([Parameter("model.score_threshold", value=2.0)])
    assert not bad[0].successful and "out of range" in bad[0].reason
    frozen = h.node.set_parameters([Parameter("accumulation.voxel_size", value=0.5)])
    assert not frozen[0].successful, "structural parameters are read-only at run time"
    assert h.node.set_parameters([Parameter("class_filter", value=["object"])])[0].successful
    typo = h.node.set_parameters([Parameter("class_filter", value=["objet"])])[0]
    assert not typo.successful and "unknown class" in typo.reason and "table, object" in typo.reason
    assert h.node.set_parameters([Parameter("model.score_threshold", value=0.5)])[0].successful
    h.publish(cloud_msg(world, colours, "camera", 2.0))
    filtered = instances.wait(2)
    assert filtered.instances and {i.class_name for i in filtered.instances} == {"object"}


def test_incompatible_qos_gives_an_actionable_warning(harness_factory):
    h = harness_factory()
    h.publisher(PointCloud2, "points", reliability=ReliabilityPolicy.BEST_EFFORT)
    wait_for(lambda: h.node.qos_warnings, what="the incompatible-QoS warning")
    assert "input_qos.reliability:=best_effort" in h.node.qos_warnings[0]
    h.client.create_subscription(PointCloud2, "/mask3d/labeled_cloud", lambda m: None,
                                 QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    wait_for(lambda: len(h.node.qos_warnings) >= 2, what="the output QoS warning")
    assert "output_qos.durability:=transient_local" in h.node.qos_warnings[-1]


def test_best_effort_input_when_configured(harness_factory):
    h = harness_factory({"input_qos.reliability": "best_effort"})
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    world, colours = world_scene()
    h.publish(cloud_msg(world[:2000], colours[:2000], "camera", 1.0), reliability=ReliabilityPolicy.BEST_EFFORT)
    clouds.wait(1)


def test_namespace_and_remapping(harness_factory):
    h = harness_factory(namespace="robot1", cli_args=["--ros-args", "-r", "points:=/camera/points"], name="seg")
    clouds = h.subscribe(PointCloud2, "/robot1/seg/labeled_cloud")
    assert h.node.cloud_sub.topic_name == "/camera/points"
    world, colours = world_scene()
    h.publish(cloud_msg(world, colours, "camera", 1.0), topic="/camera/points")
    clouds.wait(1)


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "config").glob("mask3d_*.yaml")))
def test_shipped_parameter_files_parse_and_validate(harness_factory, config):
    """rcl reads every config/mask3d_*.yaml and the node accepts every value in it."""
    path = REPO / "config" / config
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["/**"] and list(raw["/**"]) == ["ros__parameters"]

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    expected = dict(flatten(raw["/**"]["ros__parameters"]))
    assert set(expected) <= set(params.PARAMETERS_BY_NAME), set(expected) - set(params.PARAMETERS_BY_NAME)

    h = harness_factory(base=False, cli_args=["--ros-args", "--params-file", str(path)], pose_source=IdentityPoses(),
                        name=f"mask3d_{path.stem}")
    for name, value in expected.items():
        got = h.node.config[name]
        assert got == pytest.approx(value) if isinstance(value, (float, list)) else got == value, name


BAD_PARAMETER_CASES = [
    (["-p", "accumulation.voxel_size:=-1.0", "-p", "trigger.mode:=sometimes"], 2,
     ["accumulation.voxel_size", "out of range", "trigger.mode", "'sometimes' is not one of"]),
    (["-p", "input_qos.depth:=one"], 2, ["input_qos.depth", "expected int"]),
    (["-p", "model.allow_random_weights:=false", "-p", "model.checkpoint:=''"], 2, ["model.checkpoint is empty"]),
    (["-p", "model.checkpoint:=/nonexistent/weights.ckpt"], 1, ["/nonexistent/weights.ckpt", "not found"]),
    (["-p", "class_filter:=[chair]"], 2, ["class_filter: unknown class", "table, object"]),
]


@pytest.mark.parametrize("args,code,messages", BAD_PARAMETER_CASES)
def test_bad_parameters_exit_non_zero_with_a_clear_message(args, code, messages):
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "mask3d_ros.node", "--ros-args", "-p", "model.allow_random_weights:=true", *args]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == code, output
    for text in messages:
        assert text in output, output


def test_tf_pose_source_without_tf2_ros_fails_clearly():
    """As on a machine with the PyPI wheels only: the test overlay (tf2_ros) is left off the path."""
    env = dict(os.environ)
    overlay = env.get("MASK3D_ROS_OVERLAY")
    if overlay:
        env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                            if p and not p.startswith(overlay))
    cmd = [sys.executable, "-m", "mask3d_ros.node", "--ros-args", "-p", "model.checkpoint:=''",
           "-p", "model.allow_random_weights:=true", "-p", "pose_source:=tf"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "tf2_ros" in done.stderr + done.stdout
    assert done.returncode == 1 and "tf2_ros" in done.stderr + done.stdout


def test_unknown_parameter_names_are_reported_with_a_suggestion(harness_factory):
    h = harness_factory({"model.chekpoint": "x.ckpt"})
    assert h.node.unknown_parameters == ["model.chekpoint"]
