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

In-process use: ``mask3d_ros.tools.replay.BagRecorder``.
"""
from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from tqdm import tqdm

from mask3d_ros.tools.cli import on_signals, split_ros_args
from mask3d_ros.tools.replay import BagRecorder


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
