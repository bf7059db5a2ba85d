"""The codec (mask3d_ros/ros/cloud.py) against the real sensor_msgs_py.point_cloud2 (the ROS 2 test
overlay) on random field layouts (test_cloud.layouts: gaps, counts, every datatype, padding, both
byte orders, organized or not): read_points and create_cloud agree byte for byte.

sensor_msgs_py's own limits, so not compared: it ignores row padding (row_step > width * point_step),
names the elements of a field with count > 1 ``name_0``, ``name_1``, ... (the codec gives one
(N, count) column), shapes an organized cloud (width, height) where the codec, like the message,
uses (height, width), always says is_dense False (the codec computes it), and its read_points
byte-swaps a big-endian message's data in place (it is given a copy here)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_overlay
from hypothesis import given
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from test_cloud import FAST, SIZES, cloud_msg, layouts

from mask3d_ros.ros.cloud import create_cloud, read_points

require_overlay(module_level=True)
from sensor_msgs_py import point_cloud2 as upstream  # noqa: E402 - after the overlay check, which may skip

pytestmark = pytest.mark.ros


def without_row_padding(msg: PointCloud2) -> PointCloud2:
    """The same points with row_step = width * point_step (sensor_msgs_py assumes it)."""
    data, packed = bytes(msg.data), bytearray()
    for row in range(msg.height):
        packed += data[row * msg.row_step: row * msg.row_step + msg.width * msg.point_step]
    return cloud_msg(list(msg.fields), packed, msg.width, msg.height, msg.point_step,
                     is_bigendian=msg.is_bigendian)


def copy_of(msg: PointCloud2) -> PointCloud2:
    return deserialize_message(serialize_message(msg), PointCloud2)


def element_columns(points: np.ndarray, msg: PointCloud2, upstream_names: bool) -> dict[str, bytes]:
    """Native bytes of every element of every field, keyed ``name_k`` (k for count > 1)."""
    out = {}
    for f in msg.fields:
        for k in range(f.count):
            key = f"{f.name}_{k}" if f.count > 1 else f.name
            column = points[key] if upstream_names else (points[f.name] if f.count == 1 else points[f.name][:, k])
            out[key] = np.ascontiguousarray(column).tobytes()
    return out


def field_bytes(msg: PointCloud2) -> bytes:
    """The bytes of every field of every point in the message's own byte order; padding left out."""
    data, out = bytes(msg.data), bytearray()
    for row in range(msg.height):
        for col in range(msg.width):
            start = row * msg.row_step + col * msg.point_step
            for f in msg.fields:
                out += data[start + f.offset: start + f.offset + SIZES[f.datatype] * f.count]
    return bytes(out)


def covered_without_gaps(msg: PointCloud2) -> bool:
    return sum(SIZES[f.datatype] * f.count for f in msg.fields) == msg.point_step


@FAST
@given(layouts())
def test_read_points_agrees_with_sensor_msgs_py(msg):
    msg = without_row_padding(msg)
    ours = read_points(msg)
    theirs = upstream.read_points(copy_of(msg))
    assert len(ours) == len(theirs) == msg.width * msg.height
    assert element_columns(ours, msg, False) == element_columns(theirs, msg, True)
    last = msg.fields[-1]
    if last.count == 1:  # a field subset
        ours_subset = read_points(msg, field_names=[last.name])
        theirs_subset = upstream.read_points(copy_of(msg), field_names=[last.name])
        assert np.ascontiguousarray(ours_subset[last.name]).tobytes() == \
            np.ascontiguousarray(theirs_subset[last.name]).tobytes()


@FAST
@given(layouts())
def test_create_cloud_agrees_with_sensor_msgs_py(msg):
    msg = without_row_padding(msg)
    if msg.is_bigendian:  # sensor_msgs_py writes native (little-endian) clouds only
        msg = create_cloud(msg.header, list(msg.fields), read_points(msg), point_step=msg.point_step)
        if msg.is_bigendian:
            return
    header = Header(frame_id="sensor")
    ours = create_cloud(header, list(msg.fields), read_points(msg), point_step=msg.point_step)
    theirs = upstream.create_cloud(header, list(msg.fields), upstream.read_points(copy_of(msg)),
                                   point_step=msg.point_step)
    assert (ours.point_step, ours.row_step, ours.is_bigendian) == (theirs.point_step, theirs.row_step,
                                                                   theirs.is_bigendian)
    assert ours.width * ours.height == theirs.width * theirs.height == msg.width * msg.height
    assert [(f.name, f.offset, f.datatype, f.count) for f in ours.fields] == \
        [(f.name, f.offset, f.datatype, f.count) for f in theirs.fields]
    assert field_bytes(ours) == field_bytes(theirs) == field_bytes(msg)
    if covered_without_gaps(msg):  # no padding byte whose value is left to the writer
        assert bytes(ours.data) == bytes(theirs.data) == bytes(msg.data)
    # and each reads the other's cloud back to the same values
    assert element_columns(read_points(theirs), msg, False) == element_columns(upstream.read_points(ours), msg, True)


def test_xyz_rgb_cloud_of_a_depth_camera_both_ways():
    """The layout depth drivers publish (x y z float32, packed rgb float32, 16-byte points), organized."""
    rng = np.random.default_rng(3)
    fields = [upstream.PointField(name=n, offset=4 * i, datatype=upstream.PointField.FLOAT32, count=1)
              for i, n in enumerate("xyz")]
    fields.append(upstream.PointField(name="rgb", offset=16, datatype=upstream.PointField.FLOAT32, count=1))
    dtype = upstream.dtype_from_fields(fields, point_step=32)
    points = np.zeros(12, dtype)
    for name in ("x", "y", "z", "rgb"):
        points[name] = rng.normal(size=12).astype(np.float32)
    points["z"][3] = np.nan
    theirs = upstream.create_cloud(Header(frame_id="camera"), fields, points, point_step=32)
    ours = read_points(theirs)
    for name in ("x", "y", "z", "rgb"):
        assert ours[name].tobytes() == points[name].tobytes()
    back = create_cloud(Header(frame_id="camera"), fields, ours, point_step=32)
    assert field_bytes(back) == field_bytes(theirs) and not back.is_dense
    assert upstream.read_points(back, skip_nans=True).shape == (11,)
