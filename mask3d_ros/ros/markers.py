"""RViz markers for the instances: a box and a "class 0.87 #id" label per instance.

Marker ids are the stable instance ids (namespace ``boxes`` and ``labels``), colours follow the id,
and every instance that vanished since the previous array is deleted explicitly, so boxes never go
stale and do not flicker. After :meth:`MarkerBuilder.reset` (or the first array) a DELETEALL
clears whatever a display still shows. Needs visualization_msgs only (no rclpy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from visualization_msgs.msg import Marker, MarkerArray

from mask3d_ros.model.results import Instance
from mask3d_ros.ros.outputs import instance_colour

BOX_NAMESPACE = "boxes"
LABEL_NAMESPACE = "labels"

# The 12 edges of a box as pairs of corner indices; corner i has bit 0 = x, bit 1 = y, bit 2 = z.
_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))


@dataclass
class MarkerStyle:
    style: str = "cube"  # cube | line_list
    alpha: float = 0.4
    line_width: float = 0.01
    text_size: float = 0.05
    lifetime_s: float = 0.0
    up: tuple = (0.0, 0.0, 1.0)  # labels go above the box along this axis of the frame

    @staticmethod
    def up_for_frame(frame_id: str) -> tuple:
        """REP 103: camera optical frames (``*_optical_frame``) have y down; other frames z up."""
        return (0.0, -1.0, 0.0) if frame_id.endswith("optical_frame") or frame_id.endswith("_optical") \
            else (0.0, 0.0, 1.0)


def duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(sec=whole, nanosec=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


def label_text(inst: Instance) -> str:
    return f"{inst.class_name} {inst.score:.2f} #{inst.id}"


class MarkerBuilder:
    """Builds MarkerArrays and remembers which ids it published, to delete the vanished ones."""

    def __init__(self):
        self._published: set[int] = set()
        self._clear_first = True

    def reset(self) -> None:
        """The next array starts with DELETEALL (the map was reset, or a display reconnected)."""
        self._published = set()
        self._clear_first = True

    @property
    def published_ids(self) -> set[int]:
        return set(self._published)

    def delete_all(self, header) -> MarkerArray:
        self.reset()
        self._clear_first = False
        marker = Marker(header=header, action=Marker.DELETEALL)
        return MarkerArray(markers=[marker])

    def build(self, header, instances: list[Instance], style: MarkerStyle) -> MarkerArray:
        out = MarkerArray()
        if self._clear_first:
            out.markers.append(Marker(header=header, action=Marker.DELETEALL))
            self._clear_first = False
        current = {inst.id for inst in instances}
        for stale in sorted(self._published - current):
            for namespace in (BOX_NAMESPACE, LABEL_NAMESPACE):
                out.markers.append(Marker(header=header, ns=namespace, id=int(stale), action=Marker.DELETE))
        lifetime = duration(style.lifetime_s)
        for inst in instances:
            out.markers.append(self._box(header, inst, style, lifetime))
            out.markers.append(self._label(header, inst, style, lifetime))
        self._published = current
        return out

    @staticmethod
    def _colour(marker: Marker, inst: Instance, alpha: float) -> None:
        r, g, b = instance_colour(inst.id)
        marker.color.r, marker.color.g, marker.color.b, marker.color.a = r / 255.0, g / 255.0, b / 255.0, alpha

    def _box(self, header, inst: Instance, style: MarkerStyle, lifetime: Duration) -> Marker:
        center = np.zeros(3) if inst.center is None else np.asarray(inst.center, dtype=float)
        size = np.zeros(3) if inst.size is None else np.asarray(inst.size, dtype=float)
        size = np.maximum(size, 1e-3)  # RViz refuses zero scale
        marker = Marker(header=header, ns=BOX_NAMESPACE, id=int(inst.id), action=Marker.ADD, lifetime=lifetime)
        marker.pose.orientation.w = 1.0
        if style.style == "line_list":
            marker.type = Marker.LINE_LIST
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (float(v) for v in center)
            marker.scale.x = float(style.line_width)
            half = size / 2.0
            corners = [Point(x=float((1 if i & 1 else -1) * half[0]), y=float((1 if i & 2 else -1) * half[1]),
                             z=float((1 if i & 4 else -1) * half[2])) for i in range(8)]
            marker.points = [corners[i] for edge in _EDGES for i in edge]
            self._colour(marker, inst, 1.0)
        else:
            marker.type = Marker.CUBE
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (float(v) for v in center)
            marker.scale.x, marker.scale.y, marker.scale.z = (float(v) for v in size)
            self._colour(marker, inst, float(style.alpha))
        return marker

    def _label(self, header, inst: Instance, style: MarkerStyle, lifetime: Duration) -> Marker:
        center = np.zeros(3) if inst.center is None else np.asarray(inst.center, dtype=float)
        size = np.zeros(3) if inst.size is None else np.asarray(inst.size, dtype=float)
        marker = Marker(header=header, ns=LABEL_NAMESPACE, id=int(inst.id), type=Marker.TEXT_VIEW_FACING,
                        action=Marker.ADD, lifetime=lifetime, text=label_text(inst))
        up = np.asarray(style.up, dtype=float)
        position = center + up * (abs(float(np.dot(size, up))) / 2.0 + style.text_size)
        marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = (float(v) for v in position)
        marker.pose.orientation.w = 1.0
        marker.scale.z = float(style.text_size)
        self._colour(marker, inst, 1.0)
        return marker
