"""``mask3d-ros-segment``: segment one PCD/PLY scene offline and write the labelled cloud.

    mask3d-ros-segment SCENE.pcd --preset scannet200 --checkpoint W.ckpt --out OUT.ply \\
        [--png OUT.png] [--queries N] [--mode instance|semantic|panoptic] [--device auto] \\
        [--dump-raw RAW.npz]

OUT.ply holds every input point (an organised cloud keeps its grid) with its colour and
``label`` (dataset label id, -1 = none), ``instance`` (index into the score-sorted instances,
-1 = none) and ``score``. Points without finite x, y, z are kept with label and instance -1.
The PNG is drawn off-screen (matplotlib, Agg): the cloud projected on its two main axes, in its
own colours and by instance. ``--dump-raw`` writes the network's raw output for debugging.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mask3d_ros.data.colors import colors_from_points
from mask3d_ros.data.pointfile import PointFileError, read_point_file, write_ply
from mask3d_ros.model.checkpoint import CheckpointError
from mask3d_ros.model.files import ModelError, bundled_checkpoint
from mask3d_ros.model.segmenter import Segmenter

GREY = 128


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_scene(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(points, xyz, rgb, valid)``: the file's records, and xyz/rgb of the finite points."""
    table = read_point_file(path)
    points = table.grid() if table.is_organized else table.points
    flat = points.reshape(-1)
    missing = [axis for axis in "xyz" if axis not in flat.dtype.names]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} field (fields: {list(flat.dtype.names)})")
    xyz = np.stack([flat[axis] for axis in "xyz"], axis=1).astype(np.float32)
    valid = np.isfinite(xyz).all(1)
    rgb = colors_from_points(flat, valid)
    if rgb is None:
        _progress("warning: the scene has no colour; using grey, which the released models never saw")
        rgb = np.full((int(valid.sum()), 3), GREY, np.uint8)
    return points, xyz[valid], rgb.reshape(-1, 3), valid


def labelled_points(points: np.ndarray, valid: np.ndarray, result, class_names) -> np.ndarray:
    """The output records: x, y, z, colour, label, instance, score (the input's shape)."""
    flat = points.reshape(-1)
    out = np.zeros(flat.shape, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                         ("blue", "u1"), ("label", "<i4"), ("instance", "<i4"), ("score", "<f4")]))
    for axis in "xyz":
        out[axis] = flat[axis]
    rgb = colors_from_points(flat)
    if rgb is not None:
        out["red"], out["green"], out["blue"] = rgb.reshape(-1, 3).T
    out["label"], out["instance"] = -1, -1
    out["label"][valid] = result.point_label
    out["instance"][valid] = result.point_instance
    out["score"][valid] = result.point_score
    return out.reshape(points.shape)


def _principal_projection(xyz: np.ndarray) -> np.ndarray:
    """2D coordinates on the cloud's two main axes (a top view of a room, a front view of a frame)."""
    centred = xyz - xyz.mean(0)
    _, _, axes = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    return centred @ axes[:2].T


def render_png(path: Path, xyz: np.ndarray, rgb: np.ndarray, result, class_names, max_points: int = 200_000) -> None:
    """Two panels, input colours and instances (legend: the largest ones), drawn with no display."""
    import matplotlib  # noqa: PLC0415 - optional: only --png draws, and pyplot needs its backend chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the backend choice

    step = max(1, len(xyz) // max_points)
    uv = _principal_projection(xyz)[::step]
    instance = result.point_instance[::step]
    palette = plt.get_cmap("tab20")(np.arange(20))[:, :3]
    colours = np.full((len(uv), 3), 0.8)
    colours[instance >= 0] = palette[instance[instance >= 0] % 20]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 7), dpi=100)
    for axis, shown, title in ((left, rgb[::step] / 255.0, "input"),
                               (right, colours, f"{result.num_instances} instances ({result.mode})")):
        axis.scatter(uv[:, 0], uv[:, 1], c=shown, s=0.5, linewidths=0, rasterized=True)
        axis.set_aspect("equal")
        axis.set_title(title)
        axis.axis("off")
    sizes = np.bincount(instance[instance >= 0], minlength=result.num_instances)
    for j in np.argsort(-sizes)[: min(10, np.count_nonzero(sizes))]:
        right.scatter([], [], s=30, color=palette[j % 20],
                      label=f"{class_names[result.class_ids[j]]} {result.scores[j]:.2f}")
    if sizes.any():
        right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask3d-ros-segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path, help="input .pcd or .ply with x, y, z and colour")
    parser.add_argument("--preset", help="scannet, scannet200, s3dis or stpls3d (optional when the "
                        "checkpoint describes itself)")
    parser.add_argument("--checkpoint", type=Path, help="Lightning .ckpt or state dict (default: the bundled "
                        "tabletop model, unless --preset or --random-weights is given)")
    parser.add_argument("--out", type=Path, required=True, help="output .ply")
    parser.add_argument("--png", type=Path, help="also draw the instances into this PNG")
    parser.add_argument("--queries", type=int, help="number of queries (preset's eval value by default)")
    parser.add_argument("--mode", choices=("instance", "semantic", "panoptic"), default="instance")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--half", action="store_true", help="float16 network on CUDA")
    parser.add_argument("--topk", type=int, help="top-k (query, class) pairs (instance mode)")
    parser.add_argument("--dbscan-eps", type=float, help="DBSCAN radius in metres; 0 disables (instance mode)")
    parser.add_argument("--score-threshold", type=float, default=0.0, help="drop instances scoring less")
    parser.add_argument("--min-points", type=int, default=0, help="drop instances with fewer points")
    parser.add_argument("--dump-raw", type=Path, help="write voxel coords, fps indices, logits and masks (.npz)")
    parser.add_argument("--random-weights", action="store_true", help="no checkpoint: random weights (testing only)")
    return parser


def run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    if args.checkpoint is None and args.preset is None and not args.random_weights:
        args.checkpoint = bundled_checkpoint()
    _progress(f"[1/4] reading {args.scene}")
    points, xyz, rgb, valid = read_scene(args.scene)
    _progress(f"      {len(xyz):,} points with finite xyz of {valid.size:,}")
    _progress(f"[2/4] loading {args.checkpoint or 'random weights'} on {args.device}")
    segmenter = Segmenter(args.preset, args.checkpoint, device=args.device, half=args.half, mode=args.mode,
                          num_queries=args.queries, topk=args.topk, dbscan_eps=args.dbscan_eps,
                          score_threshold=args.score_threshold, min_points=args.min_points,
                          random_weights=args.random_weights)
    preset = segmenter.preset
    _progress(f"[3/4] segmenting: preset {preset.name}, {preset.model.num_queries} queries, mode {args.mode}, "
              f"device {segmenter.device}")
    result, raw = segmenter.segment(xyz, rgb, return_raw=True)
    timing = ", ".join(f"{stage} {ms:.0f} ms" for stage, ms in result.timings_ms.items())
    _progress(f"      {len(raw['voxel_coords']):,} voxels, {result.num_instances} instances ({timing})")
    _progress(f"[4/4] writing {args.out}")
    write_ply(args.out, labelled_points(points, valid, result, preset.class_names))
    if args.png:
        render_png(args.png, xyz, rgb, result, preset.class_names)
        _progress(f"      picture {args.png}")
    if args.dump_raw:
        np.savez_compressed(args.dump_raw, point_index=np.flatnonzero(valid.reshape(-1)), **raw)
        _progress(f"      raw output {args.dump_raw}")
    for j in range(min(10, result.num_instances)):
        size = int(result.masks[:, j].sum())
        print(f"{j:4d}  {preset.class_names[result.class_ids[j]]:<24} score {result.scores[j]:.3f}  {size} voxels")
    _progress(f"done in {time.perf_counter() - began:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        return run(args)
    except (CheckpointError, ModelError, PointFileError, ValueError, OSError) as err:
        print(f"mask3d-ros-segment: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
