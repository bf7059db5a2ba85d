"""Real-object copy-paste: cluttered training scenes made of real labelled depth frames.

mOSD's ``learn/`` frames hold one to five objects each, while real tables (and ``val/``'s mixed
and complex scenes) hold a dozen, touching. Synthetic scenes add clutter but not real sensor
colour, texture and noise. This module composes new single-view scenes from real frames: a host
frame keeps its table and objects, and real objects cut out of other frames are set down on free
spots of the host table, turned so that their observed side faces the host camera, then the
cloud is re-rendered through a z-buffer so that pasted objects hide what lies behind them and are
hidden by what lies in front. Labels stay exact: every pasted object is a new instance.

Frames must be single camera views in the optical frame (camera at the origin, z forward), as
mOSD and :mod:`mask3d_ros.data.synthetic` frames are. The idea is the instance copy-paste
augmentation of 2D/3D detection, with occlusion handled by projection; the code is our own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import minimum_filter
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from mask3d_ros.data.datasets import IGNORE, Scene
from mask3d_ros.data.synthetic import Camera, dedupe
from mask3d_ros.training.augment import table_normal

MIN_OBJECT_POINTS = 300      # smaller cut-outs (slivers, heavily occluded objects) are not pasted
ON_TABLE = 0.025             # an object whose lowest point is higher above the table is stacked: not pasted
OCCLUSION_MARGIN = 0.015     # metres: a point survives if nothing lies this much nearer on its ray


@dataclass(frozen=True)
class TablePlane:
    """Coordinates in which the table is z = 0 and z grows towards the camera side.

    ``to_plane(p) = (p - origin) @ axes.T``; ``axes`` rows are two in-plane axes and the normal.
    """

    origin: np.ndarray   # float64 [3]
    axes: np.ndarray     # float64 [3, 3]

    def to_plane(self, xyz: np.ndarray) -> np.ndarray:
        return (np.asarray(xyz, np.float64) - self.origin) @ self.axes.T

    def from_plane(self, uvw: np.ndarray) -> np.ndarray:
        return uvw @ self.axes + self.origin

    @property
    def camera(self) -> np.ndarray:
        """The camera (the origin of the cloud's frame) in plane coordinates."""
        return -self.origin @ self.axes.T


@dataclass(frozen=True)
class RealObject:
    """One labelled object cut out of a frame, in its table's plane coordinates with the footprint
    centre at the origin; ``view_azimuth`` is the direction its camera saw it from."""

    xyz: np.ndarray          # float64 [M, 3]
    rgb: np.ndarray          # uint8 [M, 3]
    radius: float            # footprint radius in the table plane (95th percentile)
    view_azimuth: float      # radians, in the plane, from the footprint centre to the camera
    source: str


def table_plane(scene: Scene, table_class: int = 0) -> TablePlane | None:
    """The table's plane, normal pointing to the camera at the origin (None without a table)."""
    table = scene.semantic == table_class
    normal = table_normal(scene.xyz, table)
    if normal is None:
        return None
    origin = scene.xyz[table].astype(np.float64).mean(0)
    if np.dot(normal, -origin) < 0:
        normal = -normal
    first = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    first /= np.linalg.norm(first)
    return TablePlane(origin, np.stack([first, np.cross(normal, first), normal]))


def _footprint(uvw: np.ndarray) -> tuple[np.ndarray, float]:
    centre = uvw[:, :2].mean(0)
    return centre, float(np.percentile(np.linalg.norm(uvw[:, :2] - centre, axis=1), 95))


def _azimuth(vector: np.ndarray) -> float:
    return float(np.arctan2(vector[1], vector[0]))


def extract_objects(scene: Scene, table_class: int = 0) -> list[RealObject]:
    """Every object of ``scene`` that stands on the table and has enough points."""
    plane = table_plane(scene, table_class)
    if plane is None:
        return []
    objects = []
    for instance in np.unique(scene.instance[scene.instance > 0]):
        member = scene.instance == instance
        if member.sum() < MIN_OBJECT_POINTS:
            continue
        uvw = plane.to_plane(scene.xyz[member])
        if np.percentile(uvw[:, 2], 2) > ON_TABLE:
            continue
        centre, radius = _footprint(uvw)
        uvw[:, :2] -= centre
        objects.append(RealObject(uvw, scene.rgb[member], radius, _azimuth(plane.camera[:2] - centre),
                                  f"{scene.name}#{instance}"))
    return objects


def visible(xyz: np.ndarray, camera: Camera = Camera(), margin: float = OCCLUSION_MARGIN,
            splat: int = 5) -> np.ndarray:
    """Which points a pinhole camera at the origin sees: inside the image and not behind another
    point (by more than ``margin``) within ``splat`` pixels, which closes the gaps between the
    points of a surface so nothing shows through it."""
    z = xyz[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(camera.fx * xyz[:, 0] / z + camera.cx)
        v = np.round(camera.fy * xyz[:, 1] / z + camera.cy)
    inside = (z > 0) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    pixel = np.where(inside, v * camera.width + u, 0).astype(np.int64)
    depth = np.full(camera.width * camera.height, np.inf)
    np.minimum.at(depth, pixel[inside], z[inside])
    nearest = minimum_filter(depth.reshape(camera.height, camera.width), size=splat).reshape(-1)
    return inside & (z <= nearest[pixel] + margin)


def compose(host: Scene, bank: list[RealObject], rng: np.random.Generator, added: tuple[int, int] = (3, 10),
            touching: float = 0.4, stacked: float = 0.15, turn_noise: float = np.radians(20),
            scale: tuple[float, float] = (1.0, 1.0), height_scale: tuple[float, float] = (1.0, 1.0),
            camera: Camera = Camera(), name: str | None = None, table_class: int = 0) -> Scene:
    """``host`` with ``added`` (range) objects from ``bank`` set down on free spots of its table.

    A ``touching`` fraction of the objects is placed against one already there (gap 0-1 cm), a
    ``stacked`` fraction on top of one, the rest anywhere free. Objects are turned to face the
    host camera as they faced their own (plus up to ``turn_noise``), and resized by a factor drawn
    from ``scale`` across and another from ``height_scale`` upwards, so that a few dozen real
    objects also stand in for larger, flatter or taller ones (books, tins, cereal boxes). Points
    hidden after pasting are removed, and so are objects left with fewer than
    ``MIN_OBJECT_POINTS // 3`` points (marked unlabelled).
    """
    plane = table_plane(host, table_class)
    if plane is None or not bank:
        raise ValueError(f"{host.name}: no table to paste onto" if plane is None else "no objects to paste")
    host_uvw = plane.to_plane(host.xyz)
    camera_uv = plane.camera[:2]
    support = cKDTree(host_uvw[(host.semantic == table_class) | (host.instance > 0), :2])
    placed = [(*_footprint(host_uvw[host.instance == i]), float(np.percentile(host_uvw[host.instance == i, 2], 95)))
              for i in np.unique(host.instance[host.instance > 0])]
    table_uv = host_uvw[host.semantic == table_class, :2]
    object_class = _object_class(host, table_class)

    xyz, rgb, semantic, instance = [host.xyz], [host.rgb], [host.semantic], [host.instance]
    next_id = int(host.instance.max(initial=0)) + 1
    for _ in range(int(rng.integers(added[0], added[1] + 1))):
        obj = bank[int(rng.integers(len(bank)))]
        across, upwards = _draw(rng, scale), _draw(rng, height_scale)
        radius = obj.radius * across
        if placed and rng.random() < stacked:           # on top of one already there, near its centre
            base = int(rng.integers(len(placed)))
            centre, base_radius, height = placed[base]
            centre = centre + rng.uniform(-0.3, 0.3, 2) * base_radius
        else:
            centre, height = _free_spot(radius, placed, table_uv, support, rng, rng.random() < touching), 0.0
            if centre is None:
                continue
        angle = _azimuth(camera_uv - centre) - obj.view_azimuth + rng.uniform(-turn_noise, turn_noise)
        uvw = Rotation.from_euler("z", angle).apply(obj.xyz * [across, across, upwards]) + [*centre, height]
        top = float(np.percentile(uvw[:, 2], 95))
        if height > 0:
            placed[base] = (placed[base][0], placed[base][1], top)   # a tower grows
        else:
            placed.append((centre, radius, top))
        xyz.append(plane.from_plane(uvw).astype(np.float32))
        rgb.append(obj.rgb)
        semantic.append(np.full(len(uvw), object_class, np.int64))
        instance.append(np.full(len(uvw), next_id, np.int64))
        next_id += 1
    xyz, rgb, semantic, instance = (np.concatenate(a) for a in (xyz, rgb, semantic, instance))
    keep = visible(xyz, camera)
    xyz, rgb, semantic, instance = xyz[keep], rgb[keep], semantic[keep], instance[keep]
    ids, counts = np.unique(instance, return_counts=True)
    small = np.isin(instance, ids[(ids > 0) & (counts < MIN_OBJECT_POINTS // 3)])
    semantic[small], instance[small] = IGNORE, 0
    scene = Scene(xyz, rgb, semantic, instance, host.class_names, host.instance_classes,
                  name or f"{host.name}+pasted")
    return dedupe(scene, 0.004)


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A uniform draw from ``bounds``; a fixed value draws nothing, so older seeds compose as before."""
    return float(bounds[0]) if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


def _object_class(host: Scene, table_class: int) -> int:
    """The class pasted objects get: the host's instance class other than the table."""
    for index in host.instance_class_ids:
        if index != table_class:
            return index
    raise ValueError(f"{host.name}: no object class among {host.instance_classes}")


def _free_spot(radius: float, placed: list, table_uv: np.ndarray, support: cKDTree, rng: np.random.Generator,
               touch: bool, tries: int = 40) -> np.ndarray | None:
    """A footprint centre on the table that overlaps nothing placed, or None."""
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    ring = 0.7 * radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for _ in range(tries):
        if touch and placed:
            other, other_radius, _ = placed[int(rng.integers(len(placed)))]
            direction = rng.normal(size=2)
            centre = other + direction / np.linalg.norm(direction) * (other_radius + radius + rng.uniform(0, 0.01))
        else:
            centre = table_uv[int(rng.integers(len(table_uv)))]
        if any(np.linalg.norm(centre - c) < r + radius - 1e-6 for c, r, _ in placed):
            continue
        if support.query(centre + ring)[0].max() < 0.03:
            return centre
    return None


def make_scenes(frames: list[Scene], count: int, seed: int, **options) -> list[Scene]:
    """``count`` composed scenes, each on a random host from ``frames`` with objects cut from all of them."""
    bank = [obj for frame in frames for obj in extract_objects(frame)]
    hosts = [frame for frame in frames if table_plane(frame) is not None]
    if not bank or not hosts:
        raise ValueError("copy-paste needs frames with a labelled table and objects on it")
    scenes = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        host = hosts[int(rng.integers(len(hosts)))]
        scenes.append(compose(host, bank, rng, name=f"copy_paste_{seed}_{index}", **options))
    return scenes
