#!/usr/bin/env python3
"""Benchmark the pure-PyTorch sparse engine against MinkowskiEngine (when installed), same process.

Prints a markdown table: one 3x3x3 64->64 convolution (scan-like surface and uniform inputs,
neighbour map cached / including the map build / forward+backward) and the Res16UNet34C backbone
forward (parity input and a ~167k-voxel synthetic room), best of N interleaved runs because the machine is
noisy. Peak memory of a backbone forward is measured in a fresh subprocess per backend as the
growth of the resident-set high-water mark (VmHWM, reset just before the forward; tracemalloc
does not see torch or ME allocations).

    python scripts/bench_sparse.py [--repeats 10] [--threads 2] [--parity-dir ../shared/fixtures/mask3d_parity]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def _threads_from_argv(default: int = 2) -> int:
    """`--threads N` is needed before torch and ME start their OpenMP pools."""
    return int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else default


os.environ["OMP_NUM_THREADS"] = str(_threads_from_argv())  # ME resets OpenMP to this per manager

import numpy as np
import torch

from mask3d_ros.backbone import Res16UNet34C
from mask3d_ros.sparse import CoordinateManager, SparseConv, SparseTensor

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARITY_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "mask3d_parity"
VOXEL_SIZE = 0.02


def surface_cloud(side: int = 160) -> torch.Tensor:
    """A floor and a wall, `side` voxels wide (about 51k voxels, ~9 neighbours each), shuffled."""
    a = torch.arange(side)
    fx, fy = torch.meshgrid(a, a, indexing="ij")
    floor = torch.stack([fx.flatten(), fy.flatten(), torch.zeros(side * side, dtype=torch.long)], 1)
    wx, wz = torch.meshgrid(a, torch.arange(1, side), indexing="ij")
    wall = torch.stack([wx.flatten(), torch.zeros_like(wx.flatten()), wz.flatten()], 1)
    coords = torch.cat([floor, wall])
    return coords[torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))]


def uniform_cloud(count: int = 50_000, side: int = 200) -> torch.Tensor:
    """Random voxels in a `side`^3 box: almost no neighbours."""
    generator = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(0, side, (2 * count, 3), generator=generator), dim=0)
    return coords[torch.randperm(coords.shape[0], generator=generator)[:count]]


def room_cloud(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 5 x 4 x 2.5 m room seen from inside: floor, three walls and furniture boxes, 2 cm voxels.

    Points are sampled surface by surface (a scan-like, locally coherent order) and voxelized
    keeping the first point per voxel, as the node's voxelizer does. Returns (coords, rgb feats).
    """
    rng = np.random.default_rng(seed)

    def plane(origin, u, v, density=6000):
        area = np.linalg.norm(u) * np.linalg.norm(v)
        st = rng.random((int(area * density), 2))
        points = origin + st[:, :1] * u + st[:, 1:] * v
        return points + rng.normal(0, 0.002, points.shape)

    def box(corner, size):
        x, y, z = size
        c = np.asarray(corner, float)
        return [plane(c + [0, 0, z], [x, 0, 0], [0, y, 0]), plane(c, [x, 0, 0], [0, 0, z]),
                plane(c + [0, y, 0], [x, 0, 0], [0, 0, z]), plane(c, [0, y, 0], [0, 0, z]),
                plane(c + [x, 0, 0], [0, y, 0], [0, 0, z])]

    parts = [plane(np.zeros(3), [5, 0, 0], [0, 4, 0]),
             plane(np.zeros(3), [5, 0, 0], [0, 0, 2.5]),
             plane(np.zeros(3), [0, 4, 0], [0, 0, 2.5]),
             plane(np.array([5.0, 0, 0]), [0, 4, 0], [0, 0, 2.5])]
    for corner, size in [((0.5, 0.5, 0), (1.6, 0.8, 0.75)), ((3, 1, 0), (0.5, 0.5, 0.45)),
                         ((3.2, 3.3, 0), (1.6, 0.6, 2.0)), ((0.8, 2.6, 0), (1.8, 0.9, 0.5))]:
        parts += box(corner, size)
    # Sensor-centred (negative coordinates too), surfaces off the voxel boundaries (one voxel thick).
    xyz = np.concatenate(parts) - [2.49, 1.99, -0.01]
    voxels = np.floor(xyz / VOXEL_SIZE).astype(np.int64)
    _, first = np.unique(voxels, axis=0, return_index=True)
    first.sort()
    coords = torch.from_numpy(voxels[first])
    return coords, torch.randn(coords.shape[0], 3, generator=torch.Generator().manual_seed(seed))


def race(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time (ms) of each closure, interleaved run by run so load spikes hit every backend alike."""
    times = {name: [] for name in runs}
    for name, run in runs.items():
        run()  # warm-up (allocator, lazily built maps)
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * min(values) for name, values in times.items()}


def load_minkowski():
    try:
        from mask3d_ros.backends import import_minkowski, to_minkowski
        return import_minkowski(), to_minkowski
    except ImportError:
        return None


def conv_rows(name: str, coords: torch.Tensor, repeats: int, minkowski) -> list[list[str]]:
    """One 64->64 3x3x3 conv: map cached, map built per call (manager included), forward + backward."""
    conv = SparseConv(64, 64, 3)
    feats = torch.randn(coords.shape[0], 64)
    x = SparseTensor(feats, coords)
    x_grad = x.replace(feats.clone().requires_grad_())
    runs = {
        ("torch", "cached"): lambda: conv(x),
        ("torch", "build"): lambda: conv(SparseTensor(feats, coords)),
    }
    backward_runs = {("torch", "backward"): lambda: conv(x_grad).feats.sum().backward()}
    if minkowski is not None:
        ME, to_minkowski = minkowski
        me_conv = ME.MinkowskiConvolution(64, 64, kernel_size=3, dimension=3)
        me_conv.kernel.data.copy_(conv.kernel.data)
        me_x = to_minkowski(x)
        me_x_grad = ME.SparseTensor(feats.clone().requires_grad_(), coordinate_map_key=me_x.coordinate_map_key,
                                    coordinate_manager=me_x.coordinate_manager)
        runs[("minkowski", "cached")] = lambda: me_conv(me_x)
        runs[("minkowski", "build")] = lambda: me_conv(to_minkowski(x))
        backward_runs[("minkowski", "backward")] = lambda: me_conv(me_x_grad).F.sum().backward()
    with torch.inference_mode():
        timing = race(runs, repeats)
    timing.update(race(backward_runs, repeats))
    backends = ["torch"] + (["minkowski"] if minkowski is not None else [])
    return [[f"conv 3x3x3 64->64, {name} ({coords.shape[0]:,} voxels)", backend,
             *(f"{timing[(backend, column)]:.1f}" for column in ("cached", "build", "backward")), ""]
            for backend in backends]


def backbone_for(backend: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = Res16UNet34C(3, 200, backend=backend).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in net.state_dict().items():
            if name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return net


def backbone_forward(backend: str, coords: torch.Tensor, feats: torch.Tensor):
    """A closure running one full forward (coordinate manager and maps included)."""
    net = backbone_for(backend)
    if backend == "torch":
        return lambda: net(SparseTensor(feats, coords))
    _, to_minkowski = load_minkowski()
    stride1 = SparseTensor(feats, coords)
    return lambda: net(to_minkowski(stride1))


def peak_memory_mb(backend: str, input_name: str, parity_dir: Path) -> float:
    """Growth of max RSS during one backbone forward, in a fresh process."""
    result = subprocess.run([sys.executable, __file__, "--memory-probe", backend, input_name, "--parity-dir",
                             str(parity_dir), "--threads", str(torch.get_num_threads())],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def inputs(parity_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    clouds = {"room": room_cloud()}
    if (parity_dir / "input.npz").exists():
        data = np.load(parity_dir / "input.npz")
        clouds["parity"] = (torch.from_numpy(data["voxel_coords"]).long(), torch.from_numpy(data["features"]))
    return clouds


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(backend: str, input_name: str, parity_dir: Path) -> None:
    """Print the peak RSS growth (MB) of one forward, after resetting the high-water mark (Linux)."""
    coords, feats = inputs(parity_dir)[input_name]
    run = backbone_forward(backend, coords, feats)
    with torch.inference_mode():
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
        run()
        print((_status_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads (default 2)")
    parser.add_argument("--parity-dir", type=Path, default=DEFAULT_PARITY_DIR)
    parser.add_argument("--memory-probe", nargs=2, metavar=("BACKEND", "INPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(*args.memory_probe, args.parity_dir)
        return

    minkowski = load_minkowski()
    backends = ["torch"] + (["minkowski"] if minkowski is not None else [])
    rows = conv_rows("surface", surface_cloud(), args.repeats, minkowski)
    rows += conv_rows("uniform", uniform_cloud(), args.repeats, minkowski)
    for input_name, (coords, feats) in sorted(inputs(args.parity_dir).items()):
        runs = {backend: backbone_forward(backend, coords, feats) for backend in backends}
        with torch.inference_mode():
            timing = race(runs, args.repeats if coords.shape[0] < 10_000 else max(3, args.repeats // 3))
        for backend in backends:
            memory = peak_memory_mb(backend, input_name, args.parity_dir)
            rows.append([f"Res16UNet34C forward, {input_name} ({coords.shape[0]:,} voxels)", backend,
                         "", f"{timing[backend]:.1f}", "", f"{memory:.0f}"])

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeats} interleaved runs "
          f"(room: {max(3, args.repeats // 3)}); times in ms\n")
    header = ["case", "backend", "map cached", "incl. map build", "fwd + bwd (map cached)", "peak RSS growth (MB)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if minkowski is None:
        print("\nMinkowskiEngine is not installed: torch backend only.")


if __name__ == "__main__":
    main()
