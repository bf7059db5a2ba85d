"""PointCloud2 codec: byte-level oracle on random layouts, malformed input, real Ouster and mOSD data."""
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from mask3d_ros.data.colors import intensity_from_points, pack_rgb, unpack_rgb
from mask3d_ros.data.pointfile import read_pcd
from mask3d_ros.ros.cloud import (
    CloudFormatError,
    create_cloud,
    create_cloud_xyz32,
    dtype_from_fields,
    fields_from_dtype,
    read_points,
    read_points_numpy,
    validate_cloud,
    xyz_rgb_from_cloud,
)

SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 8}
NUMPY_CODES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def field(name, offset, datatype, count=1):
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def cloud_msg(fields, data, width, height, point_step, row_step=None, is_bigendian=False, is_dense=False):
    """A PointCloud2 built by hand, independent of the code under test."""
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=is_bigendian,
                      point_step=point_step, row_step=point_step * width if row_step is None else row_step,
                      is_dense=is_dense)
    msg.data = bytes(data)
    return msg


# --- random layouts with a byte-level oracle ---------------------------------------------


@st.composite
def layouts(draw):
    """Fields (with gaps, counts, every datatype), point_step padding, endianness, grid, row padding."""
    names = draw(st.lists(st.sampled_from(["x", "y", "z", "rgb", "intensity", "ring", "t", "label", "n"]),
                          min_size=1, max_size=5, unique=True))
    fields, offset = [], 0
    for name in names:
        offset += draw(st.integers(0, 3))
        datatype, count = draw(st.integers(1, 8)), draw(st.integers(1, 3))
        fields.append(field(name, offset, datatype, count))
        offset += SIZES[datatype] * count
    point_step = offset + draw(st.integers(0, 5))
    width, height = draw(st.integers(0, 6)), draw(st.integers(1, 4))
    row_step = width * point_step + draw(st.integers(0, 7))
    data = draw(st.binary(min_size=row_step * height, max_size=row_step * height))
    return cloud_msg(fields, data, width, height, point_step, row_step, is_bigendian=draw(st.booleans()))


def expected_little_endian_bytes(msg, f):
    """Field ``f`` of every point, row-major, as little-endian bytes: slicing and byte reversal only."""
    size, out = SIZES[f.datatype], bytearray()
    data = bytes(msg.data)
    for row in range(msg.height):
        for col in range(msg.width):
            start = row * msg.row_step + col * msg.point_step + f.offset
            for k in range(f.count):
                value = data[start + k * size:start + (k + 1) * size]
                out += value[::-1] if msg.is_bigendian else value
    return bytes(out)


def little_endian_bytes(values):
    return np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()


@FAST
@given(layouts())
def test_read_points_matches_byte_oracle(msg):
    points = read_points(msg)
    assert points.shape == (msg.width * msg.height,)
    assert points.dtype.isnative
    for f in msg.fields:
        assert points[f.name].dtype.base == np.dtype(NUMPY_CODES[f.datatype])
        assert points[f.name].shape == ((len(points),) if f.count == 1 else (len(points), f.count))
        assert little_endian_bytes(points[f.name]) == expected_little_endian_bytes(msg, f)


@FAST
@given(layouts())
def test_organized_reshape_and_field_subset(msg):
    grid = read_points(msg, reshape_organized_cloud=True)
    assert grid.shape == ((msg.height, msg.width) if msg.height > 1 else (msg.width,))
    last = msg.fields[-1].name
    subset = read_points(msg, field_names=[last])
    assert subset.dtype.names == (last,)
    assert little_endian_bytes(subset[last]) == little_endian_bytes(grid[last].reshape(subset[last].shape))


@FAST
@given(layouts())
def test_roundtrip_through_create_cloud(msg):
    points = read_points(msg, reshape_organized_cloud=True)
    rebuilt = create_cloud(msg.header, msg.fields, points, point_step=msg.point_step)
    assert rebuilt.point_step == msg.point_step and rebuilt.row_step == msg.width * msg.point_step
    assert (rebuilt.height, rebuilt.width) == (msg.height, msg.width)
    assert not rebuilt.is_bigendian
    for f in msg.fields:
        assert expected_little_endian_bytes(rebuilt, f) == expected_little_endian_bytes(msg, f)


@FAST
@given(layouts())
def test_read_points_numpy_promotes_to_common_dtype(msg):
    table = read_points_numpy(msg)
    points = read_points(msg)
    common = np.result_type(*(NUMPY_CODES[f.datatype] for f in msg.fields))
    assert table.dtype == common
    assert table.shape == (len(points), sum(f.count for f in msg.fields))
    columns = [points[f.name].reshape(len(points), f.count).astype(common) for f in msg.fields]
    assert np.array_equal(table, np.concatenate(columns, axis=1), equal_nan=common.kind == "f")


@FAST
@given(layouts())
def test_fields_dtype_roundtrip(msg):
    dtype = dtype_from_fields(msg.fields, msg.point_step)
    assert dtype.itemsize == msg.point_step
    assert fields_from_dtype(dtype) == list(msg.fields)


@FAST
@given(st.integers(1, 5), st.integers(1, 6), st.data())
def test_big_endian_cloud_from_big_endian_dtype(height, width, data):
    dtype = np.dtype({"names": ["x", "y", "z", "ring"], "formats": [">f8", ">f4", ">f4", ">u2"],
                      "offsets": [0, 8, 12, 18], "itemsize": 24})
    values = data.draw(st.lists(st.tuples(*[st.floats(-1e3, 1e3, width=32)] * 3, st.integers(0, 65535)),
                                min_size=height * width, max_size=height * width))
    points = np.array(values, dtype=dtype).reshape(height, width)
    msg = create_cloud(None, None, points)
    assert msg.is_bigendian and msg.point_step == 24
    assert struct.unpack(">d", bytes(msg.data[:8]))[0] == points["x"].flat[0]
    back = read_points(msg, reshape_organized_cloud=True)
    for name in dtype.names:
        assert np.array_equal(back[name].reshape(points.shape), points[name])


# --- NaNs, skip_nans, uvs, the node fast path ------------------------------------------


@st.composite
def organized_xyzrgb(draw):
    height, width = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    points = np.zeros((height, width), np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("pad", "<u4"),
                                                   ("rgb", "<f4"), ("intensity", "<u2")]))
    for name in ("x", "y", "z"):
        points[name] = rng.normal(size=(height, width))
        points[name][rng.random((height, width)) < draw(st.floats(0, 0.6))] = np.nan
    points["rgb"] = pack_rgb(rng.integers(0, 256, (height, width, 4)), np.float32)
    points["intensity"] = rng.integers(0, 65536, (height, width))
    return points


@FAST
@given(organized_xyzrgb(), st.integers(0, 9))
def test_skip_nans_and_xyz_rgb_fast_path(points, row_padding):
    msg = create_cloud(Header(frame_id="cam"), None, points)
    flat = points.reshape(-1)
    valid = ~(np.isnan(flat["x"]) | np.isnan(flat["y"]) | np.isnan(flat["z"]))
    assert msg.is_dense == bool(valid.all())
    if row_padding:  # re-lay the rows with padding: same points, longer rows
        rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.row_step)
        padded = np.concatenate([rows, np.full((msg.height, row_padding), 0xAB, np.uint8)], axis=1)
        msg = cloud_msg(msg.fields, padded.tobytes(), msg.width, msg.height, msg.point_step,
                        msg.row_step + row_padding)
    kept = read_points(msg, skip_nans=True)
    assert kept.tobytes() == flat[valid].tobytes()
    xyz, rgb, index = xyz_rgb_from_cloud(msg)
    assert np.array_equal(index, np.flatnonzero(valid))
    assert xyz.dtype == np.float32 and xyz.flags.c_contiguous
    assert np.array_equal(xyz, np.stack([flat[n][valid] for n in "xyz"], axis=1))
    assert np.array_equal(rgb, unpack_rgb(flat["rgb"][valid]))
    assert np.array_equal(intensity_from_points(kept), flat["intensity"][valid].astype(np.float32))


@FAST
@given(organized_xyzrgb(), st.data())
def test_uvs_select_pixels_in_order(points, data):
    height, width = points.shape
    uvs = data.draw(st.lists(st.tuples(st.integers(0, width - 1), st.integers(0, height - 1)), max_size=10))
    msg = create_cloud(None, None, points)
    picked = read_points(msg, uvs=uvs)
    assert picked.tobytes() == np.array([points[v, u] for u, v in uvs], points.dtype).tobytes()
    finite = [points[v, u] for u, v in uvs if not np.isnan([points[v, u][n] for n in "xyz"]).any()]
    assert read_points(msg, uvs=uvs, skip_nans=True).tobytes() == np.array(finite, points.dtype).tobytes()


def test_uvs_outside_and_reshape_conflicts():
    msg = create_cloud_xyz32(None, np.zeros((2, 3, 3)))
    with pytest.raises(IndexError, match=r"pixel \(u=3, v=0\) is outside the 3x2 cloud"):
        read_points(msg, uvs=[(0, 0), (3, 0)])
    with pytest.raises(ValueError, match="reshape_organized_cloud"):
        read_points(msg, skip_nans=True, reshape_organized_cloud=True)


def test_xyz_rgb_without_colour_and_with_channels():
    xyz = np.arange(12, dtype=np.float32).reshape(4, 3)
    out_xyz, rgb, index = xyz_rgb_from_cloud(create_cloud_xyz32(None, xyz))
    assert rgb is None and np.array_equal(out_xyz, xyz) and np.array_equal(index, np.arange(4))
    points = np.zeros(3, [("z", "<f8"), ("y", "<f8"), ("x", "<f8"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    points["x"], points["y"], points["z"] = [1, 2, np.inf], [4, 5, 6], [7, 8, 9]
    points["red"], points["green"], points["blue"] = [10, 20, 30], [40, 50, 60], [70, 80, 90]
    out_xyz, rgb, index = xyz_rgb_from_cloud(create_cloud(None, None, points))
    assert np.array_equal(out_xyz, [[1, 4, 7], [2, 5, 8]]) and out_xyz.dtype == np.float32
    assert np.array_equal(rgb, [[10, 40, 70], [20, 50, 80]]) and np.array_equal(index, [0, 1])


# --- building ---------------------------------------------------------------------------


def test_create_cloud_from_plain_columns_and_tuples():
    fields = [field("x", 0, PointField.FLOAT32), field("v", 4, PointField.UINT8, 2), field("i", 8, PointField.INT16)]
    plain = np.array([[1.5, 2, 3, -4], [5.5, 6, 7, -8]])
    for points in (plain, [tuple(row) for row in plain]):
        msg = create_cloud(Header(frame_id="f"), fields, points, point_step=12)
        assert msg.header.frame_id == "f" and msg.point_step == 12 and msg.width == 2 and msg.height == 1
        assert isinstance(msg.data, type(PointCloud2().data))
        out = read_points(msg)
        assert out["x"].tolist() == [1.5, 5.5] and out["v"].tolist() == [[2, 3], [6, 7]]
        assert out["i"].tolist() == [-4, -8]
    with pytest.raises(CloudFormatError, match="need a last axis of 4 columns"):
        create_cloud(None, fields, np.zeros((2, 3)))
    with pytest.raises(CloudFormatError, match="points have no field 'i'"):
        create_cloud(None, fields, np.zeros(2, [("x", "f4"), ("v", "u1", (2,))]))
    empty = create_cloud(None, fields, [])
    assert (empty.width, empty.height, len(empty.data)) == (0, 1, 0) and read_points(empty).shape == (0,)


def test_create_cloud_xyz32_organized():
    xyz = np.random.default_rng(1).normal(size=(3, 4, 3))
    msg = create_cloud_xyz32(None, xyz)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (3, 4, 12, 48) and msg.is_dense
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)]
    assert np.array_equal(read_points_numpy(msg, reshape_organized_cloud=True), xyz.astype(np.float32))
    assert create_cloud_xyz32(None, [[1, 2, 3]]).data.tobytes() == np.float32([1, 2, 3]).tobytes()
    expected = r"xyz points must be \(N, 3\) or \(height, width, 3\), got shape \(4, 2\)"
    with pytest.raises(CloudFormatError, match=expected):
        create_cloud_xyz32(None, np.zeros((4, 2)))


def test_fields_from_dtype_refuses_unrepresentable():
    with pytest.raises(CloudFormatError, match="field 'n' has dtype int64"):
        fields_from_dtype(np.dtype([("x", "f4"), ("n", "i8")]))
    with pytest.raises(CloudFormatError, match="structured dtype"):
        fields_from_dtype(np.dtype("f4"))
    with pytest.raises(CloudFormatError, match="mix byte orders"):
        create_cloud(None, np.dtype([("x", "<f4"), ("y", ">f4")]), np.zeros(1, [("x", "<f4"), ("y", ">f4")]))


# --- malformed input --------------------------------------------------------------------

XYZ = [field("x", 0, 7), field("y", 4, 7), field("z", 8, 7)]
MALFORMED = {
    "short data": (dict(fields=XYZ, data=bytes(23), width=2, height=1, point_step=12),
                   r"data holds 23 bytes, fewer than row_step 24 x height 1 = 24"),
    "long data": (dict(fields=XYZ, data=bytes(36), width=2, height=1, point_step=12),
                  r"data holds 36 bytes, more than row_step 24 x height 1 = 24; width 2 x height 1 does not match"),
    "short rows": (dict(fields=XYZ, data=bytes(40), width=2, height=2, point_step=12, row_step=20),
                   r"row_step 20 < width 2 x point_step 12 = 24"),
    "field beyond point_step": (dict(fields=XYZ[:2] + [field("z", 8, 7, 2)], data=bytes(24), width=2, height=1,
                                     point_step=12),
                                r"field 'z' ends at byte 16 \(offset 8 \+ 4 B x count 2\), beyond point_step 12"),
    "unknown datatype": (dict(fields=XYZ + [field("q", 12, 9)], data=bytes(16), width=1, height=1, point_step=16),
                         r"field 'q' has unknown datatype 9"),
    "point_step zero": (dict(fields=XYZ, data=b"", width=2, height=1, point_step=0),
                        r"point_step is 0 for 2x1 points with 3 fields"),
    "count zero": (dict(fields=XYZ + [field("i", 12, 7, 0)], data=bytes(16), width=1, height=1, point_step=16),
                   r"field 'i' has count 0"),
    "duplicate names": (dict(fields=XYZ + [field("y", 12, 7)], data=bytes(16), width=1, height=1, point_step=16),
                        r"duplicate field name 'y'"),
    "empty name": (dict(fields=[field("", 0, 7)], data=bytes(4), width=1, height=1, point_step=4),
                   r"field #0 has an empty name"),
    "height without data": (dict(fields=XYZ, data=bytes(24), width=2, height=3, point_step=12),
                            r"data holds 24 bytes, fewer than row_step 24 x height 3 = 72"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_cloud_raises_specific_error(case):
    kwargs, message = MALFORMED[case]
    msg = cloud_msg(**kwargs)
    for decode in (validate_cloud, read_points, read_points_numpy, xyz_rgb_from_cloud):
        with pytest.raises(CloudFormatError, match=message):
            decode(msg)


def test_missing_fields_raise_specific_error():
    msg = cloud_msg([field("x", 0, 7), field("y", 4, 7), field("intensity", 8, 7)], bytes(24), 2, 1, 12)
    with pytest.raises(CloudFormatError, match=r"cloud has no field 'z' \(x, y, z needed\)"):
        xyz_rgb_from_cloud(msg)
    with pytest.raises(CloudFormatError, match=r"cloud has no field 'rgb'; it has \['x', 'y', 'intensity'\]"):
        read_points(msg, field_names=["x", "rgb"])
    no_xyz = cloud_msg([field("intensity", 0, 7)], bytes(8), 2, 1, 4)
    with pytest.raises(CloudFormatError, match="skip_nans needs x, y or z"):
        read_points(no_xyz, skip_nans=True)
    assert issubclass(CloudFormatError, ValueError)


def test_xyz_with_several_values_per_point_is_refused():
    msg = cloud_msg([field("x", 0, 7, count=2), field("y", 8, 7), field("z", 12, 7)], bytes(32), 2, 1, 16)
    with pytest.raises(CloudFormatError, match=r"x, y and z must hold one value per point: x \(count 2\)"):
        xyz_rgb_from_cloud(msg)


def test_empty_default_message_is_valid():
    msg = PointCloud2()
    assert validate_cloud(msg).names == ()
    assert read_points(msg).shape == (0,)


# --- real data: Ouster OS1-64 rosbag2 (mcap) ----------------------------------------------

OUSTER_FIELDS = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("t", 20, 6),
                 ("reflectivity", 24, 4), ("ring", 26, 2), ("noise", 28, 4), ("range", 32, 6)]


@pytest.fixture(scope="module")
def ouster_scans(ouster_bag_dir):
    """Every PointCloud2 of the bag: rclpy's deserialisation and rosbags' own, side by side."""
    scans = []
    with warnings.catch_warnings():  # rosbags parses message definitions with lark, which imports sre_parse
        warnings.simplefilter("ignore", DeprecationWarning)

        with AnyReader([Path(ouster_bag_dir)]) as reader:
            connections = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/PointCloud2"]
            for connection, _, raw in reader.messages(connections=connections):
                scans.append((deserialize_message(raw, PointCloud2), reader.deserialize(raw, connection.msgtype)))
    assert len(scans) == 2
    return scans


def test_ouster_layout(ouster_scans):
    for msg, _ in ouster_scans:
        assert [(f.name, f.offset, f.datatype) for f in msg.fields] == OUSTER_FIELDS
        assert (msg.height, msg.width, msg.point_step, msg.row_step) == (64, 2048, 48, 98304)
        assert not msg.is_bigendian and msg.is_dense
        assert validate_cloud(msg).itemsize == 48


def test_ouster_physical_sanity(ouster_scans):
    for msg, _ in ouster_scans:
        points = read_points(msg)
        assert len(points) == 64 * 2048
        assert points["ring"].dtype == np.uint8 and points["range"].dtype == np.uint32
        # The driver lays points column by column (64 rings per azimuth), not one ring per row.
        assert np.array_equal(points["ring"], np.tile(np.arange(64, dtype=np.uint8), 2048))
        xyz = read_points_numpy(msg, ["x", "y", "z"]).astype(np.float64)
        norm_mm = np.linalg.norm(xyz, axis=1) * 1000
        hit = points["range"] > 0
        assert 0.2 < hit.mean() < 0.6  # open sky and close range return nothing
        assert np.abs(norm_mm[hit] - points["range"][hit]).max() < 0.05
        assert np.all(xyz[~hit] == 0)  # no return: the origin, not NaN
        assert points["range"].max() < 120_000  # OS1 max range 120 m
        intensity = intensity_from_points(points)
        assert np.isfinite(intensity).all() and intensity.min() >= 0 and intensity.max() < 65536
        assert points["t"].max() < 100_000_000  # ns within one 10 Hz sweep
        assert np.all(np.isfinite(xyz)) and np.abs(xyz).max() < 120


def test_ouster_fast_path_and_rosbags_message(ouster_scans):
    for msg, rosbags_msg in ouster_scans:
        xyz, rgb, index = xyz_rgb_from_cloud(msg)
        assert rgb is None and len(xyz) == 131072 and np.array_equal(index, np.arange(131072))
        assert np.array_equal(xyz, read_points_numpy(msg, ["x", "y", "z"]))
        duck = read_points(rosbags_msg)  # rosbags' dataclass with a numpy data buffer decodes too
        assert duck.tobytes() == read_points(msg).tobytes()
        rebuilt = create_cloud(msg.header, msg.fields, read_points(msg, reshape_organized_cloud=True), 48)
        for name, _, _ in OUSTER_FIELDS:
            assert np.array_equal(read_points(rebuilt)[name], read_points(msg)[name])


# --- real data: mOSD Kinect frames ----------------------------------------------------------


def test_mosd_frame_as_cloud_matches_parity_fixture(mosd_dir, parity_dir):
    grid = read_pcd(mosd_dir / "val" / "test1.pcd").grid()
    msg = create_cloud(Header(frame_id="kinect"), None, grid)
    assert (msg.height, msg.width, msg.point_step) == (480, 640, 20) and not msg.is_dense
    xyz, rgb, index = xyz_rgb_from_cloud(msg)
    fixture = np.load(parity_dir / "input.npz")
    assert np.array_equal(xyz, fixture["xyz"])
    assert np.array_equal(rgb, fixture["rgb"])
    assert np.array_equal(index, fixture["point_index"])
    labels = read_points(msg, ["label"], skip_nans=True)["label"]
    assert np.array_equal(labels, grid.reshape(-1)["label"][index]) and labels.min() >= 1


@pytest.mark.parametrize("name", ["learn/learn0.pcd", "learn/learn25.pcd", "val/test34.pcd"])
def test_mosd_nan_points_are_label_zero(mosd_dir, name):
    grid = read_pcd(mosd_dir / name).grid()
    msg = create_cloud(None, None, grid)
    kept = read_points(msg, skip_nans=True)
    _, _, index = xyz_rgb_from_cloud(msg)
    labels = grid.reshape(-1)["label"]
    assert np.all(labels[index] > 0) and np.all(np.delete(labels, index) == 0)
    assert np.array_equal(kept["label"], labels[index])
    assert read_points(msg, uvs=[(320, 240), (0, 479)]).tobytes() == grid[[240, 479], [320, 0]].tobytes()


def test_reads_are_zero_copy_views_where_the_layout_allows():
    points = np.zeros((2, 3), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "<u2")])
    msg = create_cloud(None, None, points)
    data = np.frombuffer(msg.data, np.uint8)
    assert np.shares_memory(read_points(msg), data)
    assert np.shares_memory(read_points(msg, ["z", "x"]), data)
    assert np.shares_memory(read_points_numpy(msg, ["x", "y", "z"]), data)
    padded = cloud_msg(msg.fields, bytes(2 * (msg.row_step + 4)), 3, 2, msg.point_step, msg.row_step + 4)
    assert np.shares_memory(read_points(padded, reshape_organized_cloud=True), np.frombuffer(padded.data, np.uint8))
