"""Synthetic tabletop scenes seen by a simulated Kinect, with exact per-point labels.

Real labelled tabletop frames are few (mOSD has 45 for learning), so training data is enlarged with
scenes of our own: a table on a floor with random boxes, stacked boxes, cylinders, cups, bowls,
bottles, spheres and small clutter, ray cast with ``open3d.t.geometry.RaycastingScene`` from a
depth camera with Kinect v1 intrinsics and error model (axial noise growing with z², disparity
quantisation, lateral jitter, projector shadows, dropouts at depth edges and grazing angles, range
limits). Frames are organised clouds in the camera optical frame (x right, y down, z forward) with
NaN for missing returns, like mOSD, and carry the camera pose in the world frame (z up, table
centred at the origin).

Single frames mimic mOSD statistically: the camera stands at the table edge 0.7-1.1 m from the
objects, looking down 30-50 degrees; 2-8 objects of 5-30 cm; the cloud is cropped to the table top
(floor, legs and the far end of the table removed) as mOSD was. Everything is deterministic in the
seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import open3d as o3d

from mask3d_ros.data.datasets import Scene
from mask3d_ros.model.voxel import voxelize

CLASS_NAMES = ("table", "object")
"""Semantic classes of synthetic frames; the same as mOSD's (see ``datasets.MOSD_CLASSES``)."""
TABLE, OBJECT = 0, 1
UNLABELLED = -1


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics of the depth image (Kinect v1 at 640 x 480 by default)."""

    width: int = 640
    height: int = 480
    fx: float = 525.0
    fy: float = 525.0
    cx: float = 319.5
    cy: float = 239.5

    @staticmethod
    def kinect(width: int = 640, height: int = 480) -> "Camera":
        """Kinect v1 intrinsics scaled to a (lower) resolution, keeping the field of view."""
        sx, sy = width / 640.0, height / 480.0
        return Camera(width, height, 525.0 * sx, 525.0 * sy, (640 * sx - 1) / 2, (480 * sy - 1) / 2)


@dataclass(frozen=True)
class KinectNoise:
    """Kinect v1 depth error model; ``render(..., noise=None)`` gives an ideal sensor instead."""

    sigma_base: float = 0.0012  # axial sigma = base + growth * (z - 0.4)^2 (Nguyen et al. 2012)
    sigma_growth: float = 0.0019
    baseline_focal: float = 0.075 * 580.0  # disparity [px] = baseline_focal / z
    disparity_step: float = 1.0 / 8.0  # disparity is reported in 1/8 px steps
    lateral_jitter_px: float = 0.3
    projector_offset: float = 0.075  # projector beside the camera along +x: it casts shadows
    dropout: float = 0.001  # random missing returns
    edge_jump: float = 0.02  # a depth step above this marks a depth edge ...
    edge_dropout: float = 0.5  # ... whose pixels are missing with this probability
    grazing_cos: tuple[float, float] = (0.1, 0.3)  # missing below the first |cos|, kept above the second
    min_range: float = 0.45
    max_range: float = 3.5

    def sigma(self, z: np.ndarray) -> np.ndarray:
        return self.sigma_base + self.sigma_growth * (z - 0.4) ** 2

    def quantize(self, z: np.ndarray) -> np.ndarray:
        """Round to the depth the sensor can report (a grid in disparity)."""
        disparity = np.round(self.baseline_focal / z / self.disparity_step) * self.disparity_step
        return self.baseline_focal / disparity

    def corrupt_depth(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.quantize(z + rng.normal(size=z.shape) * self.sigma(z))


@dataclass(frozen=True)
class Part:
    """One triangle mesh in world coordinates with its labels and procedural colour."""

    vertices: np.ndarray  # float32 [V, 3]
    triangles: np.ndarray  # uint32 [F, 3]
    semantic: int
    instance: int
    colours: np.ndarray  # float [2, 3]: the texture blends these two colours
    wave: np.ndarray  # float [3]: spatial frequency of the texture [rad/m]
    sharpness: float  # 0: smooth blend, large: hard stripes


@dataclass(frozen=True)
class Tabletop:
    """A table with objects on a floor; ``table_height`` is the height of the table top."""

    parts: tuple[Part, ...]
    table_height: float
    table_thickness: float
    workspace_centre: np.ndarray  # [3], on the table top, where the objects stand


@dataclass(frozen=True)
class TableCrop:
    """Keep table points within ``max_forward`` ahead of the camera and ``max_lateral`` beside it."""

    max_forward: float
    max_lateral: float


@dataclass(frozen=True)
class Frame:
    """One organised depth frame in the camera optical frame; NaN / -1 / 0 where nothing returned."""

    xyz: np.ndarray  # float32 [H, W, 3]
    rgb: np.ndarray  # uint8 [H, W, 3]
    semantic: np.ndarray  # int64 [H, W], CLASS_NAMES index or UNLABELLED
    instance: np.ndarray  # int64 [H, W], 0 = no object
    camera_pose: np.ndarray  # float64 [4, 4], world_T_camera
    camera: Camera = field(default_factory=Camera)

    def to_scene(self, name: str) -> Scene:
        flat = self.xyz.reshape(-1, 3)
        valid_index = np.flatnonzero(np.isfinite(flat).all(axis=1))
        return Scene(
            xyz=flat[valid_index],
            rgb=self.rgb.reshape(-1, 3)[valid_index],
            semantic=self.semantic.reshape(-1)[valid_index],
            instance=self.instance.reshape(-1)[valid_index],
            class_names=CLASS_NAMES,
            instance_classes=("object",),
            name=name,
            organized_shape=self.xyz.shape[:2],
            valid_index=valid_index,
        )


# --- meshes -------------------------------------------------------------------------------------


def _box(size) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box standing on z = 0, centred in x and y."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (0.0, 1.0)]) * size
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    triangles = [tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))]
    return corners, np.array(triangles)


def _lathe(profile, segments: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about z of a (radius, height) polyline, closed where radius is 0."""
    radius, height = np.asarray(profile, float).T
    angle = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    vertices = np.stack(
        [np.outer(radius, np.cos(angle)), np.outer(radius, np.sin(angle)), np.repeat(height[:, None], segments, 1)],
        axis=-1,
    ).reshape(-1, 3)
    k, s = np.meshgrid(np.arange(len(profile) - 1), np.arange(segments), indexing="ij")
    a, b = k * segments + s, k * segments + (s + 1) % segments
    c, d = a + segments, b + segments
    triangles = np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    return vertices, triangles


def _arc(radius: float, centre_z: float, start: float, stop: float, steps: int = 12):
    angles = np.linspace(start, stop, steps)
    return [(radius * np.cos(t), centre_z + radius * np.sin(t)) for t in angles]


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _object_meshes(kind: str, rng: np.random.Generator):
    """Meshes (one per instance) of one object of ``kind`` standing on z = 0, and its footprint radius."""
    u = rng.uniform
    if kind == "box":
        size = np.array([u(0.07, 0.26), u(0.06, 0.2), u(0.05, 0.25)])
        return [_box(size)], 0.5 * np.hypot(size[0], size[1])
    if kind == "stacked_boxes":
        bottom = np.array([u(0.1, 0.25), u(0.08, 0.2), u(0.04, 0.15)])
        top = np.array([u(0.05, bottom[0]), u(0.05, bottom[1]), u(0.04, 0.15)])
        top_v, top_t = _box(top)
        top_v = top_v @ _rot_z(u(-0.4, 0.4)).T + [u(-0.02, 0.02), u(-0.02, 0.02), bottom[2]]
        return [_box(bottom), (top_v, top_t)], 0.5 * np.hypot(bottom[0], bottom[1])
    if kind == "cylinder":
        r, h = u(0.03, 0.07), u(0.07, 0.25)
        mesh = _lathe([(0, 0), (r, 0), (r, h), (0, h)])
        if rng.random() < 0.25:  # lying on its side
            vertices = mesh[0] @ _rot_x(np.pi / 2).T + [0, h / 2, r]
            return [(vertices, mesh[1])], np.hypot(r, h / 2)
        return [mesh], r
    if kind == "cup":
        r, h, wall = u(0.035, 0.055), u(0.08, 0.13), 0.004
        return [_lathe([(0, 0), (r, 0), (r, h), (r - wall, h), (r - wall, wall), (0, wall)])], r
    if kind == "bowl":
        radius, depth, wall = u(0.07, 0.12), u(0.04, 0.08), 0.004
        outer = _arc(radius, radius, -np.pi / 2, -np.pi / 2 + np.arccos(1 - depth / radius))
        inner = [(max(x - wall, 0.0), z + wall) for x, z in reversed(outer[1:])]
        return [_lathe([*outer, *inner, (0, wall)])], radius
    if kind == "bottle":
        r, h = u(0.025, 0.045), u(0.15, 0.3)
        neck = r * u(0.3, 0.45)
        return [_lathe([(0, 0), (r, 0), (r, 0.6 * h), (neck, 0.8 * h), (neck, h), (0, h)])], r
    if kind == "sphere":
        radius = u(0.035, 0.08)
        return [_lathe(_arc(radius, radius, -np.pi / 2, np.pi / 2, 16))], radius
    if kind == "clutter":  # small things: a small box, can or ball
        small_kind = rng.choice(["box", "cylinder", "sphere"])
        size = u(0.03, 0.06)
        if small_kind == "box":
            dims = size * rng.uniform(0.6, 1.4, 3)
            return [_box(dims)], 0.5 * np.hypot(dims[0], dims[1])
        if small_kind == "cylinder":
            return [_lathe([(0, 0), (size / 2, 0), (size / 2, size), (0, size)])], size / 2
        return [_lathe(_arc(size / 2, size / 2, -np.pi / 2, np.pi / 2, 10))], size / 2
    raise ValueError(f"unknown object kind {kind!r}")


OBJECT_KINDS = ("box", "box", "stacked_boxes", "cylinder", "cylinder", "cup", "bowl", "bottle", "sphere", "clutter")
"""Kinds drawn uniformly from this list (boxes and cylinders twice: mOSD is mostly those)."""

VARIED_KINDS = OBJECT_KINDS + ("box", "tower", "thing_on_box", "frustum", "lying_box", "cylinder", "stacked_boxes")
"""Kinds of ``varied`` scenes: more boxes, stacks of two or three, things on boxes, flower pots."""


def _stack(base_size: np.ndarray, rng: np.random.Generator, levels: int):
    """Meshes of ``levels`` objects stacked on a box of ``base_size`` (each one its own instance):
    mOSD's stacked and mixed scenes put boxes, cans and cups on boxes."""
    u = rng.uniform
    meshes, top, below = [_box(base_size)], base_size[2], base_size
    for _ in range(levels - 1):
        kind = rng.choice(["box", "box", "cylinder", "cup"])
        if kind == "box":
            size = np.array([u(0.04, below[0]), u(0.04, below[1]), u(0.03, 0.15)])
            vertices, triangles = _box(size)
            vertices = vertices @ _rot_z(u(-0.5, 0.5)).T
        else:
            r = u(0.025, max(0.03, 0.5 * min(below[:2])))
            size = np.array([2 * r, 2 * r, u(0.05, 0.16)])
            profile = [(0, 0), (r, 0), (r, size[2]), (0, size[2])] if kind == "cylinder" else \
                [(0, 0), (r, 0), (r, size[2]), (r - 0.004, size[2]), (r - 0.004, 0.004), (0, 0.004)]
            vertices, triangles = _lathe(profile)
        slack = np.maximum(below[:2] - size[:2], 0) / 2
        vertices = vertices + [u(-1, 1) * slack[0], u(-1, 1) * slack[1], top]
        meshes.append((vertices, triangles))
        top, below = top + size[2], size
    return meshes


def _varied_meshes(kind: str, rng: np.random.Generator):
    """Meshes and footprint radius of the kinds only ``varied`` scenes have (see :func:`_object_meshes`)."""
    u = rng.uniform
    if kind == "tower":
        base = np.array([u(0.1, 0.26), u(0.08, 0.2), u(0.04, 0.14)])
        return _stack(base, rng, 3), 0.5 * np.hypot(base[0], base[1])
    if kind == "thing_on_box":
        base = np.array([u(0.1, 0.26), u(0.08, 0.2), u(0.05, 0.2)])
        return _stack(base, rng, 2), 0.5 * np.hypot(base[0], base[1])
    if kind == "frustum":  # flower pot, bucket, paper cup upside down
        r0, r1, h = u(0.03, 0.07), u(0.03, 0.09), u(0.06, 0.18)
        return [_lathe([(0, 0), (r0, 0), (r1, h), (0, h)])], max(r0, r1)
    if kind == "lying_box":  # a flat, long box (book, tray, cereal box on its side)
        size = np.array([u(0.12, 0.3), u(0.08, 0.22), u(0.02, 0.06)])
        return [_box(size)], 0.5 * np.hypot(size[0], size[1])
    return _object_meshes(kind, rng)


def _object_texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    base = rng.uniform(20, 235, 3)
    if rng.random() < 0.4:  # printed packaging: a second, unrelated colour
        second = rng.uniform(20, 235, 3)
    else:
        second = base * rng.uniform(0.75, 1.0)
    wave = rng.normal(size=3) * rng.uniform(10, 120)
    return np.stack([base, second]), wave, float(rng.choice([0.0, 1.0, 8.0]))


def _table_texture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    grey = rng.uniform(140, 235)
    base = grey + rng.uniform(-12, 12, 3)
    return np.stack([base, base * rng.uniform(0.9, 0.97)]), rng.normal(size=3) * rng.uniform(5, 60), 0.0


def random_tabletop(
    rng: np.random.Generator,
    table_size: tuple[float, float],
    workspace_centre: tuple[float, float],
    workspace_half: tuple[float, float] = (0.3, 0.22),
    num_objects: int | None = None,
    varied: bool = False,
) -> Tabletop:
    """A table of ``table_size`` (x, y) centred at the origin with 2-8 objects placed without overlap
    in a rectangle of half sizes ``workspace_half`` around ``workspace_centre`` (x, y).

    ``varied`` scenes (training) hold 2-12 objects of :data:`VARIED_KINDS`, often touching: about
    half of them are pushed against one already placed, as in mOSD's mixed and complex scenes."""
    height, thickness = rng.uniform(0.7, 0.78), rng.uniform(0.025, 0.045)
    colours, wave, sharpness = _table_texture(rng)
    top_v, top_t = _box(np.array([*table_size, thickness]))
    parts = [Part(top_v + [0, 0, height - thickness], top_t, TABLE, 0, colours, wave, sharpness)]
    leg_size = rng.uniform(0.04, 0.07)
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg_v, leg_t = _box(np.array([leg_size, leg_size, height - thickness]))
            offset = [sx * (table_size[0] / 2 - leg_size), sy * (table_size[1] / 2 - leg_size), 0]
            parts.append(Part(leg_v + offset, leg_t, TABLE, 0, colours, wave, sharpness))
    floor_v, floor_t = _box(np.array([8.0, 8.0, 0.01]))
    floor_colours = np.stack([rng.uniform(60, 200, 3)] * 2)
    parts.append(Part(floor_v - [0, 0, 0.01], floor_t, UNLABELLED, 0, floor_colours, np.zeros(3), 0.0))

    if num_objects is None:
        num_objects = int(rng.integers(2, 13 if varied else 9))
    placed: list[tuple[np.ndarray, float]] = []
    instance = 0
    for _ in range(num_objects):
        if varied:
            meshes, radius = _varied_meshes(str(rng.choice(VARIED_KINDS)), rng)
            centre = _touching_place(rng, radius, placed, np.asarray(workspace_centre), workspace_half)
        else:
            meshes, radius = _object_meshes(str(rng.choice(OBJECT_KINDS)), rng)
            centre = _free_place(rng, radius, placed, np.asarray(workspace_centre), workspace_half)
        if centre is None:
            continue
        placed.append((centre, radius))
        rotation = _rot_z(rng.uniform(0, 2 * np.pi))
        for vertices, triangles in meshes:
            instance += 1
            colours, wave, sharpness = _object_texture(rng)
            world = vertices @ rotation.T + [centre[0], centre[1], height]
            parts.append(Part(world, triangles, OBJECT, instance, colours, wave, sharpness))
    parts = tuple(replace(p, vertices=p.vertices.astype(np.float32), triangles=p.triangles.astype(np.uint32))
                  for p in parts)
    return Tabletop(parts, height, thickness, np.array([*workspace_centre, height]))


def _free_place(rng, radius, placed, centre0, half):
    """A centre whose footprint circle keeps a 0.5-4 cm gap to every placed one (None: no room)."""
    for _attempt in range(50):
        centre = centre0 + rng.uniform(-1, 1, 2) * half
        gap = rng.uniform(0.005, 0.04)
        if all(np.linalg.norm(centre - other) >= radius + other_radius + gap for other, other_radius in placed):
            return centre
    return None


def _touching_place(rng, radius, placed, centre0, half):
    """Like :func:`_free_place`, but half the time right against a placed object: footprint circles
    overestimate boxes, so circles overlapping by up to 30 % make boxes touch or nearly touch."""
    if not placed or rng.random() < 0.5:
        return _free_place(rng, radius, placed, centre0, np.asarray(half) * 1.2)
    for _attempt in range(50):
        other, other_radius = placed[int(rng.integers(len(placed)))]
        direction = rng.normal(size=2)
        centre = other + direction / np.linalg.norm(direction) * (radius + other_radius) * rng.uniform(0.7, 1.0)
        if all(np.linalg.norm(centre - o) >= 0.7 * (radius + r) for o, r in placed):
            return centre
    return None


# --- camera -------------------------------------------------------------------------------------


def look_at(eye, target, roll: float = 0.0) -> np.ndarray:
    """world_T_camera of an optical frame (x right, y down, z forward) at ``eye`` facing ``target``."""
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = eye
    return pose


def _pixel_grid(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))


def _texture_colour(parts: tuple[Part, ...], part_index: np.ndarray, points: np.ndarray) -> np.ndarray:
    colour = np.zeros((len(points), 3))
    for index in np.unique(part_index):
        part, rows = parts[index], part_index == index
        phase = np.sin(points[rows] @ part.wave)
        blend = 0.5 + 0.5 * (np.tanh(part.sharpness * phase) if part.sharpness > 0 else phase)
        colour[rows] = part.colours[0] + blend[:, None] * (part.colours[1] - part.colours[0])
    return colour


def _depth_edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """Pixels next to a depth step larger than ``jump`` (or next to a miss)."""
    filled = np.where(np.isfinite(depth), depth, 1e3)
    edge = np.zeros(depth.shape, bool)
    vertical = np.abs(np.diff(filled, axis=0)) > jump
    horizontal = np.abs(np.diff(filled, axis=1)) > jump
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


def render(
    tabletop: Tabletop,
    camera_pose: np.ndarray,
    camera: Camera = Camera(),
    noise: KinectNoise | None = KinectNoise(),
    crop: TableCrop | None = None,
    seed: int = 0,
) -> Frame:
    """Ray cast one depth frame. Floor and table legs are always cropped away (as in mOSD), table
    points beyond ``crop`` too; ``noise=None`` renders an ideal sensor (exact surface points)."""
    rng = np.random.default_rng(seed)
    scene = o3d.t.geometry.RaycastingScene()
    for part in tabletop.parts:
        scene.add_triangles(o3d.core.Tensor(part.vertices), o3d.core.Tensor(part.triangles))

    u, v = _pixel_grid(camera)
    ray_u, ray_v = u, v
    if noise is not None:
        ray_u = u + rng.normal(size=u.shape) * noise.lateral_jitter_px
        ray_v = v + rng.normal(size=v.shape) * noise.lateral_jitter_px
    directions_cam = np.stack([(ray_u - camera.cx) / camera.fx, (ray_v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    rotation, eye = camera_pose[:3, :3], camera_pose[:3, 3]
    directions = directions_cam.reshape(-1, 3) @ rotation.T
    rays = np.concatenate([np.broadcast_to(eye, directions.shape), directions], axis=1).astype(np.float32)
    hits = scene.cast_rays(o3d.core.Tensor(rays))
    depth = hits["t_hit"].numpy().astype(np.float64)  # ray z components are 1: t is the depth
    part_index = hits["geometry_ids"].numpy().astype(np.int64)
    hit = np.isfinite(depth)
    part_index[~hit] = 0
    points = eye + directions * np.where(hit, depth, 0)[:, None]

    semantic = np.array([p.semantic for p in tabletop.parts])[part_index]
    instance = np.array([p.instance for p in tabletop.parts])[part_index]
    cos = np.abs(np.sum(hits["primitive_normals"].numpy() * directions, axis=1)) / np.linalg.norm(directions, axis=1)
    shade = (0.55 + 0.45 * cos) * rng.uniform(0.8, 1.15)
    rgb = _texture_colour(tabletop.parts, part_index, points) * shade[:, None]
    rgb = np.where(hit[:, None], rgb, 0.0)

    valid = hit.copy()
    if noise is not None:
        valid &= (depth >= noise.min_range) & (depth <= noise.max_range)
        low, high = noise.grazing_cos
        valid &= rng.random(len(depth)) < np.clip((cos - low) / (high - low), 0, 1)
        edges = _depth_edges(np.where(hit, depth, np.inf).reshape(u.shape), noise.edge_jump).reshape(-1)
        valid &= ~(edges & (rng.random(len(depth)) < noise.edge_dropout))
        valid &= rng.random(len(depth)) >= noise.dropout
        valid &= ~_in_projector_shadow(scene, points, valid, eye + rotation[:, 0] * noise.projector_offset)
        depth = np.where(valid, noise.corrupt_depth(np.where(valid, depth, 1.0), rng), np.nan)
        rgb = rgb + rng.normal(size=rgb.shape) * 3.0
    valid &= semantic != UNLABELLED
    valid &= points[:, 2] >= tabletop.table_height - tabletop.table_thickness - 1e-3
    if crop is not None:
        heading = rotation[:2, 2] / np.linalg.norm(rotation[:2, 2])
        offset = points[:, :2] - eye[:2]
        forward = offset @ heading
        lateral = offset @ np.array([-heading[1], heading[0]])
        inside = (forward <= crop.max_forward) & (np.abs(lateral) <= crop.max_lateral)
        valid &= inside | (semantic != TABLE)

    # back-projected through the nominal pixel centre: lateral jitter becomes lateral noise
    pixel_rays = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], -1)
    xyz = np.where(valid[:, None], pixel_rays.reshape(-1, 3) * np.where(valid, depth, 0)[:, None], np.nan)
    shape = (camera.height, camera.width)
    return Frame(
        xyz=xyz.astype(np.float32).reshape(*shape, 3),
        rgb=np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*shape, 3),
        semantic=np.where(valid, semantic, UNLABELLED).reshape(shape),
        instance=np.where(valid, instance, 0).reshape(shape),
        camera_pose=camera_pose,
        camera=camera,
    )


def _in_projector_shadow(scene, points: np.ndarray, valid: np.ndarray, projector: np.ndarray) -> np.ndarray:
    """Points the projector cannot see: something lies between it and them (Kinect shadows)."""
    shadow = np.zeros(len(points), bool)
    rows = np.flatnonzero(valid)
    to_point = points[rows] - projector
    rays = np.concatenate([np.broadcast_to(projector, to_point.shape), to_point], axis=1).astype(np.float32)
    t_hit = scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    shadow[rows] = (1.0 - t_hit) * np.linalg.norm(to_point, axis=1) > 0.005
    return shadow


# --- frames and sequences -----------------------------------------------------------------------


def generate_frame(
    seed: int, camera: Camera = Camera(), noise: KinectNoise | None = KinectNoise(), num_objects: int | None = None,
    varied: bool = False,
) -> Frame:
    """One mOSD-like frame: a camera at the table edge looking down at objects on the table top.

    ``varied`` (training data) widens the view (0.6-1.3 m, 25-60 degrees down, +-30 degrees yaw), packs
    more, often touching, objects into a smaller workspace (see :func:`random_tabletop`)."""
    rng = np.random.default_rng(seed)
    if varied:
        distance, depression = rng.uniform(0.6, 1.3), np.radians(rng.uniform(25, 60))
        yaw = np.radians(rng.uniform(-30, 30))
    else:
        distance, depression = rng.uniform(0.7, 1.1), np.radians(rng.uniform(30, 50))
        yaw = np.radians(rng.uniform(-15, 15))
    reach = distance * np.cos(depression)  # horizontal distance from the eye to the objects
    table_size = (rng.uniform(1.2, 2.0), max(rng.uniform(0.8, 1.2), reach + 0.4))
    eye_xy = np.array([rng.uniform(-0.2, 0.2), -table_size[1] / 2 - rng.uniform(0.0, 0.1)])
    target_xy = eye_xy + reach * np.array([np.sin(yaw), np.cos(yaw)])
    half = (rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.22)) if varied else (0.3, 0.22)
    tabletop = random_tabletop(rng, table_size, tuple(target_xy), half, num_objects=num_objects, varied=varied)
    eye = np.array([*eye_xy, tabletop.table_height + distance * np.sin(depression)])
    target = tabletop.workspace_centre + [*rng.normal(size=2) * 0.04, 0.0]
    pose = look_at(eye, target, roll=np.radians(rng.normal() * 2))
    crop = TableCrop(max_forward=reach + rng.uniform(0.35, 0.6), max_lateral=rng.uniform(0.5, 0.8))
    return render(tabletop, pose, camera, noise, crop, seed=int(rng.integers(2**31)))


def sequence(
    seed: int,
    num_frames: int,
    camera: Camera = Camera(),
    noise: KinectNoise | None = KinectNoise(),
    arc_degrees: float = 360.0,
) -> list[Frame]:
    """A camera circling one table at constant height, looking at its centre (for the demo and for
    accumulating frames); the whole table top stays in the clouds."""
    rng = np.random.default_rng(seed)
    table_size = (rng.uniform(0.8, 1.1), rng.uniform(0.6, 0.8))
    tabletop = random_tabletop(rng, table_size, (0.0, 0.0), workspace_half=(0.25, 0.18))
    distance, depression = rng.uniform(0.9, 1.2), np.radians(rng.uniform(35, 45))
    start = rng.uniform(0, 2 * np.pi)
    frames = []
    for index, azimuth in enumerate(start + np.radians(arc_degrees) * np.arange(num_frames) / num_frames):
        horizontal = distance * np.cos(depression) * np.array([np.cos(azimuth), np.sin(azimuth)])
        eye = tabletop.workspace_centre + [*horizontal, distance * np.sin(depression)]
        frames.append(render(tabletop, look_at(eye, tabletop.workspace_centre), camera, noise, None, seed + 1 + index))
    return frames


def make_training_scenes(count: int, seed: int = 0, width: int = 640, height: int = 480,
                         ideal: bool = False) -> list[Scene]:
    """``count`` independent mOSD-like frames as training scenes, each named by its frame seed
    (``generate_frame(frame_seed)`` re-renders it)."""
    frame_seeds = [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(count)]
    camera, noise = Camera.kinect(width, height), None if ideal else KinectNoise()
    return [generate_frame(frame_seed, camera, noise).to_scene(f"synthetic_{frame_seed}") for frame_seed in frame_seeds]


# --- accumulated maps and the training cache ----------------------------------------------------


def dedupe(scene: Scene, voxel_size: float) -> Scene:
    """Keep the first point of every ``voxel_size`` voxel, as the node's map accumulator does."""
    _, keep, _ = voxelize(scene.xyz, voxel_size)
    return Scene(scene.xyz[keep], scene.rgb[keep], scene.semantic[keep], scene.instance[keep],
                 scene.class_names, scene.instance_classes, scene.name)


def accumulated_map(seed: int, camera: Camera = Camera.kinect(320, 240), noise: KinectNoise | None = KinectNoise(),
                    voxel_size: float = 0.005) -> Scene:
    """Several views of one ``varied`` table merged in the world frame (z up) and voxel-deduplicated:
    what the node sees when it accumulates a camera moving around a table (the demo). 1-10 views
    over an arc of 30-360 degrees, at one height or varying heights, so partial and full maps occur."""
    rng = np.random.default_rng(seed)
    table_size = (rng.uniform(0.7, 1.4), rng.uniform(0.6, 1.0))
    half = (rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.22))
    tabletop = random_tabletop(rng, table_size, (0.0, 0.0), workspace_half=half, varied=True)
    views, arc = int(rng.integers(1, 11)), np.radians(rng.uniform(30, 360))
    start = rng.uniform(0, 2 * np.pi)
    parts = []
    for index in range(views):
        azimuth = start + arc * index / max(views - 1, 1)
        distance, depression = rng.uniform(0.8, 1.3), np.radians(rng.uniform(30, 55))
        horizontal = distance * np.cos(depression) * np.array([np.cos(azimuth), np.sin(azimuth)])
        eye = tabletop.workspace_centre + [*horizontal, distance * np.sin(depression)]
        target = tabletop.workspace_centre + [*rng.normal(size=2) * 0.05, 0.0]
        frame = render(tabletop, look_at(eye, target), camera, noise, None, int(rng.integers(2**31)))
        scene = frame.to_scene("view")
        world = scene.xyz.astype(np.float64) @ frame.camera_pose[:3, :3].T + frame.camera_pose[:3, 3]
        parts.append(replace(scene, xyz=world.astype(np.float32)))
    merged = Scene(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("xyz", "rgb", "semantic", "instance")),
                   CLASS_NAMES, ("object",), f"synthetic_map_{seed}")
    return dedupe(merged, voxel_size)


def _cache_entry(kind: str, seed: int) -> Scene:
    """One training scene of ``kind``: "frame" (classic mOSD-like), "varied" frame or "map"."""
    if kind == "map":
        return accumulated_map(seed)
    scene = generate_frame(seed, varied=kind == "varied").to_scene(f"synthetic_{kind}_{seed}")
    return dedupe(scene, 0.004)  # 4 mm: far below the model's voxel, a third of the memory


def cached_scenes(kind: str, count: int, seed: int, cache_dir: str | None = None) -> list[Scene]:
    """``count`` training scenes of ``kind`` with seeds ``seed ...``; with ``cache_dir`` each one is
    stored there (npz) on first use, so later runs skip the ray casting."""
    scenes = []
    for scene_seed in range(seed, seed + count):
        path = Path(cache_dir) / f"{kind}_{scene_seed}.npz" if cache_dir else None
        if path is not None and path.exists():
            data = np.load(path)
            scene = Scene(data["xyz"], data["rgb"], data["semantic"].astype(np.int64),
                          data["instance"].astype(np.int64),
                          CLASS_NAMES, ("object",), f"synthetic_{kind}_{scene_seed}")
        else:
            scene = _cache_entry(kind, scene_seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, xyz=scene.xyz, rgb=scene.rgb, semantic=scene.semantic.astype(np.int8),
                         instance=scene.instance.astype(np.int16))
        scenes.append(scene)
    return scenes
