"""Training augmentations for single-view tabletop clouds.

A subset of the official Mask3D augmentations that fits one depth-camera view: random scale,
mirror, small rotations about every axis (the official x/y tilt of +-pi/24, plus a bounded roll
about the viewing axis instead of a full turn about gravity, which a camera frame does not know),
a random sub-voxel shift so the voxel grid cuts objects differently each time, random point
dropout, and the colour jitter the official config applies (brightness/contrast and RGB shift,
each with probability 0.5). Labels never change, so they are not passed in.

Accumulated maps (world frame) and camera frames alike have a table: given its normal (``up``,
see :func:`table_normal`), ``up_rotation`` turns the cloud about it by up to that angle, so the
model meets every heading (a camera circling a table sees the objects from all sides).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class AugmentConfig:
    scale: float = 0.1                 # uniform in [1 - scale, 1 + scale]
    tilt: float = np.pi / 24           # rotation about x and y, radians (official value)
    roll: float = np.pi / 6            # rotation about the viewing axis z, radians
    mirror_x: bool = True
    shift: float = 0.05                # metres, uniform per axis
    keep_fraction: tuple[float, float] = (0.7, 1.0)
    brightness_contrast: float = 0.2   # +- factor, probability 0.5
    rgb_shift: int = 20                # +- per channel, probability 0.5
    up_rotation: float = 0.0           # radians about the table normal when one is given (2 pi: any)


def table_normal(xyz: np.ndarray, table: np.ndarray, max_points: int = 5000) -> np.ndarray | None:
    """Unit normal of the least-squares plane through the ``table`` points (None if too few):
    the axis to turn about, in whatever frame the cloud is."""
    points = xyz[table]
    if len(points) < 50:
        return None
    points = points[:: max(1, len(points) // max_points)].astype(np.float64)
    return np.linalg.svd(points - points.mean(0), full_matrices=False)[2][2]


def _about_axis(axis: np.ndarray, angle: float) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(axis, float) / np.linalg.norm(axis) * angle).as_matrix()


def augment_cloud(xyz: np.ndarray, rgb: np.ndarray, rng: np.random.Generator,
                  config: AugmentConfig = AugmentConfig(), up: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return augmented (xyz float32, rgb uint8) and the indices of the points kept; ``up`` is the
    table normal for ``config.up_rotation`` (no turn about it when None)."""
    n = xyz.shape[0]
    keep = np.sort(rng.choice(n, size=max(1, int(n * rng.uniform(*config.keep_fraction))), replace=False))
    xyz = xyz[keep].astype(np.float64)
    rgb = rgb[keep].astype(np.float32)

    centre = xyz.mean(0)
    angles = rng.uniform(-1, 1, 3) * np.array([config.tilt, config.tilt, config.roll])
    transform = Rotation.from_euler("xyz", angles).as_matrix() * rng.uniform(1 - config.scale, 1 + config.scale)
    if config.mirror_x and rng.random() < 0.5:
        transform = transform @ np.diag([-1.0, 1.0, 1.0])
    if up is not None and config.up_rotation > 0:
        transform = transform @ _about_axis(up, rng.uniform(-1, 1) * config.up_rotation)
    xyz = (xyz - centre) @ transform.T + centre + rng.uniform(-config.shift, config.shift, 3)

    if rng.random() < 0.5:
        contrast = 1 + rng.uniform(-config.brightness_contrast, config.brightness_contrast)
        brightness = 255 * rng.uniform(-config.brightness_contrast, config.brightness_contrast)
        rgb = rgb * contrast + brightness
    if rng.random() < 0.5:
        rgb = rgb + rng.integers(-config.rgb_shift, config.rgb_shift + 1, 3)
    return xyz.astype(np.float32), np.clip(rgb, 0, 255).astype(np.uint8), keep
