"""Bag tools: rosbag2 read/write, making bags from files and synthetic sequences, and replaying and
recording through a real rclpy graph (in-process and across processes)."""
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from nav_msgs.msg import Odometry
from rclpy.duration import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Imu, PointCloud2
from std_msgs.msg import String

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.data.datasets import load_mosd
from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.ros.cloud import read_points
from mask3d_ros.ros.poses import matrix_from_pose, matrix_from_pose_msg, matrix_from_transform_msg
from mask3d_ros.tools import make_bag, scene_bags
from mask3d_ros.tools.bag import (
    BagMessage,
    GroundTruth,
    TopicInfo,
    bag_info,
    deserialize_rclpy,
    deserialize_typestore,
    message_definition,
    playback_qos,
    qos,
    read_messages,
    recording_qos,
    serialize_rclpy,
    stamp_ns,
    write_bag,
)
from mask3d_ros.tools.harness import Spinner
from mask3d_ros.tools.replay import BagPlayer, BagRecorder, Timeline, parse_remaps

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOUD_TOPIC = scene_bags.BagLayout().points_topic
SYNTHETIC_FRAMES = 4
HAS_TF2_MSGS = importlib.util.find_spec("tf2_msgs") is not None  # with the ROS 2 test overlay, or a ROS install
SKIPPED_WITHOUT_CLASS = {} if HAS_TF2_MSGS else {"/tf": "tf2_msgs/msg/TFMessage",
                                                  "/tf_static": "tf2_msgs/msg/TFMessage"}
"""Topics the player skips because their message type has no Python class here."""


def string_message(text: str) -> bytes:
    return serialize_rclpy(String(data=text))


def sample_messages() -> list[BagMessage]:
    """Two interleaved topics, one with equal log times, bytes of every length modulo 4."""
    messages = []
    for i in range(6):
        messages.append(BagMessage("/chatter", "std_msgs/msg/String", 1_000_000_000 + i * 100_000_000,
                                   string_message("x" * i)))
        if i % 2 == 0:
            messages.append(BagMessage("/odd/topic", "std_msgs/msg/String", 1_000_000_000 + i * 100_000_000,
                                       string_message(f"second {i}")))
    return messages


# --- files --------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_write_read_round_trip_keeps_bytes_order_and_qos(tmp_path, storage):
    messages = sample_messages()
    latched = qos(reliable=True, transient_local=True, depth=1)
    counts = write_bag(tmp_path / "bag", messages, offered_qos={"/odd/topic": [latched]}, storage=storage)
    assert counts == {"/chatter": 6, "/odd/topic": 3}

    assert list(read_messages(tmp_path / "bag")) == messages  # equal log times keep the written order
    info = bag_info(tmp_path / "bag")
    assert (info.start_ns, info.end_ns, info.message_count) == (1_000_000_000, 1_500_000_000, 9)
    assert info.topics["/odd/topic"].offered_qos == (latched,)
    assert info.topics["/chatter"].msgtype == "std_msgs/msg/String"

    later = list(read_messages(tmp_path / "bag", ["/chatter"], start_offset_s=0.25))
    assert [m.log_time_ns for m in later] == [1_300_000_000, 1_400_000_000, 1_500_000_000]
    with pytest.raises(ValueError, match="no topic /missing"):
        list(read_messages(tmp_path / "bag", ["/missing"]))


def test_project_message_definitions_come_from_installed_msg_files():
    share = Path(sys.prefix, "share", "mask3d_ros", "msg", "InstanceArray.json")
    if not share.exists():
        pytest.skip("mask3d_ros interfaces are not built into this environment")
    msgdef, rihs01 = message_definition("mask3d_ros/msg/InstanceArray")
    assert rihs01 in share.read_text()  # the same hash rosidl computed
    assert "MSG: mask3d_ros/Instance" in msgdef


def test_reads_every_message_of_the_real_ouster_bag(ouster_bag_dir):
    info = bag_info(ouster_bag_dir)
    messages = list(read_messages(ouster_bag_dir))
    assert len(messages) == info.message_count == 19
    assert [m.log_time_ns for m in messages] == sorted(m.log_time_ns for m in messages)
    by_topic = {}
    for message in messages:
        by_topic.setdefault(message.topic, []).append(deserialize_rclpy(message.data, message.msgtype))
    assert {topic: len(items) for topic, items in by_topic.items()} == {
        "/os1_cloud_node/points": 2, "/os1_cloud_node/imu": 17}
    for cloud in by_topic["/os1_cloud_node/points"]:
        points = read_points(cloud, ["x", "y", "z", "intensity"])
        assert points.shape == (cloud.width * cloud.height,) == (2048 * 64,)
        assert np.isfinite(points["x"]).all() and np.abs(points["x"]).max() < 200


# --- making bags ----------------------------------------------------------------------------


def test_bag_from_mosd_files_holds_clouds_and_labels(tmp_path, mosd_dir):
    files = [mosd_dir / "val" / "test1.pcd", mosd_dir / "val" / "test43.pcd"]  # organised, then not
    layout = scene_bags.BagLayout(points_topic="/kinect/points", frame_id="kinect_rgb_optical", rate_hz=4.0)
    assert make_bag.main([str(tmp_path / "bag"), "--files", *map(str, files), "--topic", layout.points_topic,
                          "--frame-id", layout.frame_id, "--rate", "4", "--start", "1700000000"]) == 0

    messages = list(read_messages(tmp_path / "bag"))
    assert [(m.topic, m.log_time_ns) for m in messages] == [
        ("/kinect/points", 1_700_000_000_000_000_000), ("/kinect/points", 1_700_000_000_250_000_000)]
    truth = GroundTruth.load(tmp_path / "bag")
    assert truth.stamps.tolist() == [m.log_time_ns for m in messages]
    for file, message in zip(files, messages):
        cloud = deserialize_rclpy(message.data, message.msgtype)
        assert (cloud.header.frame_id, stamp_ns(cloud.header.stamp)) == (layout.frame_id, message.log_time_ns)
        table = read_pcd(file)
        source, finite = table.points, np.isfinite(table.points["x"])
        assert (cloud.width, cloud.height, cloud.is_dense) == (table.width, table.height, bool(finite.all()))
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]  # labels stay out of the cloud
        points = read_points(cloud)
        np.testing.assert_array_equal(points["x"], source["x"])  # NaNs in the same places
        np.testing.assert_array_equal(unpack_rgb(points["rgb"][finite]), unpack_rgb(source["rgba"][finite]))
        labels, scene = truth.frame(message.log_time_ns), load_mosd(file)
        assert labels.semantic.shape == (table.height, table.width) and labels.sensor_pose is None
        valid_index = np.flatnonzero(finite)
        np.testing.assert_array_equal(labels.semantic.reshape(-1)[valid_index], scene.semantic)
        np.testing.assert_array_equal(labels.instance.reshape(-1)[valid_index], scene.instance)
        assert (labels.semantic.reshape(-1)[~finite] == -1).all()
    assert truth.class_names == ("table", "object") and truth.instance_classes == ("object",)


@pytest.fixture(scope="module")
def synthetic_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "bag"
    scene_bags.write_synthetic_bag(path, seed=3, num_frames=SYNTHETIC_FRAMES, width=160, height=120)
    return path


def test_synthetic_bag_holds_clouds_poses_and_ground_truth(synthetic_bag):
    layout = scene_bags.BagLayout()
    info = bag_info(synthetic_bag)
    assert {name: (t.msgtype, t.message_count) for name, t in info.topics.items()} == {
        "/tf_static": ("tf2_msgs/msg/TFMessage", 1), "/tf": ("tf2_msgs/msg/TFMessage", SYNTHETIC_FRAMES),
        "/odom": ("nav_msgs/msg/Odometry", SYNTHETIC_FRAMES),
        CLOUD_TOPIC: ("sensor_msgs/msg/PointCloud2", SYNTHETIC_FRAMES)}
    assert info.topics["/tf_static"].offered_qos[0].durability == QosDurability.TRANSIENT_LOCAL
    stamps = [layout.start_ns + i * 500_000_000 for i in range(SYNTHETIC_FRAMES)]  # default 2 Hz
    messages = list(read_messages(synthetic_bag))
    assert [m.topic for m in messages[:4]] == ["/tf_static", "/tf", "/odom", CLOUD_TOPIC]  # poses before clouds

    (static,) = deserialize_typestore(messages[0].data, "tf2_msgs/msg/TFMessage").transforms
    assert (static.header.frame_id, static.child_frame_id) == ("base_link", layout.frame_id)
    mount = matrix_from_transform_msg(static.transform)
    np.testing.assert_allclose(mount, scene_bags.CAMERA_MOUNT, atol=1e-9)
    parameters = scene_bags.odometry_parameters(layout)
    extrinsic = parameters["odometry.body_to_sensor"]
    np.testing.assert_allclose(matrix_from_pose(extrinsic[:3], extrinsic[3:]), mount, atol=1e-9)

    truth = GroundTruth.load(synthetic_bag)
    assert truth.stamps.tolist() == stamps and truth.fixed_frame == "odom"
    frames = scene_bags.synthetic_frames(3, SYNTHETIC_FRAMES, 160, 120, ideal=False, arc_degrees=360.0)
    by_topic = {}
    for message in messages[1:]:
        by_topic.setdefault(message.topic, []).append(message)
    for stamp, frame, tf, odom, cloud in zip(stamps, frames, by_topic["/tf"], by_topic["/odom"], by_topic[CLOUD_TOPIC]):
        assert tf.log_time_ns == odom.log_time_ns == cloud.log_time_ns == stamp
        (transform,) = deserialize_typestore(tf.data, tf.msgtype).transforms
        assert (transform.header.frame_id, transform.child_frame_id, stamp_ns(transform.header.stamp)) == (
            "odom", "base_link", stamp)
        odometry = deserialize_rclpy(odom.data, odom.msgtype)
        assert (odometry.header.frame_id, odometry.child_frame_id, stamp_ns(odometry.header.stamp)) == (
            "odom", "base_link", stamp)
        body = matrix_from_transform_msg(transform.transform)
        np.testing.assert_allclose(matrix_from_pose_msg(odometry.pose.pose), body, atol=1e-9)
        np.testing.assert_allclose(body @ mount, frame.camera_pose, atol=1e-6)  # odom_T_camera
        labels = truth.frame(stamp)
        np.testing.assert_allclose(labels.sensor_pose, frame.camera_pose)
        np.testing.assert_array_equal(labels.instance, frame.instance)
        np.testing.assert_array_equal(labels.semantic, frame.semantic)
        message = deserialize_rclpy(cloud.data, cloud.msgtype)
        assert (message.header.frame_id, stamp_ns(message.header.stamp)) == (layout.frame_id, stamp)
        assert (message.width, message.height, message.is_dense) == (160, 120, False)
        points = read_points(message, reshape_organized_cloud=True)
        np.testing.assert_array_equal(np.stack([points[a] for a in "xyz"], -1), frame.xyz)
        np.testing.assert_array_equal(unpack_rgb(points["rgb"]), frame.rgb)
    linear = odometry.twist.twist.linear
    speed = np.linalg.norm([linear.x, linear.y, linear.z])
    assert speed > 0.1  # a camera circling a table at 2 Hz, 90 degrees a frame, moves


# --- playback logic -------------------------------------------------------------------------


def test_timeline_scales_bag_time_by_the_rate():
    timeline = Timeline(bag_start_ns=5_000_000_000, wall_start_s=100.0, rate=2.0)
    assert timeline.due_s(5_000_000_000) == 100.0
    assert timeline.due_s(6_000_000_000) == pytest.approx(100.5)
    assert timeline.bag_time_ns(100.5) == 6_000_000_000


def test_remaps_and_qos_choices():
    assert parse_remaps(["/a:=/b", "c:=d"]) == {"/a": "/b", "/c": "/d"}
    with pytest.raises(ValueError):
        parse_remaps(["/a=/b"])
    assert playback_qos(TopicInfo("/points", "sensor_msgs/msg/PointCloud2", 5, ())).transient_local is False
    latched = playback_qos(TopicInfo("/tf_static", "tf2_msgs/msg/TFMessage", 3, ()))
    assert latched.transient_local and latched.reliable and latched.depth == 3
    best_effort = qos(reliable=False)
    assert recording_qos([qos(), best_effort]).reliable is False
    assert recording_qos([qos(transient_local=True)]).transient_local is True
    assert recording_qos([qos(transient_local=True), qos()]).transient_local is False
    assert best_effort.reliability == QosReliability.BEST_EFFORT


# --- a real graph -------------------------------------------------------------------------


@pytest.fixture
def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context)
    executor = MultiThreadedExecutor(context=context)
    nodes = []

    def make_node(name, spin=True):
        node = rclpy.create_node(name, context=context)
        nodes.append(node)
        if spin:
            executor.add_node(node)
        return node

    spinner = Spinner(executor)
    yield make_node
    spinner.shutdown()
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown(context=context)
    spinner.join()      # fails the test if a callback's exception stopped the executor


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.ros
def test_player_delivers_every_message_with_clock_and_remap(ros_context, synthetic_bag):
    player = BagPlayer(ros_context("player", spin=False), synthetic_bag, rate=4.0, clock_hz=50.0,
                       remap={CLOUD_TOPIC: "/points"})
    assert player.skipped == SKIPPED_WITHOUT_CLASS
    listener = ros_context("listener")
    received, clocks = {"/points": [], "/odom": []}, []
    for topic, message_class in (("/points", PointCloud2), ("/odom", Odometry)):
        listener.create_subscription(message_class, topic, received[topic].append, 10, raw=True)
    listener.create_subscription(Clock, "/clock", lambda m: clocks.append(stamp_ns(m.clock)),
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert player.wait_for_subscribers(1, timeout_s=10.0, topics=["/points", "/odom"])
    started = time.monotonic()
    played_tf = {} if SKIPPED_WITHOUT_CLASS else {"/tf": SYNTHETIC_FRAMES, "/tf_static": 1}
    assert player.play() == {CLOUD_TOPIC: SYNTHETIC_FRAMES, "/odom": SYNTHETIC_FRAMES, **played_tf}
    elapsed = time.monotonic() - started
    assert elapsed >= 1.5 / 4.0  # 1.5 s of bag at 4x: the timeline is kept (no upper bound: shared machine)

    expected = {"/points": [m.data for m in read_messages(synthetic_bag, [CLOUD_TOPIC])],
                "/odom": [m.data for m in read_messages(synthetic_bag, ["/odom"])]}
    assert wait_for(lambda: all(len(received[t]) == SYNTHETIC_FRAMES for t in received), 5.0)
    assert received == expected  # bytes identical, in order
    assert wait_for(lambda: clocks and clocks[-1] == bag_info(synthetic_bag).end_ns, 5.0)
    assert clocks == sorted(clocks) and len(clocks) >= SYNTHETIC_FRAMES
    assert bag_info(synthetic_bag).start_ns <= clocks[0]


@pytest.mark.ros
def test_player_loops_from_the_start_offset_until_stopped(ros_context, synthetic_bag):
    stamps = []
    ros_context("listener").create_subscription(
        PointCloud2, CLOUD_TOPIC, lambda m: stamps.append(stamp_ns(m.header.stamp)), 50)
    player = BagPlayer(ros_context("player", spin=False), synthetic_bag, rate=10.0, topics=[CLOUD_TOPIC],
                       start_offset_s=1.0, loop=True)
    assert player.wait_for_subscribers(1, timeout_s=10.0)
    playing = threading.Thread(target=player.play)
    playing.start()
    assert wait_for(lambda: len(stamps) >= 6, 10.0)
    player.stop()
    playing.join(5.0)
    assert not playing.is_alive()
    start = scene_bags.BagLayout().start_ns
    later_frames = [start + 1_000_000_000, start + 1_500_000_000]  # frames 2 and 3 of 4, at 2 Hz
    assert stamps[:6] == later_frames * 3


@pytest.mark.ros
def test_player_replays_the_real_ouster_bag_and_a_sqlite3_bag(ros_context, ouster_bag_dir, tmp_path):
    write_bag(tmp_path / "sqlite", sample_messages(), storage="sqlite3")
    listener = ros_context("listener")
    for bag, subscriptions in ((ouster_bag_dir, {"/os1_cloud_node/points": PointCloud2, "/os1_cloud_node/imu": Imu}),
                               (tmp_path / "sqlite", {"/chatter": String, "/odd/topic": String})):
        received = {topic: [] for topic in subscriptions}
        for topic, message_class in subscriptions.items():
            listener.create_subscription(message_class, topic, received[topic].append, 50, raw=True)
        player = BagPlayer(ros_context(f"player_{len(subscriptions)}_{bag.name}", spin=False), bag, rate=2.0)
        assert player.wait_for_subscribers(1, timeout_s=10.0)
        player.play()
        expected = {topic: [m.data for m in read_messages(bag, [topic])] for topic in subscriptions}
        assert wait_for(lambda: all(len(received[t]) == len(expected[t]) for t in received), 5.0)
        assert received == expected


@pytest.mark.ros
def test_recorder_captures_what_publishers_send(ros_context, tmp_path):
    talker = ros_context("talker", spin=False)
    latched = talker.create_publisher(
        String, "/latched", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    latched.publish(String(data="sent before the recorder existed"))
    chatter = talker.create_publisher(String, "/chatter", 10)
    recorder = BagRecorder(ros_context("recorder"), tmp_path / "rec", ["/chatter", "latched"], max_messages=6)
    assert recorder.wait_until_subscribed(10.0)
    assert wait_for(lambda: chatter.get_subscription_count() == 1)
    for i in range(5):
        chatter.publish(String(data=f"hello {i}"))
    assert recorder.finished.wait(10.0)
    chatter.publish(String(data="after the stop condition"))
    assert recorder.close() == {"/chatter": 5, "/latched": 1}

    info = bag_info(tmp_path / "rec")
    assert info.topics["/latched"].offered_qos[0].durability == QosDurability.TRANSIENT_LOCAL
    texts = [deserialize_rclpy(m.data, m.msgtype).data for m in read_messages(tmp_path / "rec", ["/chatter"])]
    assert texts == [f"hello {i}" for i in range(5)]
    (latched_message,) = read_messages(tmp_path / "rec", ["/latched"])
    assert deserialize_rclpy(latched_message.data, latched_message.msgtype).data == "sent before the recorder existed"


@pytest.mark.ros
def test_close_waits_for_a_discovery_in_progress(ros_context, tmp_path):
    """close() from the caller's thread while discovery runs in the executor's: the discovery ends
    first, and none adds a topic to the closed bag (which raised in the executor and stopped it)."""
    node = ros_context("recorder", spin=False)     # discovery is driven by hand here, not by the timer
    recorder = BagRecorder(node, tmp_path / "rec", ["/late"])
    node.create_publisher(String, "/late", 10)
    entered, release, errors, closed = threading.Event(), threading.Event(), [], []
    graph = node.get_topic_names_and_types

    def slow_graph():
        entered.set()
        release.wait(10.0)
        return graph()

    def discover():
        try:
            recorder.discover()
        except Exception as error:  # noqa: BLE001 - the assertion below shows it
            errors.append(error)

    node.get_topic_names_and_types = slow_graph
    discovering = threading.Thread(target=discover)
    discovering.start()
    assert entered.wait(10.0)
    closing = threading.Thread(target=lambda: closed.append(recorder.close()))
    closing.start()
    closing.join(0.3)
    assert closing.is_alive(), "close() waits for the discovery in progress"
    release.set()
    discovering.join(10.0)
    closing.join(10.0)
    assert errors == [] and len(closed) == 1 and recorder.subscribed == {"/late": "std_msgs/msg/String"}
    assert "/late" in bag_info(tmp_path / "rec").topics
    assert recorder.discover() is False, "no discovery after close()"


def run_module(module: str, *args: str, **popen) -> subprocess.Popen:
    """A console script's module as its own process, in this test's ROS domain."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.ros
def test_play_process_into_in_process_recorder(ros_context, synthetic_bag, tmp_path):
    recorder = BagRecorder(ros_context("recorder"), tmp_path / "rec", ["/points", "/odom", "/clock"])
    process = run_module("mask3d_ros.tools.play_bag", str(synthetic_bag), "--rate", "5", "--clock", "20",
                         "--remap", f"{CLOUD_TOPIC}:=/points", "--wait-for-subscribers", "1", "--wait-topics",
                         "/points", "/odom", "--no-progress")
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, output
    if SKIPPED_WITHOUT_CLASS:
        assert "skipping topics whose message type has no Python class" in output and "/tf (tf2_msgs" in output
    else:
        assert "skipping topics" not in output, "tf2_msgs is importable: /tf is played"
    assert wait_for(lambda: recorder.counts.get("/points") == SYNTHETIC_FRAMES, 5.0), recorder.counts
    counts = recorder.close()
    assert counts["/odom"] == SYNTHETIC_FRAMES and counts["/clock"] >= SYNTHETIC_FRAMES
    recorded = [m.data for m in read_messages(tmp_path / "rec", ["/points"])]
    assert recorded == [m.data for m in read_messages(synthetic_bag, [CLOUD_TOPIC])]


@pytest.mark.ros
def test_record_process_stops_cleanly_on_ctrl_c(ros_context, tmp_path):
    talker = ros_context("talker", spin=False)
    chatter = talker.create_publisher(String, "/chatter", 10)
    process = run_module("mask3d_ros.tools.record_bag", str(tmp_path / "rec"), "/chatter", "--no-progress")
    try:
        assert wait_for(lambda: chatter.get_subscription_count() == 1, 20.0)
        for i in range(3):
            chatter.publish(String(data=f"hello {i}"))
        assert chatter.wait_for_all_acked(Duration(seconds=10))
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0 and "interrupted; wrote" in output, output
    texts = [deserialize_rclpy(m.data, m.msgtype).data for m in read_messages(tmp_path / "rec")]
    assert texts == [f"hello {i}" for i in range(3)], output
