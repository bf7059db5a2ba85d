"""Model forward (voxelize, backbone, decoder, post-processing) and its peak memory.

Every configuration runs in a child process of its own (``mask3d-ros-bench --child SPEC``), so its
peak memory is its own: the growth of the resident-set high-water mark over one cold forward
(VmHWM reset just before it on Linux; ``getrusage`` elsewhere; tracemalloc does not see torch's
allocations), and on CUDA ``torch.cuda.max_memory_allocated``. Inputs are a synthetic room seen
from inside (floor, walls, furniture; scan-like order, 2-3 points per voxel) scaled so that it
voxelizes to about the requested voxel count at the model's own voxel size.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from mask3d_ros.model.backends import minkowski_version
from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.model.segmenter import Segmenter
from mask3d_ros.model.voxel import voxelize
from mask3d_ros.tools.bench.core import Row, race

MODELS = {
    "tabletop": "bundled tabletop model (Res16UNet14A x0.5, 64 queries, smoothing + DBSCAN)",
    "scannet": "ScanNet Mask3D (Res16UNet34C, 150 queries, random weights, no DBSCAN)",
}
STAGES = ("voxelize", "backbone", "decoder", "post")
CHILD_TIMEOUT_S = 1800


# --- inputs -------------------------------------------------------------------------------------

# A 5 x 4 x 2.5 m room: (origin, u, v) rectangles, floor and three walls, then furniture boxes.
_ROOM_BOXES = (((0.5, 0.5, 0), (1.6, 0.8, 0.75)), ((3, 1, 0), (0.5, 0.5, 0.45)),
               ((3.2, 3.3, 0), (1.6, 0.6, 2.0)), ((0.8, 2.6, 0), (1.8, 0.9, 0.5)))


def _room_planes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The room's surfaces as rectangles."""
    def rect(origin, u, v):
        return np.asarray(origin, float), np.asarray(u, float), np.asarray(v, float)

    planes = [rect((0, 0, 0), (5, 0, 0), (0, 4, 0)), rect((0, 0, 0), (5, 0, 0), (0, 0, 2.5)),
              rect((0, 0, 0), (0, 4, 0), (0, 0, 2.5)), rect((5, 0, 0), (0, 4, 0), (0, 0, 2.5))]
    for corner, (x, y, z) in _ROOM_BOXES:
        c = np.asarray(corner, float)
        planes += [rect(c + (0, 0, z), (x, 0, 0), (0, y, 0)), rect(c, (x, 0, 0), (0, 0, z)),
                   rect(c + (0, y, 0), (x, 0, 0), (0, 0, z)), rect(c, (0, y, 0), (0, 0, z)),
                   rect(c + (x, 0, 0), (0, y, 0), (0, 0, z))]
    return planes


def room_scene(target_voxels: int, voxel_size: float, seed: int = 0,
               points_per_voxel: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(xyz float32 [N, 3], rgb uint8 [N, 3]) of the room scaled to about ``target_voxels`` voxels.

    A surface one voxel thick covers about area / voxel_size^2 voxels, which sets the scale.
    Points are sampled surface by surface (locally coherent, as a scan) with one colour each.
    """
    rng = np.random.default_rng(seed)
    planes = _room_planes()
    areas = np.array([np.linalg.norm(u) * np.linalg.norm(v) for _, u, v in planes])
    scale = voxel_size * np.sqrt(target_voxels / areas.sum())
    counts = np.maximum(1, np.round(areas / areas.sum() * target_voxels * points_per_voxel)).astype(int)
    xyz, rgb = [], []
    for (origin, u, v), count in zip(planes, counts):
        st = rng.random((count, 2))
        xyz.append((origin + st[:, :1] * u + st[:, 1:] * v) * scale)
        base = rng.integers(30, 225, 3)
        rgb.append(np.clip(base + rng.normal(0, 12, (count, 3)), 0, 255))
    points = np.concatenate(xyz)
    points += rng.normal(0, 0.1 * voxel_size, points.shape)
    points -= points.mean(axis=0)  # sensor-centred: negative coordinates too
    return points.astype(np.float32), np.concatenate(rgb).astype(np.uint8)


# --- memory --------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_growth_mb(run) -> float:
    """MB the resident set's high-water mark rose above the current RSS during ``run()``."""
    import psutil  # noqa: PLC0415 - optional: only this row needs it, and it is not a dependency

    before = psutil.Process().memory_info().rss
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
        reset = True
    except OSError:
        reset = False
    run()
    if reset and _status_kib("VmHWM") is not None:
        peak = _status_kib("VmHWM") * 1024
    else:  # ru_maxrss is the lifetime peak: exact only when this forward set it
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(0.0, (peak - before) / 2**20)


# --- what a child process runs ----------------------------------------------------------------


def build_segmenter(model: str, device: str = "cpu", half: bool = False, backend: str = "torch"):
    """The bundled tabletop model or the ScanNet preset architecture with random weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        if model == "tabletop":
            return Segmenter(None, bundled_checkpoint(), device=device, half=half, backend=backend)
        if model == "scannet":
            # DBSCAN off: random weights make every mask cover much of the scene, and splitting 500 of
            # them costs ten times the network (17 s at 10k voxels), which a trained model never pays.
            return Segmenter("scannet", device=device, half=half, random_weights=True, dbscan_eps=0, backend=backend)
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _stage_medians(timings: list[dict]) -> dict[str, float]:
    return {stage: statistics.median(t[stage] for t in timings) for stage in STAGES if all(stage in t for t in timings)}


def model_child(spec: dict) -> dict:
    """One model at one size: the cold forward's peak memory, then timings per variant.

    CPU variants: all threads and one thread (interleaved), or with ``spec["backend"]`` all threads
    on that sparse backend alone; CUDA: float32 and half precision.
    """
    threads = torch.get_num_threads()
    if spec["device"] == "cpu":
        segmenters = {"all_threads": build_segmenter(spec["model"], backend=spec.get("backend", "torch"))}
        if "backend" not in spec:
            segmenters["one_thread"] = segmenters["all_threads"]
    else:
        segmenters = {"fp32": build_segmenter(spec["model"], spec["device"]),
                      "fp16": build_segmenter(spec["model"], spec["device"], half=True)}
    first = next(iter(segmenters.values()))
    xyz, rgb = room_scene(spec["voxels"], first.preset.voxel_size)
    stages: dict[str, list[dict]] = {name: [] for name in segmenters}

    def forward(name: str):
        def run():
            if spec["device"] == "cpu":
                torch.set_num_threads(1 if name == "one_thread" else threads)
            stages[name].append(dict(segmenters[name].segment(xyz, rgb).timings_ms))
        return run

    result = {"points": len(xyz), "voxels": len(voxelize(xyz, first.preset.voxel_size)[0]), "threads": threads}
    if spec["device"] == "cpu":
        result["peak_rss_mb"] = peak_rss_growth_mb(forward("all_threads"))
    else:
        result["peak_gpu_mb"] = {}
        for name in segmenters:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            forward(name)()
            result["peak_gpu_mb"][name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    for values in stages.values():
        values.clear()
    result["times_ms"] = race({name: forward(name) for name in segmenters}, spec["repeats"], warmup=False)
    result["stages_ms"] = {name: _stage_medians(values) for name, values in stages.items()}
    result["post_runs_ms"] = {name: [(t["post"], t["total"]) for t in values] for name, values in stages.items()}
    return result


def child_main(spec_json: str) -> int:
    """Entry of ``--child``: run one spec, print its result as the last stdout line."""
    spec = json.loads(spec_json)
    result = model_child(spec)
    print(json.dumps(result))
    return 0


def run_child(spec: dict, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
    """Run ``spec`` in a fresh interpreter; its JSON result."""
    command = [sys.executable, "-m", "mask3d_ros.tools.bench", "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- rows ----------------------------------------------------------------------------------------


def _stages_note(stages: dict) -> str:
    values = "/".join(f"{stages[s]:.0f}" for s in STAGES if s in stages)
    return "median stages " + "/".join(STAGES[:len(stages)]) + ": " + values + " ms"


POST_BASELINE = "whole forward, same runs (median)"
POST_GOAL = 0.15  # issue 16: the post stage within 15 % of the forward at every size


def post_stage_row(model: str, result: dict, variant: str, setting: str) -> Row:
    """The post stage (smoothing, DBSCAN split, scoring: Segmenter's ``post`` timing) against the
    whole forward (its ``total``), medians over the same timed runs of ``variant``."""
    runs = result["post_runs_ms"][variant]
    post, total = statistics.median(p for p, _ in runs), statistics.median(t for _, t in runs)
    share = post / total
    return Row(
        f"post stage: {MODELS[model]}, {result['voxels']:,} voxels, {setting}", post, "ms", POST_BASELINE, total,
        f"median of {len(runs)}; post = {100 * share:.1f} % of the forward"
        f" ({'within' if share <= POST_GOAL else 'above'} the {100 * POST_GOAL:.0f} % goal)",
        extra={"model": model, "voxels": result["voxels"], "variant": variant, "post_share": share,
               "post_runs_ms": runs})


def cpu_model_rows(model: str, voxels: int, repeats: int) -> list[Row]:
    """The model on CPU, all threads against one thread; then its post stage against the forward with
    one thread, as the node runs (``OMP_NUM_THREADS=1``) and steady on a shared machine."""
    result = run_child({"kind": "model", "model": model, "voxels": voxels, "device": "cpu", "repeats": repeats})
    times, threads = result["times_ms"], result["threads"]
    return [Row(
        f"{MODELS[model]}: forward, {result['voxels']:,} voxels, CPU, torch backend, {threads} threads",
        min(times["all_threads"]), "ms", "same, 1 thread", min(times["one_thread"]),
        f"{result['points']:,} points; best of {repeats}; {_stages_note(result['stages_ms']['all_threads'])};"
        " RSS growth over the cold forward", result["peak_rss_mb"],
        extra={"model": model, "voxels": result["voxels"], "points": result["points"], "device": "cpu",
               "threads": threads, "stages_ms": result["stages_ms"], "times_ms": times}),
        post_stage_row(model, result, "one_thread", "CPU, 1 thread")]


def cuda_model_rows(model: str, voxels: int, repeats: int) -> list[Row]:
    """The model on CUDA, half precision against float32 (peak memory: GPU allocations); then the
    post stage against the forward, both precisions."""
    result = run_child({"kind": "model", "model": model, "voxels": voxels, "device": "cuda", "repeats": repeats})
    times, gpu = result["times_ms"], result["peak_gpu_mb"]
    return [Row(
        f"{MODELS[model]}: forward, {result['voxels']:,} voxels, CUDA, half precision",
        min(times["fp16"]), "ms", "same, float32", min(times["fp32"]),
        f"best of {repeats}; {_stages_note(result['stages_ms']['fp16'])}; peak GPU memory fp16 {gpu['fp16']:.0f} MB"
        f" vs fp32 {gpu['fp32']:.0f} MB (RSS column: not measured on CUDA)", None,
        extra={"model": model, "voxels": result["voxels"], "device": "cuda", "peak_gpu_mb": gpu,
               "stages_ms": result["stages_ms"], "times_ms": times}),
        post_stage_row(model, result, "fp16", "CUDA, half precision"),
        post_stage_row(model, result, "fp32", "CUDA, float32")]


def minkowski_rows(model: str, voxels: int, repeats: int) -> list[Row]:
    """The whole model on the torch backend against the same model on MinkowskiEngine (same
    weights, input and threads), each backend in a child process of its own."""
    spec = {"kind": "model", "model": model, "voxels": voxels, "device": "cpu", "repeats": repeats}
    ours, theirs = run_child({**spec, "backend": "torch"}), run_child({**spec, "backend": "minkowski"})
    return [Row(
        f"{MODELS[model]}: forward, {ours['voxels']:,} voxels, CPU, torch backend, {ours['threads']} threads",
        min(ours["times_ms"]["all_threads"]), "ms", f"MinkowskiEngine {minkowski_version()} backend, same model,"
        " input and threads", min(theirs["times_ms"]["all_threads"]),
        f"best of {repeats}; {_stages_note(ours['stages_ms']['all_threads'])}; MinkowskiEngine"
        f" {_stages_note(theirs['stages_ms']['all_threads'])}, peak RSS growth {theirs['peak_rss_mb']:.0f} MB",
        ours["peak_rss_mb"],
        extra={"model": model, "voxels": ours["voxels"], "baseline_peak_rss_mb": theirs["peak_rss_mb"],
               "stages_ms": ours["stages_ms"], "baseline_stages_ms": theirs["stages_ms"]})]
