"""Where each cloud was taken: the pose of a cloud's frame in the fixed frame.

One small interface, :class:`PoseSource`, hides how that pose is found, so the accumulation logic
is tested with injected poses and the node does not care which source is configured:

* :class:`IdentityPoses` (``pose_source: none``): every cloud stays in its own frame;
* :class:`StaticPoses`: fixed poses per frame id (tests, static sensors);
* :class:`OdometryPoses` (``pose_source: odometry``): a buffer of nav_msgs/Odometry samples (the
  fixed-frame pose of a body frame), interpolated at the cloud stamp (linear in position, slerp in
  rotation), composed with a static body-to-sensor extrinsic;
* :class:`TfPoses` (``pose_source: tf``): a tf2_ros buffer lookup at the cloud stamp.

:class:`PendingPoses` holds the clouds whose pose has not arrived yet, so that nobody blocks
waiting for one: they are retried when new pose data arrives (or on a short timer) and given up
after their timeout.

Transforms are 4x4 float64 numpy matrices ``T_a_b`` mapping points in frame b to frame a.
Stamps are integer nanoseconds. Nothing here imports rclpy; tf2_ros is imported lazily.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

NS_PER_S = 1_000_000_000


class PoseUnavailable(Exception):
    """No pose for this cloud; the message says why (it is shown to the user).

    ``pending`` is True when the pose may still come (odometry or TF newer than the stamp has not
    arrived yet), so a later lookup can succeed; False when waiting cannot help.
    """

    def __init__(self, message: str, pending: bool = False):
        super().__init__(message)
        self.pending = pending


class PoseSource(Protocol):
    """Pose of ``frame_id`` in the fixed frame at ``stamp_ns``.

    ``lookup`` returns a 4x4 matrix ``T_fixed_frame`` or raises :class:`PoseUnavailable`. It never
    blocks: it marks the error ``pending`` when the data may still arrive, and
    :class:`PendingPoses` retries it later.
    """

    def lookup(self, frame_id: str, stamp_ns: int) -> np.ndarray: ...


# --- transform helpers ----------------------------------------------------------------------


def matrix_from_pose(translation: Sequence[float], quaternion_xyzw: Sequence[float]) -> np.ndarray:
    """4x4 matrix from a translation and a (x, y, z, w) quaternion (normalised here)."""
    q = np.asarray(quaternion_xyzw, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"quaternion {list(quaternion_xyzw)} has zero or non-finite norm")
    t = np.asarray(translation, dtype=np.float64)
    if t.shape != (3,) or not np.isfinite(t).all():
        raise ValueError(f"translation {list(translation)} must be 3 finite numbers")
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_quat(q / norm).as_matrix()
    matrix[:3, 3] = t
    return matrix


def pose_from_matrix(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(translation, quaternion xyzw) of a 4x4 rigid transform."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix[:3, 3].copy(), Rotation.from_matrix(matrix[:3, :3]).as_quat()


def matrix_from_transform_msg(transform) -> np.ndarray:
    """4x4 matrix from a geometry_msgs/Transform (or anything with .translation/.rotation)."""
    t, r = transform.translation, transform.rotation
    return matrix_from_pose((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def matrix_from_pose_msg(pose) -> np.ndarray:
    """4x4 matrix from a geometry_msgs/Pose (or anything with .position/.orientation)."""
    p, q = pose.position, pose.orientation
    return matrix_from_pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def transform_points(matrix: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to (N, 3) points; float32 result, always a new array.

    Written column by column: a (N, 3) x (3, 3) BLAS product is up to 30x slower for this shape.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    xyz = np.asarray(xyz, dtype=np.float32)
    if np.array_equal(matrix, np.eye(4)):
        return xyz.copy()
    r = matrix[:3, :3].astype(np.float32)
    t = matrix[:3, 3].astype(np.float32)
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out = np.empty_like(xyz)
    for i in range(3):
        column = out[:, i]
        np.multiply(x, r[i, 0], out=column)
        column += y * r[i, 1]
        column += z * r[i, 2]
        column += t[i]
    return out


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (sec, nanosec) to integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def format_stamp(stamp_ns: int) -> str:
    return f"{stamp_ns / NS_PER_S:.3f} s"


# --- simple sources ------------------------------------------------------------------------


class IdentityPoses:
    """``pose_source: none``: every cloud is used in its own frame."""

    def lookup(self, frame_id: str, stamp_ns: int) -> np.ndarray:
        return np.eye(4)


class StaticPoses:
    """Fixed poses per frame id, or a callable ``(frame_id, stamp_ns) -> 4x4 or None``."""

    def __init__(self, poses=None):
        self._poses = poses if poses is not None else {}

    def set(self, frame_id: str, matrix: np.ndarray) -> None:
        self._poses[frame_id] = np.asarray(matrix, dtype=np.float64)

    def lookup(self, frame_id: str, stamp_ns: int) -> np.ndarray:
        pose = self._poses(frame_id, stamp_ns) if callable(self._poses) else self._poses.get(frame_id)
        if pose is None:
            raise PoseUnavailable(f"no pose for frame {frame_id!r} at {format_stamp(stamp_ns)}")
        return np.asarray(pose, dtype=np.float64)


# --- odometry ------------------------------------------------------------------------------


class OdometryBuffer:
    """Time-ordered fixed-frame poses of a body frame, interpolated at any stamp inside them.

    Thread-safe: one thread may add samples while another interpolates. Memory is bounded by ``duration_s`` of
    samples (and ``max_samples``). A stamp that jumps back by more than ``duration_s`` (a bag restarted, sim
    time reset) clears the buffer.
    """

    def __init__(self, duration_s: float = 10.0, max_gap_s: float = 0.5, max_samples: int = 100_000):
        if duration_s <= 0 or max_gap_s <= 0:
            raise ValueError("duration_s and max_gap_s must be > 0")
        self.duration_ns = int(duration_s * NS_PER_S)
        self.max_gap_ns = int(max_gap_s * NS_PER_S)
        self.max_samples = max_samples
        self._stamps: list[int] = []
        self._translations: list[np.ndarray] = []
        self._quaternions: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_ns(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._translations.clear()
            self._quaternions.clear()

    def add(self, stamp_ns: int, translation, quaternion_xyzw) -> None:
        t = np.asarray(translation, dtype=np.float64)
        q = np.asarray(quaternion_xyzw, dtype=np.float64)
        norm = np.linalg.norm(q)
        if t.shape != (3,) or q.shape != (4,) or not (np.isfinite(t).all() and np.isfinite(norm)) or norm < 1e-9:
            raise ValueError(f"invalid odometry pose: translation {t.tolist()}, quaternion {q.tolist()}")
        q = q / norm
        with self._lock:
            if self._stamps and stamp_ns < self._stamps[-1] - self.duration_ns:
                self._stamps.clear()
                self._translations.clear()
                self._quaternions.clear()
            i = bisect.bisect_right(self._stamps, stamp_ns)
            if i > 0 and self._stamps[i - 1] == stamp_ns:
                self._translations[i - 1], self._quaternions[i - 1] = t, q
            else:
                self._stamps.insert(i, stamp_ns)
                self._translations.insert(i, t)
                self._quaternions.insert(i, q)
            horizon = self._stamps[-1] - self.duration_ns
            drop = bisect.bisect_left(self._stamps, horizon)
            drop = max(drop, len(self._stamps) - self.max_samples)
            if drop > 0:
                del self._stamps[:drop], self._translations[:drop], self._quaternions[:drop]

    def interpolate(self, stamp_ns: int) -> np.ndarray:
        """4x4 pose at ``stamp_ns``; raises PoseUnavailable outside the buffer or across a gap."""
        with self._lock:
            stamps = self._stamps
            if not stamps:
                raise PoseUnavailable("no odometry received yet", pending=True)
            if stamp_ns < stamps[0]:
                raise PoseUnavailable(
                    f"cloud stamp {format_stamp(stamp_ns)} is older than the oldest odometry"
                    f" ({format_stamp(stamps[0])}); raise odometry.buffer_duration or check the clocks")
            if stamp_ns > stamps[-1]:
                raise PoseUnavailable(
                    f"cloud stamp {format_stamp(stamp_ns)} is newer than the newest odometry"
                    f" ({format_stamp(stamps[-1])}, {(stamp_ns - stamps[-1]) / 1e6:.0f} ms behind);"
                    " is odometry publishing, and are both stamped by the same clock?", pending=True)
            i = bisect.bisect_left(stamps, stamp_ns)
            if stamps[i] == stamp_ns:
                return matrix_from_pose(self._translations[i], self._quaternions[i])
            t0, t1 = stamps[i - 1], stamps[i]
            if t1 - t0 > self.max_gap_ns:
                raise PoseUnavailable(
                    f"odometry gap of {(t1 - t0) / 1e6:.0f} ms around {format_stamp(stamp_ns)}"
                    f" exceeds odometry.max_gap ({self.max_gap_ns / 1e6:.0f} ms)")
            a = (stamp_ns - t0) / (t1 - t0)
            translation = (1.0 - a) * self._translations[i - 1] + a * self._translations[i]
            rotations = Rotation.from_quat(np.stack([self._quaternions[i - 1], self._quaternions[i]]))
            quaternion = Slerp([0.0, 1.0], rotations)([a]).as_quat()[0]
            return matrix_from_pose(translation, quaternion)


class OdometryPoses:
    """``pose_source: odometry``: ``T_fixed_sensor(t) = T_fixed_body(t) @ T_body_sensor``.

    ``sensor_frame`` (optional) is the only cloud frame accepted: the extrinsic is only valid for
    the frame it was measured for.
    """

    def __init__(self, buffer: OdometryBuffer, body_to_sensor: np.ndarray | None = None, sensor_frame: str = ""):
        self.buffer = buffer
        self.body_to_sensor = np.eye(4) if body_to_sensor is None else np.asarray(body_to_sensor, dtype=np.float64)
        self.sensor_frame = sensor_frame

    def lookup(self, frame_id: str, stamp_ns: int) -> np.ndarray:
        if self.sensor_frame and frame_id != self.sensor_frame:
            raise PoseUnavailable(
                f"cloud frame {frame_id!r} is not odometry.sensor_frame {self.sensor_frame!r},"
                " the frame the body-to-sensor extrinsic describes")
        return self.buffer.interpolate(stamp_ns) @ self.body_to_sensor


# --- tf2 -------------------------------------------------------------------------------------


def import_tf2():
    """The tf2_ros module, or an ImportError that says what to do."""
    try:
        import tf2_ros  # noqa: PLC0415 - optional dependency, present on ROS 2 installs only
    except ImportError as error:
        raise ImportError(
            "pose_source 'tf' needs the tf2_ros Python package, which is part of every ROS 2 install"
            " (apt install ros-$ROS_DISTRO-tf2-ros) but is not available on PyPI and could not be"
            f" imported here ({error}). Source your ROS 2 setup, or use pose_source 'odometry' or 'none'."
        ) from error
    return tf2_ros


class TfPoses:
    """``pose_source: tf``: lookup of cloud frame -> ``fixed_frame`` at the cloud stamp.

    ``buffer`` is a ``tf2_ros.Buffer`` fed by a ``TransformListener`` (the node makes both), or
    any object with ``lookup_transform(target, source, time)`` (tf2's default timeout of zero: it
    answers at once). ``make_time(stamp_ns)`` builds the time argument (an ``rclpy.time.Time``), so
    this module stays free of rclpy.
    """

    def __init__(self, buffer, fixed_frame: str, make_time):
        self.buffer = buffer
        self.fixed_frame = fixed_frame
        self._make_time = make_time

    def lookup(self, frame_id: str, stamp_ns: int) -> np.ndarray:
        try:
            stamped = self.buffer.lookup_transform(self.fixed_frame, frame_id, self._make_time(stamp_ns))
        except Exception as error:  # tf2 raises LookupException, ExtrapolationException, ...
            kind = type(error).__name__
            raise PoseUnavailable(  # the transform may still arrive: a retry may succeed
                f"TF {frame_id!r} -> {self.fixed_frame!r} at {format_stamp(stamp_ns)} unavailable"
                f" ({kind}: {str(error).strip() or 'no detail'})", pending=True) from error
        return matrix_from_transform_msg(stamped.transform)


# --- clouds waiting for their pose ------------------------------------------------------------


@dataclass
class PoseOutcome:
    """A cloud that left :class:`PendingPoses`: with its ``pose``, or with the ``error`` that ended
    its wait: a :class:`PoseUnavailable` (timed out, waiting cannot help, or pushed out of a full
    queue), or any other exception the source raised (a bug; the caller reports it)."""

    frame_id: str
    stamp_ns: int
    item: Any
    pose: np.ndarray | None = None
    error: Exception | None = None
    waited_s: float = 0.0


@dataclass
class _Waiting:
    frame_id: str
    stamp_ns: int
    item: Any
    since: float
    deadline: float


class PendingPoses:
    """Clouds (any ``item``) whose pose is not available yet, in a bounded first-in first-out queue.

    :meth:`offer` looks the pose up without blocking; a cloud whose pose may still come
    (:attr:`PoseUnavailable.pending`) waits until :meth:`poll` finds it (call it when pose data
    arrives, and on a short timer while :attr:`waiting`), and is given up after ``timeout_s``.
    Outcomes come out in arrival order: a cloud never overtakes an older one still waiting (the
    map is accumulated in stamp order, as when each cloud waited in its callback). At most
    ``limit`` clouds wait; the oldest is given up when a new one would exceed it.

    Not thread-safe: the caller serialises :meth:`offer`, :meth:`poll` and :meth:`clear` (and
    handles the outcomes of one call before the next). An exception other than
    :class:`PoseUnavailable` from the source (a bug) ends that cloud's wait with it as the error,
    and the rest wait for the next call.
    """

    def __init__(self, source: PoseSource, limit: int = 8, clock: Callable[[], float] = time.monotonic):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.source = source
        self.limit = limit
        self._clock = clock
        self._queue: deque[_Waiting] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def waiting(self) -> bool:
        return bool(self._queue)

    def offer(self, frame_id: str, stamp_ns: int, item: Any, timeout_s: float) -> list[PoseOutcome]:
        """Queue a cloud and return every outcome now known, in arrival order (this cloud's too
        when its pose is available, or unavailable for good)."""
        now = self._clock()
        out = []
        if len(self._queue) >= self.limit:
            old = self._queue.popleft()
            out.append(self._outcome(old, now, error=PoseUnavailable(
                f"no pose within {now - old.since:.2f} s and {self.limit} newer clouds waiting for theirs"
                " (the pending queue is full)")))
        self._queue.append(_Waiting(frame_id, stamp_ns, item, now, now + max(float(timeout_s), 0.0)))
        out.extend(self._drain(now))
        return out

    def poll(self) -> list[PoseOutcome]:
        """Retry the waiting clouds (oldest first); the outcomes now known, in arrival order."""
        return self._drain(self._clock()) if self._queue else []

    def clear(self) -> list[Any]:
        """Forget every waiting cloud (e.g. a map reset); returns their items."""
        items = [w.item for w in self._queue]
        self._queue.clear()
        return items

    def _drain(self, now: float) -> list[PoseOutcome]:
        out = []
        while self._queue:
            head = self._queue[0]
            try:
                pose = self.source.lookup(head.frame_id, head.stamp_ns)
            except PoseUnavailable as error:
                if getattr(error, "pending", False) and now < head.deadline:
                    break  # the oldest still waits, and so do the newer ones behind it
                self._queue.popleft()
                out.append(self._outcome(head, now, error=error))
                continue
            except Exception as error:  # noqa: BLE001 - a bug in the source: this cloud is lost, not the queue
                self._queue.popleft()
                out.append(self._outcome(head, now, error=error))
                break
            self._queue.popleft()
            out.append(self._outcome(head, now, pose=pose))
        return out

    @staticmethod
    def _outcome(waiting: _Waiting, now: float, pose=None, error=None) -> PoseOutcome:
        return PoseOutcome(waiting.frame_id, waiting.stamp_ns, waiting.item, pose, error, max(0.0, now - waiting.since))
