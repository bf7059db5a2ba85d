"""One sparse 3x3x3 64->64 convolution, the torch backend against MinkowskiEngine (when importable).

Two inputs: a floor and a wall (scan-like surface, about 9 neighbours per voxel) and uniform random
voxels (almost none). Three timings each: kernel map cached, map built per call (coordinate manager
included), forward + backward with the map cached. Same weights, same process, interleaved runs.
"""
from __future__ import annotations

import torch

from mask3d_ros.model.backends import import_minkowski, minkowski_version, to_minkowski
from mask3d_ros.model.sparse import SparseConv, SparseTensor
from mask3d_ros.tools.bench.core import Row, race


def surface_cloud(side: int = 160):
    """A floor and a wall, ``side`` voxels wide (about 51k voxels), shuffled."""
    a = torch.arange(side)
    fx, fy = torch.meshgrid(a, a, indexing="ij")
    floor = torch.stack([fx.flatten(), fy.flatten(), torch.zeros(side * side, dtype=torch.long)], 1)
    wx, wz = torch.meshgrid(a, torch.arange(1, side), indexing="ij")
    wall = torch.stack([wx.flatten(), torch.zeros_like(wx.flatten()), wz.flatten()], 1)
    coords = torch.cat([floor, wall])
    return coords[torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))]


def uniform_cloud(count: int = 50_000, side: int = 200):
    """Random voxels in a ``side``^3 box: almost no neighbours."""
    generator = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(0, side, (2 * count, 3), generator=generator), dim=0)
    return coords[torch.randperm(coords.shape[0], generator=generator)[:count]]


def conv_runs(coords) -> dict[tuple[str, str], object]:
    """Closures per (backend, timing); MinkowskiEngine's only when it imports."""
    conv = SparseConv(64, 64, 3)
    feats = torch.randn(coords.shape[0], 64)
    x = SparseTensor(feats, coords)
    x_grad = x.replace(feats.clone().requires_grad_())
    runs = {("torch", "cached"): lambda: conv(x), ("torch", "build"): lambda: conv(SparseTensor(feats, coords)),
            ("torch", "backward"): lambda: conv(x_grad).feats.sum().backward()}
    if minkowski_version() is not None:
        ME = import_minkowski()
        me_conv = ME.MinkowskiConvolution(64, 64, kernel_size=3, dimension=3)
        me_conv.kernel.data.copy_(conv.kernel.data)
        me_x = to_minkowski(x)
        me_x_grad = ME.SparseTensor(feats.clone().requires_grad_(), coordinate_map_key=me_x.coordinate_map_key,
                                    coordinate_manager=me_x.coordinate_manager)
        runs.update({("minkowski", "cached"): lambda: me_conv(me_x),
                     ("minkowski", "build"): lambda: me_conv(to_minkowski(x)),
                     ("minkowski", "backward"): lambda: me_conv(me_x_grad).F.sum().backward()})
    return runs


TIMINGS = {"cached": "kernel map cached", "build": "incl. kernel map build", "backward": "forward + backward"}


def conv_rows(name: str, coords, repeats: int) -> list[Row]:
    """Torch-backend rows beside MinkowskiEngine's (no rows without it: there is no other baseline)."""
    runs = conv_runs(coords)
    if ("minkowski", "cached") not in runs:
        return []
    with torch.inference_mode():
        times = race({key: run for key, run in runs.items() if key[1] != "backward"}, repeats)
    times.update(race({key: run for key, run in runs.items() if key[1] == "backward"}, repeats))
    return [Row(f"conv 3x3x3 64->64, {name} ({coords.shape[0]:,} voxels), {label}, torch backend",
                min(times[("torch", timing)]), "ms", f"MinkowskiEngine {minkowski_version()}, same weights",
                min(times[("minkowski", timing)]), f"best of {repeats}, interleaved; {torch.get_num_threads()} threads")
            for timing, label in TIMINGS.items()]
