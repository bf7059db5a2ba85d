"""A rolling point map in the fixed frame, de-duplicated on a voxel grid.

Each added cloud is cropped (range from the sensor, then a box in the fixed frame), transformed
into the fixed frame and merged into the map: one point per voxel, the newest observation of a
voxel replacing older ones. Points last observed more than ``max_frames`` frames or ``max_age_s``
seconds (of cloud stamps, so bag replay and sim time behave) before the newest cloud are dropped,
and the map never holds more than ``max_points`` points (the oldest observations go first). So the
memory is bounded whatever the window settings: at most ``max_points`` stored points plus one
incoming cloud.

Arrays are never modified in place: :meth:`RollingMap.snapshot` hands out the current arrays
without copying, and a concurrent :meth:`RollingMap.add` replaces them. Nothing here knows ROS.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from mask3d_ros.model.voxel import first_per_key, grid_keys
from mask3d_ros.ros.poses import NS_PER_S, transform_points


@dataclass(frozen=True)
class MapSnapshot:
    """The map at one moment: points in the fixed frame, their colours, and provenance."""

    xyz: np.ndarray  # (N, 3) float32, fixed frame
    rgb: np.ndarray  # (N, 3) uint8
    stamp_ns: int  # stamp of the newest cloud in the map (0 when empty)
    frames: int  # number of clouds that still contribute points
    version: int  # increments whenever the map changes

    def __len__(self) -> int:
        return len(self.xyz)


@dataclass(frozen=True)
class AddResult:
    points_in: int  # finite points offered
    points_kept: int  # after the range / box crop
    map_points: int  # map size after merging
    cleared: bool  # the map was cleared first (time jumped back)


class RollingMap:
    """See the module docstring. Thread-safe: one writer and any number of snapshot readers."""

    def __init__(self, voxel_size: float, max_frames: int = 0, max_age_s: float = 0.0,
                 max_points: int = 500_000, roi_min=None, roi_max=None,
                 min_range: float = 0.0, max_range: float = 0.0, time_jump_reset_s: float = 1.0,
                 seed: int = 0):
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if max_frames < 0 or max_age_s < 0 or max_points < 1:
            raise ValueError("max_frames and max_age_s must be >= 0 and max_points >= 1")
        if (roi_min is None) != (roi_max is None):
            raise ValueError("give both roi_min and roi_max, or neither")
        self.voxel_size = float(voxel_size)
        self.max_frames = int(max_frames)
        self.max_age_ns = int(max_age_s * NS_PER_S)
        self.max_points = int(max_points)
        self.roi_min = None if roi_min is None else np.asarray(roi_min, dtype=np.float32)
        self.roi_max = None if roi_max is None else np.asarray(roi_max, dtype=np.float32)
        if self.roi_min is not None and not np.all(self.roi_min < self.roi_max):
            raise ValueError(f"roi_min {roi_min} must be below roi_max {roi_max} on every axis")
        self.min_range = float(min_range)
        self.max_range = float(max_range)
        self.time_jump_reset_ns = int(time_jump_reset_s * NS_PER_S)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._clear()

    # --- state ---------------------------------------------------------------------------

    def _clear(self) -> None:
        self._keys = np.empty(0, np.int64)
        self._xyz = np.empty((0, 3), np.float32)
        self._rgb = np.empty((0, 3), np.uint8)
        self._stamps = np.empty(0, np.int64)
        self._seqs = np.empty(0, np.int64)
        self._seq = 0
        self._newest_ns = 0
        self._version = getattr(self, "_version", 0) + 1

    def reset(self) -> None:
        with self._lock:
            self._clear()

    @property
    def num_points(self) -> int:
        return len(self._keys)

    @property
    def num_frames(self) -> int:
        seqs = self._seqs
        if not len(seqs):
            return 0
        return int(np.count_nonzero(np.bincount(seqs - seqs.min())))  # seqs span the clouds in the window

    @property
    def version(self) -> int:
        return self._version

    @property
    def newest_stamp_ns(self) -> int:
        return self._newest_ns

    def snapshot(self) -> MapSnapshot:
        with self._lock:
            return MapSnapshot(self._xyz, self._rgb, self._newest_ns, self.num_frames, self._version)

    # --- cropping ------------------------------------------------------------------------

    def crop_sensor(self, xyz: np.ndarray) -> np.ndarray | None:
        """Mask of points within [min_range, max_range] of the sensor (None: no range crop)."""
        if self.min_range <= 0 and self.max_range <= 0:
            return None
        distance2 = np.einsum("ij,ij->i", xyz, xyz)
        keep = distance2 >= self.min_range ** 2
        if self.max_range > 0:
            keep &= distance2 <= self.max_range ** 2
        return keep

    def crop_box(self, xyz: np.ndarray) -> np.ndarray | None:
        """Mask of points inside the region-of-interest box (None: no box)."""
        if self.roi_min is None:
            return None
        return np.all((xyz >= self.roi_min) & (xyz <= self.roi_max), axis=1)

    # --- adding ----------------------------------------------------------------------------

    def add(self, xyz_sensor: np.ndarray, rgb: np.ndarray, sensor_to_fixed: np.ndarray, stamp_ns: int) -> AddResult:
        """Merge one cloud: ``xyz_sensor`` (N, 3) finite points in the sensor frame, ``rgb`` (N, 3)
        uint8, ``sensor_to_fixed`` the 4x4 pose of the sensor frame in the fixed frame."""
        xyz_sensor = np.asarray(xyz_sensor, dtype=np.float32).reshape(-1, 3)
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        if len(rgb) != len(xyz_sensor):
            raise ValueError(f"{len(xyz_sensor)} points but {len(rgb)} colours")
        points_in = len(xyz_sensor)
        keep = self.crop_sensor(xyz_sensor)
        if keep is not None:
            xyz_sensor, rgb = _rows(xyz_sensor, keep), _rows(rgb, keep)
        xyz = transform_points(sensor_to_fixed, xyz_sensor)
        keep = self.crop_box(xyz)
        if keep is not None:
            xyz, rgb = _rows(xyz, keep), _rows(rgb, keep)
        keys, inside = grid_keys(xyz, self.voxel_size)
        if not inside.all():
            xyz, rgb = _rows(xyz, inside), _rows(rgb, inside)
        first = first_per_key(keys)  # one point per voxel within the frame
        keys, xyz, rgb = keys[first], _rows(xyz, first), _rows(rgb, first)
        stamp_ns = int(stamp_ns)

        with self._lock:
            cleared = bool(self._seq) and stamp_ns < self._newest_ns - self.time_jump_reset_ns
            if cleared:
                self._clear()
            self._seq += 1
            self._newest_ns = max(self._newest_ns, stamp_ns)
            stamps, seqs = np.full(len(keys), stamp_ns, np.int64), np.full(len(keys), self._seq, np.int64)
            if self.max_frames == 1 or not len(self._keys):    # nothing to merge: the window is this cloud
                all_keys, all_xyz, all_rgb, all_stamps, all_seqs = keys, xyz, rgb, stamps, seqs
                keep = np.arange(len(keys))
            else:   # new points first, so that the newest observation of a voxel wins
                all_keys = np.concatenate([keys, self._keys])
                all_xyz = np.concatenate([xyz, self._xyz])
                all_rgb = np.concatenate([rgb, self._rgb])
                all_stamps = np.concatenate([stamps, self._stamps])
                all_seqs = np.concatenate([seqs, self._seqs])
                keep = first_per_key(all_keys)
            keep = keep[self._in_window(all_stamps[keep], all_seqs[keep])]
            keep = self._cap(keep, len(keys), all_stamps)
            if len(keep) < len(all_keys):  # else keep is every row, in order (the one-frame window): no copies
                all_keys, all_xyz, all_rgb = all_keys[keep], _rows(all_xyz, keep), _rows(all_rgb, keep)
                all_stamps, all_seqs = all_stamps[keep], all_seqs[keep]
            self._keys, self._xyz, self._rgb = all_keys, all_xyz, all_rgb
            self._stamps, self._seqs = all_stamps, all_seqs
            self._version += 1
            return AddResult(points_in, len(keys), len(self._keys), cleared)

    def _in_window(self, stamps: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        window = np.ones(len(stamps), bool)
        if self.max_frames > 0:
            window &= seqs > self._seq - self.max_frames
        if self.max_age_ns > 0:
            window &= stamps >= self._newest_ns - self.max_age_ns
        return window

    def _cap(self, keep: np.ndarray, new_count: int, stamps: np.ndarray) -> np.ndarray:
        """At most ``max_points`` of ``keep``: newest observations first, a uniform random subset
        of the newest cloud if it alone is too large."""
        if len(keep) <= self.max_points:
            return keep
        new = keep[keep < new_count]
        if len(new) >= self.max_points:
            return np.sort(self._rng.choice(new, self.max_points, replace=False))
        old = keep[keep >= new_count]
        order = np.argsort(-stamps[old], kind="stable")[: self.max_points - len(new)]
        return np.concatenate([new, np.sort(old[order])])


def _rows(array: np.ndarray, which: np.ndarray) -> np.ndarray:
    """``array[which]`` for a bool mask or indices over the rows of ``[N, C]`` (numpy's take and
    compress are several times faster than indexing for narrow rows)."""
    if which.dtype == bool:
        return np.compress(which, array, axis=0)
    return np.take(array, which, axis=0)
