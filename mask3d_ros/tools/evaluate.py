"""``mask3d-ros-eval``: ScanNet-benchmark AP / AP50 / AP25 of the model or the baseline on labelled frames.

    mask3d-ros-eval --checkpoint W.ckpt [--preset scannet] --dataset mosd FRAMES... [--json OUT.json]
    mask3d-ros-eval --baseline --dataset mosd ../shared/data/mosd/val --json baseline.json

FRAMES are files or folders (a folder stands for its ``*.pcd`` / ``*.ply`` / ``*.npz`` files, or
is one ScanNet scene). Prints a markdown table (per class, mean over classes, class-agnostic);
``--json`` writes ``AP``, ``AP50``, ``AP25``, ``classes`` and ``class_agnostic`` plus what was run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from mask3d_ros.data.datasets import DATASETS, Scene, load_scene
from mask3d_ros.evaluation import baseline
from mask3d_ros.evaluation.ap import MIN_REGION_SIZE, APResult, average_precision, frame_overlaps
from mask3d_ros.evaluation.predictions import InstancePredictions, from_voxel_segmentation
from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.model.segmenter import Segmenter
from mask3d_ros.tools.cli import natural_key

_EXTENSIONS = {"mosd": ".pcd", "ply": ".ply", "npz": ".npz"}


class SegmenterPredictor:
    """``predict_scene`` for a Mask3D checkpoint: the Segmenter's instances as point masks, with
    the model's class names mapped to the scene's (names the scene lacks become class -1, which
    the evaluator ignores). ``disjoint`` scores the instances as the node publishes them: each point
    in at most one, the highest-scored instance covering it (official Mask3D masks may overlap)."""

    def __init__(self, checkpoint: str, preset: str | None = None, device: str = "auto", disjoint: bool = False,
                 **post_processing):
        self.segmenter = Segmenter(preset, checkpoint, device=device, **post_processing)
        self.disjoint = disjoint

    def predict_scene(self, scene: Scene) -> InstancePredictions:
        segmentation = self.segmenter.segment(scene.xyz, scene.rgb)
        return from_voxel_segmentation(segmentation, self.segmenter.preset.class_names, scene.class_names,
                                       self.disjoint)


def expand_frames(paths: Iterable[str | Path], dataset: str) -> list[Path]:
    """Files (and ScanNet scene folders) named by ``paths``, folders expanded, in sorted order.

    With ``dataset`` "auto" a folder is a ScanNet scene when it holds a ``*_vh_clean_2*.ply`` mesh,
    and otherwise a folder of frames of any known format."""
    frames = []
    for path in map(Path, paths):
        if path.is_dir() and dataset in _EXTENSIONS:
            frames += sorted(path.glob(f"*{_EXTENSIONS[dataset]}"), key=natural_key)
        elif path.is_dir() and dataset == "auto" and not any(path.glob("*_vh_clean_2*.ply")):
            frames += sorted((frame for extension in _EXTENSIONS.values() for frame in path.glob(f"*{extension}")),
                             key=natural_key)
        else:
            frames.append(path)
    return frames


def evaluate_scenes(
    frames: Iterable[Path],
    dataset: str,
    predict: Callable[[Scene], InstancePredictions],
    min_region_size: int = MIN_REGION_SIZE,
    progress: Callable[[str], None] = lambda message: None,
    **load_options,
) -> APResult:
    """Load, predict and match frame by frame (only overlap counts are kept), then compute AP."""
    overlaps, first = [], None
    for frame in frames:
        scene = load_scene(frame, dataset, **load_options)
        if first is None:
            first = scene
        elif (scene.class_names, scene.instance_classes) != (first.class_names, first.instance_classes):
            raise ValueError(f"{frame}: classes {scene.class_names} differ from {first.name}'s {first.class_names}")
        start = time.perf_counter()
        predictions = predict(scene)
        overlaps.append(frame_overlaps(scene.semantic, scene.instance, predictions, scene.instance_class_ids,
                                       min_region_size))
        progress(f"{scene.name}: {len(predictions.scores)} instances in {time.perf_counter() - start:.2f} s")
    if first is None:
        raise ValueError("no frames to evaluate")
    return average_precision(overlaps, first.class_names, first.instance_class_ids, min_region_size)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask3d-ros-eval", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--checkpoint", help="Mask3D checkpoint (default: the bundled tabletop model; ours describe "
                      "themselves, official ones need --preset)")
    what.add_argument("--baseline", action="store_true", help="the classical RANSAC + DBSCAN baseline")
    parser.add_argument("--preset", help="preset of an official checkpoint: scannet, scannet200, s3dis, stpls3d")
    parser.add_argument("--device", default="auto", help="torch device for the model (default auto)")
    parser.add_argument("--dbscan-eps", type=float, help="override the checkpoint's DBSCAN distance (m; 0: off)")
    parser.add_argument("--disjoint", action="store_true", help="score each point in at most one instance "
                        "(the highest scored), as the node publishes them; default: overlapping masks, as officially")
    parser.add_argument("--smooth-radius", type=float, help="override the checkpoint's mask smoothing radius "
                        "(m; 0: off)")
    parser.add_argument("--dataset", choices=(*DATASETS, "auto"), default="auto",
                        help="frame format (default: guessed from the file name)")
    parser.add_argument("--label-map", type=Path, help="ScanNet: JSON {raw category: class name}")
    parser.add_argument("--min-region-size", type=int, default=MIN_REGION_SIZE,
                        help=f"smallest ground truth / prediction counted, in points (default {MIN_REGION_SIZE})")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("frames", nargs="+", help="frame files or folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.label_map and args.dataset not in ("scannet", "auto"):
        parser.error("--label-map applies to ScanNet scenes only")
    frames = expand_frames(args.frames, args.dataset)
    if not frames:
        print("mask3d-ros-eval: no frames found", file=sys.stderr)
        return 2
    if args.baseline:
        predict, predictor = baseline.predict_scene, "baseline"
    else:
        checkpoint = args.checkpoint or str(bundled_checkpoint())
        overrides = {name: getattr(args, name) for name in ("dbscan_eps", "smooth_radius")
                     if getattr(args, name) is not None}
        predict = SegmenterPredictor(checkpoint, args.preset, args.device, args.disjoint, **overrides).predict_scene
        predictor = checkpoint + "".join(f", {name} {value:g}" for name, value in overrides.items())
        predictor += ", disjoint" if args.disjoint else ""
    options = {"label_map": json.loads(args.label_map.read_text())} if args.label_map else {}
    start = time.perf_counter()
    result = evaluate_scenes(frames, args.dataset, predict, args.min_region_size,
                             progress=lambda message: print(message, file=sys.stderr, flush=True), **options)
    print(f"{len(frames)} frames, {predictor}, {time.perf_counter() - start:.1f} s\n")
    print(result.format_table())
    if args.json:
        report = {**result.to_json(), "frames": [str(frame) for frame in frames], "predictor": predictor,
                  "min_region_size": args.min_region_size}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
