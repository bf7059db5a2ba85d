"""``mask3d-ros-make-bag``: write point-cloud frames as a rosbag2 (mcap) to replay into the node.

    mask3d-ros-make-bag OUT --synthetic [--frames 24] [--resolution 320x240] [--seed 0] [--ideal]
    mask3d-ros-make-bag OUT --files DIR_OR_FILE [...]        # .pcd / .ply, natural name order
        [--rate 2] [--start 1700000000] [--topic /camera/depth/color/points]
        [--frame-id camera_color_optical_frame] [--fixed-frame odom] [--base-frame base_link]
        [--odom-topic /odom] [--overwrite]

Every frame becomes one organised ``sensor_msgs/PointCloud2`` (x, y, z, packed float ``rgb``;
``intensity`` too when a file has it; NaN where nothing returned, ``is_dense`` false then) stamped
``start + i / rate``, logged at its stamp. Label fields of files are not copied into the clouds.

A synthetic sequence (a camera circling a table, from ``mask3d_ros.data.synthetic``) also carries its
poses, as a moving robot's drivers would publish them: ``/tf`` (tf2_msgs/TFMessage,
``fixed_frame -> base_frame`` per frame), ``/tf_static`` (``base_frame -> frame_id``, the fixed
camera mount ``scene_bags.CAMERA_MOUNT``, offered transient-local) and ``/odom`` (nav_msgs/Odometry
of ``base_frame`` in ``fixed_frame``, twist by finite differences, in the body frame); pose messages
of a frame are logged just before its cloud. The command prints the node parameters that use them
(``scene_bags.odometry_parameters``). Ground truth for scoring goes to ``OUT/ground_truth.npz``
(``mask3d_ros.tools.bag.GroundTruth``): always for synthetic frames, for files when every file
carries labels (mOSD ``label``, or our PLY ``semantic``/``instance``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from mask3d_ros.tools.bag import NS_PER_S
from mask3d_ros.tools.cli import positive, resolution, ros_value
from mask3d_ros.tools.scene_bags import BagLayout, odometry_parameters, write_files_bag, write_synthetic_bag


def _start_ns(text: str) -> int:
    if text == "now":
        return time.time_ns()
    try:
        return round(float(text) * NS_PER_S)
    except ValueError:
        raise argparse.ArgumentTypeError(f"start must be seconds since the epoch or 'now', not {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mask3d-ros-make-bag", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Ground truth for scoring is written to OUT/ground_truth.npz (see mask3d_ros.tools.bag.GroundTruth).")
    parser.add_argument("out", type=Path, help="bag folder to create (rosbag2, mcap storage)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="a camera circling a synthetic tabletop, with poses")
    source.add_argument("--files", nargs="+", metavar="PATH", help=".pcd/.ply files or folders of them")
    synthetic = parser.add_argument_group("synthetic sequence")
    synthetic.add_argument("--frames", type=int, default=24, help="number of frames (default 24)")
    synthetic.add_argument("--resolution", type=resolution, default=(320, 240), help="WIDTHxHEIGHT (default 320x240)")
    synthetic.add_argument("--seed", type=int, default=0, help="scene and noise seed (default 0)")
    synthetic.add_argument("--arc-degrees", type=float, default=360.0, help="arc the camera travels (default 360)")
    synthetic.add_argument("--ideal", action="store_true", help="no Kinect noise: exact surface points")
    defaults = BagLayout()
    layout = parser.add_argument_group("topics, frames and timing")
    layout.add_argument("--rate", type=positive, default=defaults.rate_hz,
                        help=f"frames per second (default {defaults.rate_hz:g})")
    layout.add_argument("--start", type=_start_ns, default=defaults.start_ns,
                        help="stamp of the first frame, seconds since the epoch or 'now' (default 1700000000)")
    layout.add_argument("--topic", default=defaults.points_topic, help=f"cloud topic (default {defaults.points_topic})")
    layout.add_argument("--frame-id", default=defaults.frame_id, help=f"cloud frame (default {defaults.frame_id})")
    layout.add_argument("--fixed-frame", default=defaults.fixed_frame,
                        help=f"world frame of the poses (default {defaults.fixed_frame})")
    layout.add_argument("--base-frame", default=defaults.base_frame,
                        help=f"moving body frame (default {defaults.base_frame})")
    layout.add_argument("--odom-topic", default=defaults.odom_topic,
                        help=f"odometry topic (default {defaults.odom_topic})")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is an existing bag")
    return parser.parse_args(argv)


def _clear_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    if not (out / "metadata.yaml").exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not a rosbag2 folder (no metadata.yaml); not removing it")
    shutil.rmtree(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _clear_output(args.out, args.overwrite)
    layout = BagLayout(args.topic, args.frame_id, args.fixed_frame, args.base_frame, args.odom_topic,
                       args.rate, args.start)
    started = time.monotonic()
    if args.synthetic:
        width, height = args.resolution
        print(f"rendering {args.frames} synthetic frames ({width}x{height}, seed {args.seed})", file=sys.stderr)
        truth = write_synthetic_bag(args.out, args.seed, args.frames, width, height, args.ideal, args.arc_degrees,
                                    layout, progress=True)
        print("node parameters for these poses: " + " ".join(
            f"-p {name}:={ros_value(value)}" for name, value in odometry_parameters(layout).items()), file=sys.stderr)
    else:
        truth = write_files_bag(args.out, args.files, layout, progress=True)
    labels = "ground truth in ground_truth.npz" if truth is not None else "no ground truth (not every file has labels)"
    print(f"wrote {args.out} in {time.monotonic() - started:.1f} s; {labels}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
