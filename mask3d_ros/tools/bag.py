"""Rosbag2 files as streams of raw CDR messages, and the ground truth kept beside a bag.

Replaying and recording move bytes: nothing is decoded, so a bag plays back exactly as it was
recorded and a topic can be copied even when its type has no Python class here. Reading goes
through ``rosbags`` (sqlite3 and mcap rosbag2 as ``ros2 bag record`` writes them, split bags too,
or a bare ``.mcap``/``.db3`` file); writing makes an mcap rosbag2 with each type's message
definition and RIHS01 hash, so ``ros2 bag play``, ``ros2 bag info`` and Foxglove read it.

Message definitions come from rosbags' Jazzy type store; a type it does not know (this project's
own ``mask3d_ros/msg/*``) is loaded from the ``share/<package>/msg/<Type>.msg`` of an installed
package. tf2_msgs, which has no rclpy class on PyPI, is built and serialized with the type store.

Ground truth (``<bag>/ground_truth.npz``, see :class:`GroundTruth`) holds per-point labels of the
cloud frames, keyed by their header stamp, for scoring what a node answered while the bag played.
Nothing here imports rclpy at import time.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Nodetype, Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

NS_PER_S = 1_000_000_000
GROUND_TRUTH_FILE = "ground_truth.npz"
GROUND_TRUTH_FORMAT = "mask3d_ros.ground_truth/1"
TF_STATIC_TOPIC = "/tf_static"
METADATA_VERSION = 8
"""rosbag2 metadata version written: 8 keeps QoS as the YAML string Humble and later all parse."""
TRANSIENT_LOCAL_DEPTH_MAX = 1000


class BagMessage(NamedTuple):
    """One serialized message: ``data`` is CDR exactly as on the wire; log time in ns."""

    topic: str
    msgtype: str
    log_time_ns: int
    data: bytes


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    message_count: int
    offered_qos: tuple[Qos, ...]  # as recorded in metadata.yaml; empty when the recorder left none


@dataclass(frozen=True)
class BagInfo:
    path: Path
    start_ns: int  # log time of the first message
    end_ns: int  # log time of the last message
    message_count: int
    topics: dict[str, TopicInfo]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_S


# --- reading -------------------------------------------------------------------------------


def _topic_infos(reader: Reader) -> dict[str, TopicInfo]:
    infos = {}
    for connection in sorted(reader.connections, key=lambda c: c.topic):
        known = infos.get(connection.topic)
        if known is not None and known.msgtype != connection.msgtype:
            raise ValueError(f"{reader.path}: topic {connection.topic} holds two types,"
                             f" {known.msgtype} and {connection.msgtype}")
        offered = tuple(getattr(connection.ext, "offered_qos_profiles", ()) or ())
        infos[connection.topic] = TopicInfo(
            connection.topic, connection.msgtype,
            connection.msgcount + (known.message_count if known else 0),
            (known.offered_qos if known else ()) + offered)
    return infos


def bag_info(path: str | os.PathLike) -> BagInfo:
    """Topics, types, counts and time span of a bag (a rosbag2 folder or a bare .mcap/.db3)."""
    with Reader(Path(path)) as reader:
        end = reader.end_time - 1 if reader.message_count else reader.start_time  # rosbags: end is exclusive
        return BagInfo(Path(path), reader.start_time, end, reader.message_count, _topic_infos(reader))


def read_messages(path: str | os.PathLike, topics: Iterable[str] | None = None,
                  start_offset_s: float = 0.0) -> Iterator[BagMessage]:
    """Messages of ``topics`` (all when None) in log-time order, from ``start_offset_s`` after the
    bag's first message on. Streams: at most one storage chunk is held in memory."""
    with Reader(Path(path)) as reader:
        wanted = None if topics is None else set(topics)
        if wanted is not None:
            missing = wanted - {c.topic for c in reader.connections}
            if missing:
                raise ValueError(f"{path}: no topic {', '.join(sorted(missing))};"
                                 f" it has {', '.join(sorted({c.topic for c in reader.connections}))}")
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        if not connections:
            return
        start = reader.start_time + round(start_offset_s * NS_PER_S) if start_offset_s > 0 else None
        for connection, log_time_ns, data in reader.messages(connections, start=start):
            yield BagMessage(connection.topic, connection.msgtype, log_time_ns, bytes(data))


# --- types and serialization ----------------------------------------------------------------


@functools.cache
def typestore():
    """The rosbags Jazzy type store (shared: types loaded from .msg files are registered in it)."""
    return get_typestore(Stores.ROS2_JAZZY)


def _msg_file(msgtype: str) -> Path | None:
    """``share/<package>/msg/<Type>.msg`` of an installed package (ament prefixes, then this venv)."""
    package, _, name = msgtype.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        candidate = Path(prefix, "share", package, "msg", f"{name}.msg")
        if candidate.is_file():
            return candidate
    return None


def ensure_type(msgtype: str, store=None) -> None:
    """Make ``msgtype`` (and the types it uses) known to the type store, from installed .msg files.

    Raises KeyError naming the type when neither the store nor any installed package defines it.
    """
    store = typestore() if store is None else store
    pending, parsed = [msgtype], {}
    while pending:
        name = pending.pop()
        if name in store.types or name in parsed:
            continue
        msg_file = _msg_file(name)
        if msg_file is None:
            raise KeyError(f"message type {name} is unknown to the rosbags type store and no installed"
                           " package has its .msg file (is the package built and its prefix in AMENT_PREFIX_PATH?)")
        parsed.update(get_types_from_msg(msg_file.read_text(), name))
        _constants, fields = parsed[name]
        pending.extend(_referenced_types(fields))
    if parsed:
        store.register(parsed)


def _referenced_types(fields) -> list[str]:
    """Message types named by rosbags field definitions (directly or as array/sequence elements)."""
    names = []
    for _field_name, (node_type, detail) in fields:
        if node_type in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            node_type, detail = detail[0]
        if node_type == Nodetype.NAME:
            names.append(detail)
    return names


def message_definition(msgtype: str, store=None) -> tuple[str, str]:
    """(ros2msg definition text, RIHS01 hash) of ``msgtype``, what an mcap schema needs."""
    store = typestore() if store is None else store
    ensure_type(msgtype, store)
    return store.generate_msgdef(msgtype, ros_version=2)[0], store.hash_rihs01(msgtype)


def serialize_rclpy(message) -> bytes:
    """CDR of an rclpy message (what a publisher sends)."""
    return serialize_message(message)


def deserialize_rclpy(data: bytes, msgtype: str):
    """An rclpy message from CDR; ImportError when this environment has no class for the type."""
    message_class = python_message_class(msgtype)
    if message_class is None:
        raise ImportError(f"no Python class for {msgtype} in this environment")
    return deserialize_message(data, message_class)


def serialize_typestore(message, msgtype: str | None = None) -> bytes:
    """CDR of a rosbags type-store message (for types rclpy lacks here, e.g. tf2_msgs)."""
    return bytes(typestore().serialize_cdr(message, msgtype or message.__msgtype__))


def deserialize_typestore(data: bytes, msgtype: str):
    ensure_type(msgtype)
    return typestore().deserialize_cdr(data, msgtype)


def python_message_class(msgtype: str):
    """The generated Python class of ``pkg/msg/Type`` (or ``pkg/Type``), None when not installed."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (rclpy or type-store) to integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def split_stamp(time_ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a time in ns, nanosec in [0, 1e9)."""
    return divmod(int(time_ns), NS_PER_S)


# --- QoS ------------------------------------------------------------------------------------


def qos(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> Qos:
    """A QoS profile as rosbag2 metadata stores it (durations left at the default)."""
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


@dataclass(frozen=True)
class TopicQos:
    """The few QoS choices a player or recorder makes for one topic."""

    reliable: bool = True
    transient_local: bool = False
    depth: int = 10


def playback_qos(topic: TopicInfo) -> TopicQos:
    """Reliable (matches every subscriber); transient-local for /tf_static or when the recorded
    publishers were, with a history deep enough to hand late joiners every message."""
    latched = topic.name == TF_STATIC_TOPIC or any(
        q.durability == QosDurability.TRANSIENT_LOCAL for q in topic.offered_qos)
    if latched:
        return TopicQos(True, True, max(1, min(topic.message_count, TRANSIENT_LOCAL_DEPTH_MAX)))
    return TopicQos(True, False, 10)


def recording_qos(offered: Sequence[Qos], depth: int = 100) -> TopicQos:
    """A subscription every publisher matches: best-effort if any offers best effort, transient-local
    only if all offer it (so latched messages sent before the recorder started are kept)."""
    best_effort = any(q.reliability == QosReliability.BEST_EFFORT for q in offered)
    latched = bool(offered) and all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    return TopicQos(not best_effort, latched, depth)


def rclpy_qos(choice: TopicQos):
    """The rclpy QoSProfile of a :class:`TopicQos`."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=choice.depth,
        reliability=ReliabilityPolicy.RELIABLE if choice.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if choice.transient_local else DurabilityPolicy.VOLATILE)


# --- writing --------------------------------------------------------------------------------


class BagWriter:
    """Write serialized messages into a new rosbag2 folder (mcap by default).

    Topics are added on their first message; call :meth:`add_topic` first to record the QoS the
    publisher offered (``ros2 bag play`` uses it, e.g. transient-local for /tf_static).
    ``compress`` zstd-compresses mcap chunks (``ros2 bag play`` and Foxglove read them).
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap", compress: bool = False):
        self.path = Path(path)
        self._writer = Writer(self.path, version=METADATA_VERSION, storage_plugin=StoragePlugin[storage.upper()])
        if compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str, offered_qos: Sequence[Qos] = ()) -> None:
        known = self._connections.get(topic)
        if known is not None:
            if known.msgtype != msgtype:
                raise ValueError(f"topic {topic} was added as {known.msgtype}, not {msgtype}")
            return
        msgdef, rihs01 = message_definition(msgtype)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, msgdef=msgdef, rihs01=rihs01, offered_qos_profiles=list(offered_qos))
        self.counts[topic] = 0

    def write(self, topic: str, msgtype: str, log_time_ns: int, data: bytes) -> None:
        self.add_topic(topic, msgtype)
        self._writer.write(self._connections[topic], log_time_ns, data)
        self.counts[topic] += 1

    def write_message(self, message: BagMessage) -> None:
        self.write(message.topic, message.msgtype, message.log_time_ns, message.data)

    def close(self) -> None:
        """Write the index and metadata.yaml; a bag is only readable after this."""
        if self._writer.storage is not None:
            self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_bag(path: str | os.PathLike, messages: Iterable[BagMessage],
              offered_qos: dict[str, Sequence[Qos]] | None = None, storage: str = "mcap",
              compress: bool = False) -> dict[str, int]:
    """Write a stream of messages as a new bag; returns the message count per topic.

    ``offered_qos``: topic -> the QoS profiles its publisher offered, stored in the metadata.
    """
    with BagWriter(path, storage, compress) as writer:
        pending_qos = dict(offered_qos or {})
        for message in messages:
            if message.topic in pending_qos:
                writer.add_topic(message.topic, message.msgtype, pending_qos.pop(message.topic))
            writer.write_message(message)
        return dict(writer.counts)


# --- ground truth ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTruth:
    """Labels of one cloud, shaped like it: (height, width), row-major like PointCloud2 data."""

    semantic: np.ndarray  # int64, index into class_names, -1 unlabelled (also points without x, y, z)
    instance: np.ndarray  # int64, 0 = no instance; ids are consistent across frames of one scene
    sensor_pose: np.ndarray | None  # float64 [4, 4] fixed_frame_T_cloud_frame, None when unknown


@dataclass(frozen=True)
class GroundTruth:
    """Per-point labels of the clouds on ``topic``, keyed by header stamp (ns).

    On disk (``<bag>/ground_truth.npz``, numpy ``savez_compressed``):

    * ``format`` = ``"mask3d_ros.ground_truth/1"``; ``topic``, ``frame_id`` (the clouds'),
      ``fixed_frame`` (frame of ``sensor_poses``, "" when there are none): 0-d str arrays;
    * ``class_names``, ``instance_classes``: str [C], [K];
    * ``stamps``: int64 [F], header stamps in bag order; ``shapes``: int64 [F, 2] (height, width);
    * ``semantic`` int16, ``instance`` int32: every frame's labels flattened and concatenated
      (frame f covers ``height * width`` entries after the previous frames');
    * ``sensor_poses``: float64 [F, 4, 4], only when poses are known.
    """

    topic: str
    frame_id: str
    class_names: tuple[str, ...]
    instance_classes: tuple[str, ...]
    stamps: np.ndarray
    semantic: tuple[np.ndarray, ...]
    instance: tuple[np.ndarray, ...]
    fixed_frame: str = ""
    sensor_poses: np.ndarray | None = None

    def __post_init__(self):
        if not (len(self.stamps) == len(self.semantic) == len(self.instance)):
            raise ValueError("ground truth needs one stamp, semantic and instance array per frame")
        if any(labels.ndim != 2 for labels in self.semantic + self.instance):
            raise ValueError("ground-truth labels are (height, width) per frame; (1, N) for an unorganised cloud")
        if len(set(self.stamps.tolist())) != len(self.stamps):
            raise ValueError("ground truth stamps must be unique: they key the frames")

    def frame(self, stamp: int) -> FrameTruth:
        """Labels of the cloud stamped ``stamp`` ns; KeyError when no frame has that stamp."""
        matches = np.flatnonzero(self.stamps == stamp)
        if not len(matches):
            raise KeyError(f"no ground-truth frame stamped {stamp} ns")
        index = int(matches[0])
        pose = None if self.sensor_poses is None else self.sensor_poses[index]
        return FrameTruth(self.semantic[index], self.instance[index], pose)

    def save(self, bag_path: str | os.PathLike) -> Path:
        path = Path(bag_path) / GROUND_TRUTH_FILE
        extra = {} if self.sensor_poses is None else {"sensor_poses": np.asarray(self.sensor_poses, np.float64)}
        np.savez_compressed(
            path, format=np.array(GROUND_TRUTH_FORMAT), topic=np.array(self.topic), frame_id=np.array(self.frame_id),
            fixed_frame=np.array(self.fixed_frame), class_names=np.array(self.class_names, dtype=str),
            instance_classes=np.array(self.instance_classes, dtype=str),
            stamps=np.asarray(self.stamps, np.int64), shapes=np.array([s.shape for s in self.semantic], np.int64),
            semantic=np.concatenate([s.reshape(-1) for s in self.semantic]).astype(np.int16),
            instance=np.concatenate([i.reshape(-1) for i in self.instance]).astype(np.int32), **extra)
        return path

    @staticmethod
    def load(bag_path: str | os.PathLike) -> "GroundTruth":
        path = Path(bag_path) / GROUND_TRUTH_FILE
        with np.load(path) as arrays:
            if str(arrays["format"]) != GROUND_TRUTH_FORMAT:
                raise ValueError(f"{path}: format {arrays['format']}, expected {GROUND_TRUTH_FORMAT}")
            sizes = np.prod(arrays["shapes"], axis=1)
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            semantic, instance = arrays["semantic"].astype(np.int64), arrays["instance"].astype(np.int64)
            shapes = [tuple(shape) for shape in arrays["shapes"].tolist()]
            return GroundTruth(
                topic=str(arrays["topic"]), frame_id=str(arrays["frame_id"]),
                class_names=tuple(arrays["class_names"].tolist()),
                instance_classes=tuple(arrays["instance_classes"].tolist()), stamps=arrays["stamps"],
                semantic=tuple(semantic[a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], shapes)),
                instance=tuple(instance[a:b].reshape(s) for a, b, s in zip(bounds[:-1], bounds[1:], shapes)),
                fixed_frame=str(arrays["fixed_frame"]),
                sensor_poses=arrays["sensor_poses"] if "sensor_poses" in arrays else None)
