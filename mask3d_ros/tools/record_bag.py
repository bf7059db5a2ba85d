"""``mask3d-ros-record``: record topics of the ROS graph into an mcap rosbag2, as ``ros2 bag record``.

    mask3d-ros-record OUT TOPIC [TOPIC ...] [--duration SEC] [--max-messages N]
        [--storage mcap|sqlite3] [--ros-args -p use_sim_time:=true]

Each topic is subscribed raw (the CDR bytes are written as received, nothing is decoded) as soon
as a publisher of it appears in the graph, with the type the graph reports and a QoS every
publisher matches (best effort if any publisher is, transient-local if all are, so latched
messages such as /tf_static are caught); the publishers' offered QoS goes into the metadata.
Messages are logged at their receive time on the node's clock (sim time with ``use_sim_time``).
Recording stops after ``--duration`` seconds (wall clock, from the start), after ``--max-messages``
messages in all, or on Ctrl-C (SIGINT) or SIGTERM; the bag is closed cleanly (index and
metadata.yaml) every time.

In-process use: ``BagRecorder(node, bag, topics, ...)`` while an executor spins ``node``; wait for
``recorder.finished`` (or your own condition), then ``recorder.close()``.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from tqdm import tqdm

from mask3d_ros.tools.bag import NS_PER_S, BagWriter, python_message_class, rclpy_qos, recording_qos
from mask3d_ros.tools.play_bag import on_signals, split_ros_args

DISCOVERY_PERIOD_S = 0.1


def _enum_by_name(enum, value):
    return enum.__members__.get(value.name, enum.UNKNOWN)


def _qos_time(duration) -> QosTime:
    return QosTime(*divmod(duration.nanoseconds, NS_PER_S))


def bag_qos(profile) -> Qos:
    """rclpy QoSProfile -> the rosbags Qos stored as a topic's offered_qos_profiles."""
    return Qos(_enum_by_name(QosHistory, profile.history), profile.depth,
               _enum_by_name(QosReliability, profile.reliability), _enum_by_name(QosDurability, profile.durability),
               _qos_time(profile.deadline), _qos_time(profile.lifespan),
               _enum_by_name(QosLiveliness, profile.liveliness), _qos_time(profile.liveliness_lease_duration),
               bool(profile.avoid_ros_namespace_conventions))


class BagRecorder:
    """Records ``topics`` seen by ``node`` into a new bag (see module docstring).

    ``finished`` is set once ``max_messages`` (all topics together) or ``duration_s`` is reached;
    later messages are not written. ``counts`` holds the messages written per topic.
    """

    def __init__(self, node, bag_path: str | Path, topics: Sequence[str], *, max_messages: int | None = None,
                 duration_s: float | None = None, storage: str = "mcap"):
        if not topics:
            raise ValueError("name at least one topic to record")
        self.node = node
        self.topics = [node.resolve_topic_name(topic) for topic in topics]
        self.max_messages, self.duration_s = max_messages, duration_s
        self.finished = threading.Event()
        self.subscribed: dict[str, str] = {}  # topic -> message type
        self._unrecordable: set[str] = set()
        self._lock = threading.Lock()  # the writer: callbacks may run on several executor threads
        self._discover_lock = threading.Lock()  # discovery runs on the timer and in wait_until_subscribed
        self._writer = BagWriter(bag_path, storage)
        self._subscriptions = []
        self._started_s = time.monotonic()
        self._total = 0
        self.discover()
        self._timer = node.create_timer(DISCOVERY_PERIOD_S, self._on_timer)

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._writer.counts)

    def discover(self) -> bool:
        """Subscribe to the wanted topics that now have a publisher; True once all are subscribed."""
        with self._discover_lock:
            return self._discover()

    def _discover(self) -> bool:
        types_by_topic = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if topic in self.subscribed or topic in self._unrecordable or topic not in types_by_topic:
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            msgtype = types_by_topic[topic][0]
            if len(types_by_topic[topic]) > 1:
                self.node.get_logger().warning(f"{topic} is published with several types"
                                               f" {types_by_topic[topic]}; recording {msgtype}")
            message_class = python_message_class(msgtype)
            if message_class is None:
                self._unrecordable.add(topic)
                self.node.get_logger().warning(f"not recording {topic}: no Python class for {msgtype} here")
                continue
            offered = [bag_qos(info.qos_profile) for info in publishers]
            with self._lock:
                self._writer.add_topic(topic, msgtype, offered)
            self._subscriptions.append(self.node.create_subscription(
                message_class, topic, lambda data, topic=topic, msgtype=msgtype: self._on_message(topic, msgtype, data),
                rclpy_qos(recording_qos(offered)), raw=True))
            self.subscribed[topic] = msgtype
        return len(self.subscribed) + len(self._unrecordable) == len(self.topics)

    def wait_until_subscribed(self, timeout_s: float = 10.0) -> bool:
        """Poll the graph until every wanted topic is subscribed and matched to a publisher, so that
        nothing published from then on is missed (no spinning needed)."""
        deadline = time.monotonic() + timeout_s
        while not (self.discover() and all(sub.get_publisher_count() > 0 for sub in self._subscriptions)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _on_timer(self) -> None:
        if self.duration_s is not None and time.monotonic() - self._started_s >= self.duration_s:
            self.finished.set()
        if not self.finished.is_set():
            self.discover()

    def _on_message(self, topic: str, msgtype: str, data: bytes) -> None:
        log_time_ns = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self.finished.is_set():
                return
            self._writer.write(topic, msgtype, log_time_ns, data)
            self._total += 1
            if self.max_messages is not None and self._total >= self.max_messages:
                self.finished.set()

    def close(self) -> dict[str, int]:
        """Stop recording and write the bag's index and metadata; returns the count per topic."""
        self.finished.set()
        self.node.destroy_timer(self._timer)
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions.clear()
        with self._lock:
            self._writer.close()
            return dict(self._writer.counts)


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-record",
        description="Record topics of the ROS graph into a rosbag2 (raw CDR, no re-encoding).",
        epilog="ROS arguments go after --ros-args (e.g. --ros-args -p use_sim_time:=true to log in sim time).")
    parser.add_argument("out", type=Path, help="bag folder to create")
    parser.add_argument("topics", nargs="+", metavar="TOPIC", help="topics to record")
    parser.add_argument("--duration", type=float, metavar="SEC", help="stop after SEC seconds")
    parser.add_argument("--max-messages", type=int, metavar="N", help="stop after N messages in all")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage format (default mcap)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    own, ros = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new bag folder")
    # Our signal handlers end the recording; rclpy's would shut the context down under it.
    rclpy.init(args=["mask3d-ros-record", *ros], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("mask3d_bag_recorder")
    recorder = BagRecorder(node, args.out, args.topics, max_messages=args.max_messages,
                           duration_s=args.duration, storage=args.storage)
    interrupted = threading.Event()

    def interrupt():
        interrupted.set()
        recorder.finished.set()

    on_signals(interrupt)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    bar = None
    if not args.no_progress:
        bar = tqdm(total=args.max_messages, unit="msg", desc="recording", file=sys.stderr)
    try:
        while not recorder.finished.is_set():
            executor.spin_once(timeout_sec=0.1)
            if bar is not None:
                bar.update(sum(recorder.counts.values()) - bar.n)
    finally:
        counts = recorder.close()
        if bar is not None:
            bar.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    summary = ", ".join(f"{count} on {topic}" for topic, count in counts.items()) or "nothing"
    print(f"{'interrupted; ' if interrupted.is_set() else ''}wrote {args.out}: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
