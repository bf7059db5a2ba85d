"""Clouds whose pose has not arrived yet: they wait in a small bounded queue (no callback blocks),
are added once their odometry comes (within pose_timeout), and count as pose failures when it
never does; the node keeps answering meanwhile and keeps working afterwards.

Unit tests of :class:`mask3d_ros.ros.poses.PendingPoses` with a fake clock, then the node on a real
ROS graph (tests/ros_harness.py), under the executor ``mask3d_node`` uses and under a
MultiThreadedExecutor. Nothing here asserts on speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Log
from rcl_interfaces.srv import GetParameters
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import QoSProfile
from ros_harness import Harness, close_all, cloud_msg, stamp, wait_for
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from mask3d_ros.ros.node import PENDING_POSE_RETRY_S
from mask3d_ros.ros.poses import NS_PER_S, PendingPoses, PoseUnavailable, stamp_to_ns

# --- PendingPoses, no ROS --------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class GrowingPoses:
    """Poses known up to ``newest`` (pending beyond it); frame 'bad' fails for good; 'bug' raises."""

    def __init__(self, newest: int = 0):
        self.newest = newest

    def lookup(self, frame_id, stamp_ns):
        if frame_id == "bug":
            raise KeyError("simulated bug")
        if frame_id == "bad":
            raise PoseUnavailable("never")
        if stamp_ns > self.newest:
            raise PoseUnavailable(f"{stamp_ns} newer than {self.newest}", pending=True)
        pose = np.eye(4)
        pose[0, 3] = stamp_ns
        return pose


def test_pending_clouds_leave_in_arrival_order_once_their_pose_comes():
    source, clock = GrowingPoses(newest=10), FakeClock()
    pending = PendingPoses(source, limit=4, clock=clock)
    [now] = pending.offer("cam", 5, "a", timeout_s=1.0)
    assert now.item == "a" and now.error is None and now.pose[0, 3] == 5 and not pending.waiting
    assert pending.offer("cam", 20, "b", 1.0) == [] and pending.offer("cam", 15, "c", 1.0) == []
    assert len(pending) == 2 and pending.poll() == []
    source.newest = 16  # c's pose exists, b's not: c does not overtake b
    assert pending.poll() == []
    clock.now += 0.5
    source.newest = 25
    out = pending.poll()
    assert [o.item for o in out] == ["b", "c"] and all(o.error is None for o in out)
    assert out[0].waited_s == pytest.approx(0.5) and not pending.waiting


def test_pending_clouds_time_out_fail_at_once_when_waiting_cannot_help_and_are_bounded():
    source, clock = GrowingPoses(newest=0), FakeClock()
    pending = PendingPoses(source, limit=2, clock=clock)
    [bad] = pending.offer("bad", 1, "bad", 1.0)
    assert isinstance(bad.error, PoseUnavailable) and bad.error.args[0] == "never", "no wait when it cannot help"
    assert pending.offer("cam", 1, "a", 1.0) == []
    clock.now += 0.6
    assert pending.offer("cam", 2, "b", 1.0) == []
    clock.now += 0.5  # a: 1.1 s > timeout, b: 0.5 s
    [late] = pending.poll()
    assert late.item == "a" and late.error.pending and late.waited_s == pytest.approx(1.1)
    assert pending.offer("cam", 3, "c", 1.0) == [] and len(pending) == 2
    [pushed] = pending.offer("cam", 4, "d", 1.0)  # full: the oldest gives way
    assert pushed.item == "b" and "pending queue is full" in str(pushed.error)
    assert pending.clear() == ["c", "d"] and not pending.waiting


def test_a_bug_in_the_source_ends_only_that_clouds_wait():
    source, clock = GrowingPoses(newest=0), FakeClock()
    pending = PendingPoses(source, limit=4, clock=clock)
    [bug] = pending.offer("bug", 1, "x", 1.0)
    assert isinstance(bug.error, KeyError)
    assert pending.offer("cam", 5, "y", 1.0) == []
    source.newest = 5
    assert [o.item for o in pending.poll()] == ["y"]


# --- the node on a ROS graph -------------------------------------------------------------------

EXECUTORS = [pytest.param(SingleThreadedExecutor, id="single"), pytest.param(MultiThreadedExecutor, id="multi")]


@pytest.fixture
def harness_factory():
    made = []

    def make(params=None, **kwargs):
        h = Harness({"model.allow_random_weights": True, "model.min_instance_points": 5,
                     "pose_source": "odometry", "fixed_frame": "odom", **(params or {})}, **kwargs)
        made.append(h)
        return h

    yield make
    close_all(made)


def odometry(t_s: float, x: float = 0.0) -> Odometry:
    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id, msg.header.stamp = "odom", "base_link", stamp(t_s)
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    return msg


def table_cloud(t_s: float) -> PointCloud2:
    rng = np.random.default_rng(int(t_s * 100))
    xyz = rng.uniform((0, 0, 0.5), (1, 1, 0.8), (2000, 3)).astype(np.float32)
    return cloud_msg(xyz, np.full((2000, 3), 128, np.uint8), "camera", t_s)


def publish_odometry(h: Harness, *stamps_s: float) -> None:
    pub = h.publisher(Odometry, "odom", depth=100)
    wait_for(lambda: pub.get_subscription_count() > 0, what="the odometry subscription")
    for t in stamps_s:
        pub.publish(odometry(t))


def waiting(h: Harness) -> int:
    return h.node.stats()["clouds_waiting_for_pose"]


@pytest.mark.parametrize("executor_type", EXECUTORS)
def test_a_cloud_before_its_odometry_is_added_when_the_odometry_comes(harness_factory, executor_type):
    h = harness_factory({"pose_timeout": 10.0, "accumulation.max_frames": 0},  # long: never reached here
                        executor_type=executor_type)
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    publish_odometry(h, 10.6, 10.9)
    wait_for(lambda: len(h.node.odometry) == 2, what="the first odometry samples")
    h.publish_cloud_and_wait(table_cloud(11.0))  # newer than any odometry: waits, nothing blocks
    h.publish_cloud_and_wait(table_cloud(11.1))  # queued behind it
    wait_for(lambda: waiting(h) == 2, what="both clouds to wait for their pose")
    answer = h.call(GetParameters, "/mask3d/get_parameters", GetParameters.Request(names=["pose_timeout"]))
    assert answer.values[0].double_value == 10.0, "the node answers while clouds wait"
    assert h.node.counters["clouds_accumulated"] == 0 and h.node.counters["pose_failures"] == 0 and len(clouds) == 0

    publish_odometry(h, 11.05)  # covers the first cloud only (gaps below odometry.max_gap)
    wait_for(lambda: h.node.counters["clouds_accumulated"] == 1, what="the first cloud to be added")
    assert waiting(h) == 1 and h.node.map.newest_stamp_ns == int(11.0 * NS_PER_S)
    publish_odometry(h, 11.2)
    wait_for(lambda: h.node.counters["clouds_accumulated"] == 2, what="the second cloud to be added")
    wait_for(lambda: len(clouds) >= 1 and stamp_to_ns(clouds.last.header.stamp) == int(11.1 * NS_PER_S),
             what="the output of the newest cloud")
    assert clouds.last.header.frame_id == "odom" and waiting(h) == 0
    assert h.node.counters["pose_failures"] == 0 and h.node.map.num_frames == 2


def test_odometry_releasing_clouds_while_the_retry_timer_fires_never_stops_a_multithreaded_executor(
        harness_factory):
    """Under a MultiThreadedExecutor the retry timer, found ready, is taken in a pool thread; the
    odometry callback may release the last waiting cloud meanwhile. Cancelling the timer there made
    the take raise "timer is canceled", which stops the executor (close() reports it). The race is
    timing-dependent: many rounds, each a cloud that waits about a retry period for its odometry."""
    h = harness_factory({"pose_timeout": 10.0, "trigger.mode": "on_demand", "accumulation.max_frames": 1},
                        executor_type=MultiThreadedExecutor)
    rng = np.random.default_rng(0)
    publish_odometry(h, 10.95)
    rounds = 60
    for k in range(rounds):
        t = 11.0 + 0.1 * k
        h.publish_cloud_and_wait(table_cloud(t))
        time.sleep(rng.uniform(0.5, 1.5) * PENDING_POSE_RETRY_S)  # the timer fires about now
        publish_odometry(h, t + 0.05)
        wait_for(lambda k=k: h.node.counters["clouds_accumulated"] == k + 1, what=f"cloud {k} to be added")
    wait_for(h.node._pending_timer.is_canceled, what="the retry timer to stop once no cloud waits")
    answer = h.call(GetParameters, "/mask3d/get_parameters", GetParameters.Request(names=["pose_timeout"]))
    assert answer.values[0].double_value == 10.0 and h.spinner.error is None
    assert h.node.counters["pose_failures"] == 0 and h.node.counters["cloud_errors"] == 0


@pytest.mark.parametrize("executor_type", EXECUTORS)
def test_a_cloud_whose_odometry_never_comes_is_a_pose_failure_and_the_node_carries_on(harness_factory,
                                                                                        executor_type):
    h = harness_factory({"pose_timeout": 0.3}, executor_type=executor_type)
    rosout = h.subscribe(Log, "/rosout", QoSProfile(depth=200))
    clouds = h.subscribe(PointCloud2, "/mask3d/labeled_cloud")
    publish_odometry(h, *(10.0 + 0.1 * k for k in range(6)))
    wait_for(lambda: len(h.node.odometry) == 6, what="the odometry samples")
    h.publish_cloud_and_wait(table_cloud(12.0), "pose_failures")  # odometry stops at 10.5: given up
    assert h.node.counters["clouds_accumulated"] == 0 and waiting(h) == 0
    warnings = wait_for(lambda: [m for m in rosout.messages
                                 if m.name == "mask3d" and "cloud skipped, no pose" in m.msg], what="the warning")
    assert warnings[0].level == Log.WARN and "newer than the newest odometry" in warnings[0].msg
    h.publish_cloud_and_wait(table_cloud(9.0), "pose_failures")  # older than any odometry: no wait at all
    assert h.node.counters["pose_failures"] == 2

    h.publish(table_cloud(10.25))  # inside the odometry: answered
    assert stamp_to_ns(clouds.wait(1).header.stamp) == int(10.25 * NS_PER_S)
    assert h.node.counters["clouds_accumulated"] == 1 and h.node.counters["pose_failures"] == 2


def test_a_reset_drops_the_clouds_waiting_for_a_pose(harness_factory):
    h = harness_factory({"pose_timeout": 10.0})
    publish_odometry(h, 10.9)
    wait_for(lambda: len(h.node.odometry) == 1, what="the odometry sample")
    h.publish_cloud_and_wait(table_cloud(11.0))
    wait_for(lambda: waiting(h) == 1, what="the cloud to wait")
    answer = h.call(Trigger, "/mask3d/reset", Trigger.Request())
    assert answer.success and "1 cloud(s) waiting for a pose dropped" in answer.message and waiting(h) == 0
    publish_odometry(h, 11.3)
    h.publish_cloud_and_wait(table_cloud(11.2), "clouds_accumulated")
    assert h.node.map.num_frames == 1 and h.node.map.newest_stamp_ns == int(11.2 * NS_PER_S)
    assert h.node.counters["pose_failures"] == 0
