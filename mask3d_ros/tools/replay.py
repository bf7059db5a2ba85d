"""Bags and the live ROS graph, in process: :class:`BagPlayer` publishes a bag's messages on the
bag's timeline (with /clock for ``use_sim_time`` when asked), :class:`BagRecorder` writes what the
graph publishes into a new bag. Both move raw CDR bytes, nothing is decoded, on an rclpy node that
an executor spins; ``mask3d-ros-play`` and ``mask3d-ros-record`` describe what each does in detail.

Playing: ``BagPlayer(node, bag, ...)``, then ``wait_for_subscribers`` and ``play`` (blocking; run
it in a thread and call ``stop`` to interrupt). Recording: ``BagRecorder(node, bag, topics, ...)``;
wait for ``recorder.finished`` (or your own condition), then ``recorder.close()``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from mask3d_ros.tools.bag import (
    NS_PER_S,
    BagMessage,
    BagWriter,
    bag_info,
    playback_qos,
    python_message_class,
    rclpy_qos,
    read_messages,
    recording_qos,
    split_stamp,
)

DEFAULT_CLOCK_HZ = 40.0
ACK_TIMEOUT_S = 5.0
ACK_POLL_S = 0.01
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
DISCOVERY_PERIOD_S = 0.1


# --- playing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Bag log time <-> monotonic wall time: a bag second lasts ``1 / rate`` wall seconds."""

    bag_start_ns: int
    wall_start_s: float
    rate: float

    def due_s(self, log_time_ns: int) -> float:
        """Wall time at which a message logged at ``log_time_ns`` is published."""
        return self.wall_start_s + (log_time_ns - self.bag_start_ns) / NS_PER_S / self.rate

    def bag_time_ns(self, wall_s: float) -> int:
        """Playback time (bag log time) at wall time ``wall_s``."""
        return self.bag_start_ns + round((wall_s - self.wall_start_s) * self.rate * NS_PER_S)


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``["/a:=/b", ...]`` -> ``{"/a": "/b"}``; names without a leading slash get one."""
    remaps = {}
    for item in items:
        source, separator, target = item.partition(":=")
        if not separator or not source or not target:
            raise ValueError(f"remap {item!r} is not FROM:=TO")
        remaps["/" + source.lstrip("/")] = "/" + target.lstrip("/")
    return remaps


class BagPlayer:
    """Publishes a bag's messages on ``node`` as raw CDR, on the bag's timeline (see ``mask3d-ros-play``).

    ``topics``: bag topics to play (None: all). ``remap``: bag topic -> published topic.
    ``clock_hz``: publish /clock at this rate (None: no clock). Publishers are created here, so
    subscribers can be matched (:meth:`wait_for_subscribers`) before :meth:`play`.
    """

    def __init__(self, node, bag_path: str | Path, *, rate: float = 1.0, topics: Sequence[str] | None = None,
                 remap: Mapping[str, str] | None = None, start_offset_s: float = 0.0, loop: bool = False,
                 clock_hz: float | None = None):
        if not rate > 0 or rate == float("inf"):
            raise ValueError(f"rate must be a positive finite factor, not {rate}")
        if clock_hz is not None and not clock_hz > 0:
            raise ValueError(f"clock rate must be > 0 Hz, not {clock_hz}")
        self.node, self.bag_path = node, Path(bag_path)
        self.rate, self.start_offset_s, self.loop, self.clock_hz = rate, start_offset_s, loop, clock_hz
        self.info = bag_info(bag_path)
        unknown = set(topics or ()) - set(self.info.topics)
        if unknown:
            raise ValueError(f"{bag_path} has no topic {', '.join(sorted(unknown))};"
                             f" it has {', '.join(sorted(self.info.topics))}")
        selected = [self.info.topics[name] for name in (topics if topics is not None else sorted(self.info.topics))]
        remap = dict(remap or {})
        self.output_topics: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self._publishers = {}
        for topic in selected:
            message_class = python_message_class(topic.msgtype)
            if message_class is None:
                self.skipped[topic.name] = topic.msgtype
                continue
            self.output_topics[topic.name] = remap.get(topic.name, topic.name)
            self._publishers[topic.name] = node.create_publisher(
                message_class, self.output_topics[topic.name], rclpy_qos(playback_qos(topic)))
        if self.skipped:
            node.get_logger().warning(
                "skipping topics whose message type has no Python class in this environment: "
                + ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(self.skipped.items()))
                + ". Install the message packages (e.g. ros-$ROS_DISTRO-tf2-msgs) or source a ROS 2 setup"
                " to play them.")
        self._clock_publisher = self._make_clock_publisher() if clock_hz is not None else None
        self._last_clock_ns = None
        self._stop = threading.Event()
        self.published: dict[str, int] = {name: 0 for name in self._publishers}

    def _make_clock_publisher(self):
        clock_class = python_message_class(CLOCK_TYPE)
        if clock_class is None:
            raise ImportError(f"--clock needs {CLOCK_TYPE} (ros-$ROS_DISTRO-rosgraph-msgs)")
        self._clock_message = clock_class()
        # Reliable keeps every subscriber matched (time sources subscribe best effort, depth 1).
        return self.node.create_publisher(
            clock_class, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))

    # --- control ------------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`play` return soon and for good (from any thread); call it before shutting rclpy down."""
        self._stop.set()

    def wait_for_subscribers(self, count: int = 1, timeout_s: float = 10.0,
                             topics: Sequence[str] | None = None) -> bool:
        """Wait until each of ``topics`` (bag or published names; None: all played) has ``count``
        matched subscribers. False, with a warning naming the topics still short, at the timeout."""
        names = list(self._publishers) if topics is None else [self._bag_topic(name) for name in topics]
        deadline = time.monotonic() + timeout_s
        while True:
            short = [name for name in names if self._publishers[name].get_subscription_count() < count]
            if not short:
                return True
            if time.monotonic() >= deadline or self._stop.wait(0.05):
                self.node.get_logger().warning(
                    f"playing although fewer than {count} subscribers after {timeout_s:g} s on: "
                    + ", ".join(self.output_topics[name] for name in short))
                return False

    def _bag_topic(self, name: str) -> str:
        if name in self._publishers:
            return name
        for bag_topic, output in self.output_topics.items():
            if output == name:
                return bag_topic
        raise ValueError(f"{name} is not a played topic; played: {', '.join(self.output_topics.values())}")

    # --- playback -----------------------------------------------------------------------

    def play(self, on_message: Callable[[BagMessage], None] | None = None) -> dict[str, int]:
        """Publish the bag (every pass with ``loop``) until its end or :meth:`stop`; blocking.

        ``on_message`` is called after each publish (progress). Returns the published count per
        bag topic, over all passes so far.
        """
        while not self._stop.is_set():
            self._play_once(on_message)
            if not self.loop:
                break
        if self.node.context.ok():
            self.flush()
        return dict(self.published)

    def _play_once(self, on_message) -> None:
        timeline = None
        self._last_clock_ns = None
        for message in read_messages(self.bag_path, list(self._publishers), self.start_offset_s):
            if timeline is None:
                timeline = Timeline(message.log_time_ns, time.monotonic(), self.rate)
            if not self._wait_until(timeline.due_s(message.log_time_ns), timeline, message.log_time_ns):
                return
            self._publish_clock(message.log_time_ns)
            self._publishers[message.topic].publish(message.data)
            self.published[message.topic] += 1
            if on_message is not None:
                on_message(message)

    def _wait_until(self, due_s: float, timeline: Timeline, next_log_ns: int) -> bool:
        """Sleep until ``due_s``, ticking /clock meanwhile (never past the next message); False if stopped."""
        period = None if self._clock_publisher is None else 1.0 / self.clock_hz
        while True:
            if not self.node.context.ok():
                self._stop.set()
            now = time.monotonic()
            if now >= due_s:
                return not self._stop.is_set()
            wake = due_s if period is None else min(due_s, now + period)
            if self._stop.wait(wake - now):
                return False
            if period is not None:
                self._publish_clock(min(timeline.bag_time_ns(time.monotonic()), next_log_ns))

    def _publish_clock(self, time_ns: int) -> None:
        """Publish the playback time; it never goes back within a pass."""
        if self._clock_publisher is None:
            return
        time_ns = time_ns if self._last_clock_ns is None else max(time_ns, self._last_clock_ns)
        self._last_clock_ns = time_ns
        self._clock_message.clock.sec, self._clock_message.clock.nanosec = split_stamp(time_ns)
        self._clock_publisher.publish(self._clock_message)

    def flush(self, timeout_s: float = ACK_TIMEOUT_S) -> bool:
        """Wait until reliable subscribers acknowledged everything published (bounded by ``timeout_s``).

        Polled in short waits: rclpy holds the GIL inside ``wait_for_all_acked``, so one long wait
        would stall every other thread of this process (an in-process recorder received late)."""
        deadline = time.monotonic() + timeout_s
        pending = list(self._publishers.values())
        while pending and time.monotonic() < deadline:
            pending = [publisher for publisher in pending
                       if not publisher.wait_for_all_acked(Duration(seconds=ACK_POLL_S))]
            time.sleep(ACK_POLL_S)  # the GIL is free here
        return not pending

    def destroy(self) -> None:
        for publisher in [*self._publishers.values(), self._clock_publisher]:
            if publisher is not None:
                self.node.destroy_publisher(publisher)
        self._publishers.clear()


# --- recording -------------------------------------------------------------------------------



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
    """Records ``topics`` seen by ``node`` into a new bag (see ``mask3d-ros-record``).

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
        self._closed = False
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
        if self._closed:
            return False
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
        """Stop recording and write the bag's index and metadata; returns the count per topic.

        Safe while the discovery timer runs in the executor's thread: it waits for a discovery in
        progress, and none starts afterwards (one adding a topic to the closed writer would raise in
        the executor and stop it)."""
        self.finished.set()
        with self._discover_lock:
            self._closed = True
            self.node.destroy_timer(self._timer)
            for subscription in self._subscriptions:
                self.node.destroy_subscription(subscription)
            self._subscriptions.clear()
        with self._lock:
            self._writer.close()
            return dict(self._writer.counts)
