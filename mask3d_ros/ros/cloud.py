"""sensor_msgs/PointCloud2 <-> numpy, as zero-copy views of the message bytes where possible.

The API mirrors ``sensor_msgs_py.point_cloud2`` (on every ROS 2 install, not on PyPI) so callers
can swap one for the other. Differences, each deliberate:

* ``read_points`` returns native byte order and honours ``row_step`` padding;
* ``skip_nans`` drops points with a NaN in x, y or z only (other fields may hold NaN on purpose)
  and does not trust ``is_dense``;
* ``uvs`` are (u, v) = (column, row) pixel pairs, as in ROS 1;
* ``reshape_organized_cloud`` gives shape (height, width);
* ``read_points_numpy`` promotes mixed field types to one dtype instead of refusing them;
* a malformed message raises :class:`CloudFormatError` saying what is wrong.

Arrays returned by ``read_points`` may share memory with ``cloud.data``: copy before writing.
Works with rclpy messages and with any object of the same shape (e.g. rosbags' dataclasses).
"""
from __future__ import annotations

import numpy as np
from numpy.lib import recfunctions
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from mask3d_ros.data.colors import colors_from_points, take_field

_NUMPY_TYPE_BY_DATATYPE = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}
_DATATYPE_BY_NUMPY_TYPE = {code: datatype for datatype, code in _NUMPY_TYPE_BY_DATATYPE.items()}
_XYZ = ("x", "y", "z")
_XYZ32 = np.dtype({"names": list(_XYZ), "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})


class CloudFormatError(ValueError):
    """A PointCloud2, or a layout meant for one, that cannot be decoded as declared."""


# --- layouts -------------------------------------------------------------------------------


def dtype_from_fields(fields, point_step: int | None = None, is_bigendian: bool = False) -> np.dtype:
    """Numpy dtype of one point: fields at their offsets, ``itemsize = point_step``.

    ``count > 1`` becomes a subarray field. Validates what the dtype alone would not catch.
    """
    order = ">" if is_bigendian else "<"
    names, formats, offsets = [], [], []
    for position, field in enumerate(fields):
        name = field.name
        if not name:
            raise CloudFormatError(f"field #{position} has an empty name")
        if name in names:
            raise CloudFormatError(f"duplicate field name {name!r}")
        code = _NUMPY_TYPE_BY_DATATYPE.get(field.datatype)
        if code is None:
            raise CloudFormatError(
                f"field {name!r} has unknown datatype {field.datatype} (PointField defines 1..8)")
        if field.count == 0:
            raise CloudFormatError(f"field {name!r} has count 0")
        scalar = np.dtype(order + code)
        end = field.offset + scalar.itemsize * field.count
        if point_step is not None and end > point_step:
            raise CloudFormatError(
                f"field {name!r} ends at byte {end} (offset {field.offset} + {scalar.itemsize} B"
                f" x count {field.count}), beyond point_step {point_step}")
        names.append(name)
        formats.append(scalar if field.count == 1 else (scalar, (field.count,)))
        offsets.append(field.offset)
    spec = {"names": names, "formats": formats, "offsets": offsets}
    if point_step is not None:
        spec["itemsize"] = point_step
    return np.dtype(spec)


def fields_from_dtype(dtype) -> list[PointField]:
    """PointFields describing a structured dtype; subarray fields get ``count`` = their size."""
    dtype = np.dtype(dtype)
    if dtype.names is None:
        raise CloudFormatError(f"a point layout needs a structured dtype, got {dtype}")
    fields = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base = field_dtype.base
        datatype = _DATATYPE_BY_NUMPY_TYPE.get(f"{base.kind}{base.itemsize}")
        if datatype is None:
            raise CloudFormatError(f"field {name!r} has dtype {base}, which no PointField datatype represents")
        count = int(np.prod(field_dtype.shape, dtype=np.int64))
        fields.append(PointField(name=name, offset=offset, datatype=datatype, count=count))
    return fields


def _is_bigendian(dtype: np.dtype) -> bool:
    """Byte order of a structured dtype's multi-byte fields; they must agree."""
    orders = {dtype.fields[name][0].base.byteorder for name in dtype.names} - {"|"}
    big = {order == ">" or (order == "=" and not np.little_endian) for order in orders}
    if len(big) > 1:
        raise CloudFormatError(f"fields of {dtype} mix byte orders")
    return big == {True}


def validate_cloud(cloud) -> np.dtype:
    """Raise CloudFormatError unless ``cloud`` decodes as declared; return its point dtype."""
    points = cloud.width * cloud.height
    if cloud.point_step == 0 and (points or len(cloud.fields)):
        raise CloudFormatError(
            f"point_step is 0 for {cloud.width}x{cloud.height} points with {len(cloud.fields)} fields")
    dtype = dtype_from_fields(cloud.fields, cloud.point_step, cloud.is_bigendian)
    row_bytes = cloud.width * cloud.point_step
    if cloud.row_step < row_bytes:
        raise CloudFormatError(
            f"row_step {cloud.row_step} < width {cloud.width} x point_step {cloud.point_step} = {row_bytes}")
    expected = cloud.row_step * cloud.height
    size = memoryview(cloud.data).nbytes
    if size < expected:
        raise CloudFormatError(
            f"data holds {size} bytes, fewer than row_step {cloud.row_step} x height {cloud.height} = {expected}")
    if size > expected:
        raise CloudFormatError(
            f"data holds {size} bytes, more than row_step {cloud.row_step} x height {cloud.height} = {expected};"
            f" width {cloud.width} x height {cloud.height} does not match the data")
    return dtype


def _grid(cloud, dtype: np.dtype) -> np.ndarray:
    """(height, width) structured view of ``cloud.data``; no copy, even with row padding."""
    shape = (cloud.height, cloud.width)
    if cloud.width * cloud.height == 0:
        return np.empty(shape, dtype)
    if cloud.row_step == cloud.width * cloud.point_step:
        return np.frombuffer(cloud.data, dtype, count=cloud.width * cloud.height).reshape(shape)
    return np.ndarray(shape, dtype, buffer=cloud.data, strides=(cloud.row_step, cloud.point_step))


def _require_fields(dtype: np.dtype, names) -> list[str]:
    names = list(names)
    if not names:
        raise CloudFormatError("no field names requested")
    for name in names:
        if name not in dtype.names:
            raise CloudFormatError(f"cloud has no field {name!r}; it has {list(dtype.names)}")
    return names


def _native(points: np.ndarray) -> np.ndarray:
    native = points.dtype.newbyteorder("=")
    return points if native == points.dtype else points.astype(native)


# --- reading -------------------------------------------------------------------------------


def _pixels(uvs, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of (u, v) pixel pairs, bounds-checked."""
    pairs = np.asarray(uvs, dtype=np.int64).reshape(-1, 2)
    cols, rows = pairs[:, 0], pairs[:, 1]
    outside = (cols < 0) | (cols >= width) | (rows < 0) | (rows >= height)
    if outside.any():
        u, v = pairs[np.argmax(outside)]
        raise IndexError(f"pixel (u={u}, v={v}) is outside the {width}x{height} cloud")
    return rows, cols


def _xyz_not_nan(grid: np.ndarray, pixels) -> np.ndarray:
    """Mask of points (over ``pixels`` or the whole grid) with no NaN in x, y or z."""
    present = [name for name in _XYZ if name in grid.dtype.names]
    if not present:
        raise CloudFormatError(f"skip_nans needs x, y or z fields; cloud has {list(grid.dtype.names)}")
    keep = None
    for name in present:
        values = grid[name] if pixels is None else grid[name][pixels]
        if values.dtype.kind == "f":
            not_nan = ~np.isnan(values)
            keep = not_nan if keep is None else keep & not_nan
    return np.ones(grid.shape if pixels is None else pixels[0].shape, bool) if keep is None else keep


def read_points(cloud, field_names=None, skip_nans: bool = False, uvs=None,
                reshape_organized_cloud: bool = False) -> np.ndarray:
    """Points of ``cloud`` as a structured array (a view of its data when the layout allows).

    ``uvs``: iterable of (u, v) pixels to return, in that order. ``reshape_organized_cloud``:
    shape (height, width) when height > 1; it cannot be combined with ``uvs`` or ``skip_nans``.
    """
    grid = _grid(cloud, validate_cloud(cloud))
    points = grid if field_names is None else grid[_require_fields(grid.dtype, field_names)]
    pixels = None if uvs is None else _pixels(uvs, cloud.width, cloud.height)
    if reshape_organized_cloud and cloud.height > 1:
        if pixels is not None or skip_nans:
            raise ValueError("reshape_organized_cloud keeps the (height, width) grid;"
                             " it cannot follow uvs or skip_nans")
        return _native(points)
    keep = _xyz_not_nan(grid, pixels) if skip_nans else None
    if pixels is not None:
        points = points[pixels]
    if keep is not None:
        points = points[keep]
    return _native(points.reshape(-1))


def read_points_numpy(cloud, field_names=None, skip_nans: bool = False, uvs=None,
                      reshape_organized_cloud: bool = False) -> np.ndarray:
    """Points as a plain array, one column per value (``count > 1`` fields span several).

    Field types are promoted to one common dtype; a view is returned when no promotion and no
    gather is needed.
    """
    points = read_points(cloud, field_names, skip_nans, uvs, reshape_organized_cloud)
    common = np.result_type(*(points.dtype.fields[name][0].base for name in points.dtype.names))
    return recfunctions.structured_to_unstructured(points, dtype=common, copy=False)


# --- building ------------------------------------------------------------------------------


def _records(points, dtype: np.dtype) -> np.ndarray:
    """``points`` as a C-contiguous array of ``dtype``, shape (N,) or (height, width).

    Structured input is matched by field name; plain input (..., columns) by column order.
    """
    if isinstance(points, np.ndarray) and points.dtype == dtype and points.flags.c_contiguous:
        records = points
    else:
        values = np.asarray(points)
        if values.dtype.names is not None:
            records = np.zeros(values.shape, dtype)
            for name in dtype.names:
                if name not in values.dtype.names:
                    raise CloudFormatError(f"points have no field {name!r}; they have {list(values.dtype.names)}")
                records[name] = values[name]
        elif values.size == 0 and values.ndim == 1:
            records = np.zeros(0, dtype)
        else:
            records = _records_from_columns(values, dtype)
    if records.ndim not in (1, 2):
        raise CloudFormatError(f"points must be (N,) or (height, width), got shape {records.shape}")
    return records


def _records_from_columns(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    columns_needed = sum(int(np.prod(dtype.fields[name][0].shape, dtype=np.int64)) for name in dtype.names)
    if values.ndim < 2 or values.shape[-1] != columns_needed:
        raise CloudFormatError(
            f"plain points of shape {values.shape} need a last axis of {columns_needed} columns, one per field value")
    records = np.zeros(values.shape[:-1], dtype)
    column = 0
    for name in dtype.names:
        shape = dtype.fields[name][0].shape
        width = int(np.prod(shape, dtype=np.int64))
        records[name] = values[..., column:column + width].reshape(values.shape[:-1] + shape)
        column += width
    return records


def _has_nan_xyz(records: np.ndarray) -> bool:
    return any(records.dtype.fields[name][0].kind == "f" and np.isnan(records[name]).any()
               for name in _XYZ if name in records.dtype.names)


def create_cloud(header: Header | None, fields, points, point_step: int | None = None) -> PointCloud2:
    """Build a PointCloud2 from points.

    ``fields``: a list of PointField, a structured numpy dtype, or None to use ``points.dtype``.
    ``points``: a structured array (matched by field name), a plain (N, columns) or
    (height, width, columns) array, or a sequence of tuples. A 2-D structured array gives an
    organized cloud. The cloud is big-endian only if the dtype says so; ``is_dense`` is computed.
    """
    if fields is None:
        dtype = np.asarray(points).dtype
    elif isinstance(fields, np.dtype):
        dtype = fields
    else:
        dtype = dtype_from_fields(fields, point_step)
    point_fields = fields_from_dtype(dtype)
    records = _records(points, dtype)
    height, width = (1, records.shape[0]) if records.ndim == 1 else records.shape
    cloud = PointCloud2(
        header=Header() if header is None else header,
        height=height,
        width=width,
        fields=point_fields,
        is_bigendian=_is_bigendian(dtype),
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * width,
        is_dense=not _has_nan_xyz(records),
    )
    cloud.data = records.tobytes()  # bytes: assigning a numpy array is ~1000x slower in rclpy
    return cloud


def create_cloud_xyz32(header: Header | None, points) -> PointCloud2:
    """Cloud with float32 x, y, z from an (N, 3) or (height, width, 3) array."""
    xyz = np.ascontiguousarray(points, dtype=np.float32)
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3:
        raise CloudFormatError(f"xyz points must be (N, 3) or (height, width, 3), got shape {xyz.shape}")
    return create_cloud(header, _XYZ32, xyz.view(_XYZ32)[..., 0])  # same bytes, one record per point


# --- node fast path ------------------------------------------------------------------------


def _require_xyz(grid: np.ndarray) -> None:
    missing = [name for name in _XYZ if name not in grid.dtype.names]
    if missing:
        raise CloudFormatError(f"cloud has no field {missing[0]!r} (x, y, z needed); it has {list(grid.dtype.names)}")
    multiple = [f"{name} (count {grid.dtype[name].shape[0]})" for name in _XYZ if grid.dtype[name].shape]
    if multiple:
        raise CloudFormatError(f"x, y and z must hold one value per point: {', '.join(multiple)}")


def _gather_xyz(grid: np.ndarray, keep) -> np.ndarray:
    """Contiguous float32 (N, 3) xyz of the points selected by ``keep`` (None: all).

    For the usual adjacent native float32 x, y, z each point's 12 bytes are copied as one
    opaque item, several times faster than gathering a float (..., 3) view.
    """
    fields = grid.dtype.fields
    (x_type, x_offset), (y_type, y_offset), (z_type, z_offset) = (fields[name][:2] for name in _XYZ)
    if x_type == y_type == z_type == np.dtype(np.float32) and (y_offset, z_offset) == (x_offset + 4, x_offset + 8):
        triples = grid.view(np.dtype({"names": ["xyz"], "formats": ["V12"], "offsets": [x_offset],
                                      "itemsize": grid.dtype.itemsize}))["xyz"]
        picked = triples.reshape(-1) if keep is None else triples[keep]
        return np.ascontiguousarray(picked).view(np.float32).reshape(-1, 3)
    return np.stack([take_field(grid, name, keep).reshape(-1) for name in _XYZ], axis=-1).astype(np.float32)


def xyz_rgb_from_cloud(cloud) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """What the segmentation node needs from a cloud, without decoding the rest.

    Returns float32 (N, 3) xyz of the points whose x, y, z are all finite, their (N, 3) uint8
    colours (None if the cloud has none), and each kept point's int64 index in the cloud
    (row-major, ``v * width + u``) so results can be mapped back.
    """
    grid = _grid(cloud, validate_cloud(cloud))
    _require_xyz(grid)
    finite = np.isfinite(grid["x"]) & np.isfinite(grid["y"]) & np.isfinite(grid["z"])
    index = np.flatnonzero(finite)
    keep = finite if index.size < finite.size else None
    colors = colors_from_points(grid, keep)
    return _gather_xyz(grid, keep), None if colors is None else colors.reshape(-1, 3), index
