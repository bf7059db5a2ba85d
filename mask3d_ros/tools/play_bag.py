"""``mask3d-ros-play``: replay a rosbag2 (sqlite3 or mcap) into the ROS graph, as ``ros2 bag play``.

    mask3d-ros-play BAG [--rate 1.0] [--clock [HZ]] [--remap /from:=/to ...] [--loop]
        [--start-offset SEC] [--topics T ...] [--wait-for-subscribers N [--wait-timeout SEC]
        [--wait-topics T ...]] [--ros-args ...]

Messages are published as the raw CDR bytes stored in the bag (no decoding), one publisher per
topic: reliable, and transient-local for /tf_static or wherever the recorded publisher was. A
message is published when the wall clock reaches its log time on the bag's timeline, scaled by
``--rate`` (2 = twice as fast); the timeline starts at the first played message. A slow read
never drops messages: late ones go out at once. ``--clock`` publishes rosgraph_msgs/Clock on
/clock at HZ (default 40) with the playback time, and the log time of each message just before
it, so nodes with ``use_sim_time`` see the bag's time; with ``--loop`` the clock jumps back at each
pass. Topics whose type has no Python class here (tf2_msgs on a PyPI-only install) are skipped
with one warning. Before exiting, the player waits (5 s at most) until reliable subscribers have
acknowledged everything.

In-process use: ``BagPlayer(node, bag, ...)``, then ``wait_for_subscribers`` and ``play`` (blocking;
run it in a thread and call ``stop`` to interrupt), while an executor spins the subscribers.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import rclpy
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from tqdm import tqdm

from mask3d_ros.tools.bag import (
    NS_PER_S,
    BagMessage,
    bag_info,
    playback_qos,
    python_message_class,
    rclpy_qos,
    read_messages,
    split_stamp,
)

DEFAULT_CLOCK_HZ = 40.0
ACK_TIMEOUT_S = 5.0
ACK_POLL_S = 0.01
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"


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
    """Publishes a bag's messages on ``node`` as raw CDR, on the bag's timeline (see module docstring).

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


# --- command line ---------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def split_ros_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(our arguments, ROS arguments): the ROS ones run from ``--ros-args`` to ``--`` or the end.

    rclpy's own ``remove_ros_args`` is not used: it also takes bare ``a:=b`` words (the deprecated
    remap syntax), which would swallow ``--remap``'s value.
    """
    own, ros, inside = [], [], False
    for word in argv:
        if word == "--ros-args":
            inside = True
        elif inside and word == "--":
            inside = False
            continue
        (ros if inside else own).append(word)
    return own, ros


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-play", description="Replay a rosbag2 (sqlite3 or mcap) into the ROS graph as raw CDR.",
        epilog="ROS arguments go after --ros-args (e.g. --ros-args -r __node:=player).")
    parser.add_argument("bag", type=Path, help="rosbag2 folder, or a bare .mcap / .db3 file")
    parser.add_argument("--rate", type=_positive, default=1.0,
                        help="playback speed factor (default 1: original timing)")
    parser.add_argument("--clock", type=_positive, nargs="?", const=DEFAULT_CLOCK_HZ, metavar="HZ",
                        help=f"publish /clock for use_sim_time (default {DEFAULT_CLOCK_HZ:g} Hz when given)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="publish a bag topic under another name (repeatable)")
    parser.add_argument("--loop", action="store_true", help="play again from the start until interrupted")
    parser.add_argument("--start-offset", type=float, default=0.0, metavar="SEC",
                        help="skip the first SEC seconds of the bag")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these bag topics")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="before playing, wait until each played topic (or --wait-topics) has N subscribers")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="SEC",
                        help="give up waiting after SEC and play anyway (default 30)")
    parser.add_argument("--wait-topics", nargs="+", metavar="TOPIC", help="topics --wait-for-subscribers looks at")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        args.remap = parse_remaps(args.remap)
    except ValueError as error:
        parser.error(str(error))
    return args


def on_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM: the tools finish what they do and stop cleanly (no
    exception in the middle of a write), also when a shell started them in the background, which
    makes them ignore SIGINT."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: callback())


def main(argv: Sequence[str] | None = None) -> int:
    own, ros = split_ros_args(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    # Our signal handlers stop the player; rclpy's would shut the context down under its feet.
    rclpy.init(args=["mask3d-ros-play", *ros], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("mask3d_bag_player")
    player, bar, interrupted = None, None, threading.Event()
    try:
        player = BagPlayer(node, args.bag, rate=args.rate, topics=args.topics, remap=args.remap,
                           start_offset_s=args.start_offset, loop=args.loop, clock_hz=args.clock)

        def interrupt():
            interrupted.set()
            player.stop()

        on_signals(interrupt)
        if args.wait_for_subscribers > 0:
            player.wait_for_subscribers(args.wait_for_subscribers, args.wait_timeout, args.wait_topics)
        if not args.no_progress:
            total = None if args.loop or args.start_offset > 0 else sum(
                player.info.topics[name].message_count for name in player.output_topics)
            bar = tqdm(total=total, unit="msg", desc="playing", file=sys.stderr)
        player.play(None if bar is None else lambda _message: bar.update())
    except KeyboardInterrupt:  # Ctrl-C before our handlers were installed
        interrupted.set()
    finally:
        if bar is not None:
            bar.close()
        if player is not None:
            node.get_logger().info(("interrupted; " if interrupted.is_set() else "") + "published " + (", ".join(
                f"{count} on {player.output_topics[name]}" for name, count in player.published.items()) or "nothing"))
        node.destroy_node()
        rclpy.try_shutdown()
    return 130 if interrupted.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
