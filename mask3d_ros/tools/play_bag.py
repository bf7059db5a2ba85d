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

In-process use: ``mask3d_ros.tools.replay.BagPlayer``.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Sequence

import rclpy
from rclpy.signals import SignalHandlerOptions
from tqdm import tqdm

from mask3d_ros.tools.cli import on_signals, positive, split_ros_args
from mask3d_ros.tools.replay import DEFAULT_CLOCK_HZ, BagPlayer, parse_remaps


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-play", description="Replay a rosbag2 (sqlite3 or mcap) into the ROS graph as raw CDR.",
        epilog="ROS arguments go after --ros-args (e.g. --ros-args -r __node:=player).")
    parser.add_argument("bag", type=Path, help="rosbag2 folder, or a bare .mcap / .db3 file")
    parser.add_argument("--rate", type=positive, default=1.0,
                        help="playback speed factor (default 1: original timing)")
    parser.add_argument("--clock", type=positive, nargs="?", const=DEFAULT_CLOCK_HZ, metavar="HZ",
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
