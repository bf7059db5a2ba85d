"""Point files for offline runs and tests: PCD and PLY to numpy structured arrays, and PLY out.

Every reader returns a :class:`PointTable`: a packed, native-byte-order structured array whose
field names are the file's (``count > 1`` becomes a subarray field), plus the organised
width/height. The readers are our own numpy code rather than pypcd4 (splits ``count > 1`` fields,
imports pydantic: ~0.4 s) or plyfile (GPL-3.0). Only ``binary_compressed`` PCD needs a
dependency: LZF decompression from ``python-neo-lzf`` (module ``lzf``).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import lzf
import numpy as np

_PCD_KINDS = {"I": "i", "U": "u", "F": "f"}
_PCD_SIZES = {"I": (1, 2, 4, 8), "U": (1, 2, 4, 8), "F": (4, 8)}
_PCD_PADDING = "_"
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_NAME_BY_TYPE = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
                     "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}
_PLY_BYTE_ORDERS = {"ascii": "<", "binary_little_endian": "<", "binary_big_endian": ">"}
_PLY_GRID_COMMENT = "organized"


class PointFileError(ValueError):
    """A point file that does not hold what its header declares."""


@dataclass(frozen=True)
class PointTable:
    """Points read from a file: ``points`` is (width * height,), row-major when organised."""

    points: np.ndarray
    width: int
    height: int

    @property
    def is_organized(self) -> bool:
        return self.height > 1

    def grid(self) -> np.ndarray:
        """The points as a (height, width) view."""
        return self.points.reshape(self.height, self.width)


def _split_header(raw: bytes, last_keyword: str, path) -> tuple[list[str], int]:
    """Header lines up to and including the one starting with ``last_keyword``; data offset."""
    lines, position = [], 0
    while True:
        end = raw.find(b"\n", position)
        if end < 0:
            raise PointFileError(f"{path}: header has no {last_keyword} line")
        line = raw[position:end].decode("ascii", errors="replace").strip()
        position = end + 1
        lines.append(line)
        if line.split()[:1] == [last_keyword]:
            return lines, position


def _packed(dtype: np.dtype) -> np.dtype:
    """Same fields, native order, no gaps."""
    return np.dtype([(name, dtype.fields[name][0].newbyteorder("=")) for name in dtype.names])


def _copy_fields(source: np.ndarray, names) -> np.ndarray:
    target = np.empty(source.shape, _packed(source.dtype[list(names)]))
    for name in names:
        target[name] = source[name]
    return target


# --- PCD -----------------------------------------------------------------------------------


def _pcd_layout(header: dict[str, list[str]], path) -> tuple[np.dtype, list[str], int, int, str]:
    """File record dtype (padding fields included), kept names, width, height, encoding."""
    try:
        names = header.get("FIELDS") or header["COLUMNS"]
        sizes = [int(size) for size in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(count) for count in header.get("COUNT", ["1"] * len(names))]
        width = int(header["WIDTH"][0])
        height = int(header.get("HEIGHT", ["1"])[0])
        points = int(header.get("POINTS", [str(width * height)])[0])
        encoding = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as error:
        raise PointFileError(f"{path}: incomplete or malformed PCD header ({error!r})") from None
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise PointFileError(
            f"{path}: FIELDS/SIZE/TYPE/COUNT disagree: {len(names)}/{len(sizes)}/{len(types)}/{len(counts)} entries")
    if points != width * height:
        raise PointFileError(f"{path}: POINTS {points} != WIDTH {width} x HEIGHT {height}")
    if encoding not in ("ascii", "binary", "binary_compressed"):
        raise PointFileError(f"{path}: unknown DATA encoding {encoding!r}")
    formats, record_names, kept = [], [], []
    for position, (name, size, kind, count) in enumerate(zip(names, sizes, types, counts)):
        if kind not in _PCD_KINDS or size not in _PCD_SIZES[kind]:
            raise PointFileError(f"{path}: field {name!r} has unsupported TYPE {kind} SIZE {size}")
        if count < 1:
            raise PointFileError(f"{path}: field {name!r} has COUNT {count}")
        if name != _PCD_PADDING:
            if name in kept:
                raise PointFileError(f"{path}: duplicate field {name!r}")
            kept.append(name)
        record_names.append(name if name != _PCD_PADDING else f"{_PCD_PADDING}{position}")
        scalar = np.dtype(f"<{_PCD_KINDS[kind]}{size}")
        formats.append(scalar if count == 1 else (scalar, (count,)))
    return np.dtype(list(zip(record_names, formats))), kept, width, height, encoding


def _pcd_binary_compressed(body: bytes, record: np.dtype, points: int, path) -> np.ndarray:
    """PCL's binary_compressed: LZF over the fields stored one after another (column-major)."""
    if len(body) < 8:
        raise PointFileError(f"{path}: binary_compressed data lacks its size words")
    compressed_size, raw_size = np.frombuffer(body, "<u4", count=2)
    if raw_size != points * record.itemsize:
        raise PointFileError(
            f"{path}: binary_compressed holds {raw_size} bytes, expected {points} points x {record.itemsize} B")
    if raw_size == 0:
        return np.empty(0, record)
    try:
        columns = lzf.decompress(body[8:8 + int(compressed_size)], int(raw_size))
    except ValueError as error:
        raise PointFileError(f"{path}: LZF data is corrupt ({error})") from None
    if columns is None or len(columns) != raw_size:
        raise PointFileError(f"{path}: LZF data is corrupt or truncated")
    records, start = np.empty(points, record), 0
    for name in record.names:
        field = record.fields[name][0]
        values_per_point = field.itemsize // field.base.itemsize
        records[name] = np.frombuffer(columns, field.base, count=points * values_per_point,
                                      offset=start).reshape(records[name].shape)
        start += points * field.itemsize
    return records


def read_pcd(path: str | os.PathLike) -> PointTable:
    """Read a PCD file (ascii, binary or binary_compressed)."""
    raw = Path(path).read_bytes()
    lines, data_start = _split_header(raw, "DATA", path)
    header = {}
    for line in lines:
        if line and not line.startswith("#"):
            keyword, *values = line.split()
            header[keyword.upper()] = values
    record, kept, width, height, encoding = _pcd_layout(header, path)
    points, body = width * height, raw[data_start:]
    if encoding == "ascii":
        try:
            records = np.loadtxt(io.StringIO(body.decode("ascii")), dtype=record, ndmin=1) if points else \
                np.empty(0, record)
        except ValueError as error:
            raise PointFileError(f"{path}: ascii data does not match the header ({error})") from None
        if len(records) != points:
            raise PointFileError(f"{path}: ascii data has {len(records)} rows, header says {points}")
    elif encoding == "binary":
        if len(body) < points * record.itemsize:
            raise PointFileError(
                f"{path}: binary data has {len(body)} bytes, header needs {points} x {record.itemsize}")
        records = np.frombuffer(body, record, count=points)
    else:
        records = _pcd_binary_compressed(body, record, points, path)
    return PointTable(_copy_fields(records, kept), width, height)


# --- PLY -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlyElement:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy type); lists have type "list"


def _ply_header(lines: list[str], path) -> tuple[str, list[_PlyElement], tuple[int, int] | None]:
    if not lines or lines[0] != "ply":
        raise PointFileError(f"{path}: not a PLY file (first line {lines[0] if lines else ''!r})")
    file_format, elements, grid = None, [], None
    for line in lines[1:-1]:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            file_format = words[1] if len(words) > 1 else None
        elif words[0] == "element":
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise PointFileError(f"{path}: property before any element")
            if words[1] == "list":
                elements[-1].properties.append((words[-1], "list"))
            elif words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise PointFileError(f"{path}: unknown PLY property type {words[1]!r}")
        elif words[:2] == ["comment", _PLY_GRID_COMMENT] and len(words) == 4:
            grid = int(words[2]), int(words[3])
    if file_format not in _PLY_BYTE_ORDERS:
        raise PointFileError(f"{path}: unknown PLY format {file_format!r}")
    return file_format, elements, grid


def read_ply(path: str | os.PathLike) -> PointTable:
    """Read the vertex element of a PLY file (ascii or binary, either byte order).

    Organised shape comes from a ``comment organized WIDTH HEIGHT`` line (see :func:`write_ply`).
    """
    raw = Path(path).read_bytes()
    lines, data_start = _split_header(raw, "end_header", path)
    file_format, elements, grid = _ply_header(lines, path)
    order = _PLY_BYTE_ORDERS[file_format]
    vertex_position = next((i for i, element in enumerate(elements) if element.name == "vertex"), None)
    if vertex_position is None:
        raise PointFileError(f"{path}: PLY file has no vertex element")
    vertex = elements[vertex_position]
    if any(kind == "list" for _, kind in vertex.properties):
        raise PointFileError(f"{path}: list properties on vertices are not supported")
    dtype = np.dtype([(name, order + kind) for name, kind in vertex.properties])
    before = elements[:vertex_position]
    if file_format == "ascii":
        skipped_lines = sum(element.count for element in before)
        try:
            points = np.loadtxt(io.StringIO(raw[data_start:].decode("ascii")), dtype=dtype, skiprows=skipped_lines,
                                max_rows=vertex.count, ndmin=1) if vertex.count else np.empty(0, dtype)
        except ValueError as error:
            raise PointFileError(f"{path}: ascii vertex data does not match the header ({error})") from None
        if len(points) != vertex.count:
            raise PointFileError(f"{path}: {len(points)} vertex rows, header says {vertex.count}")
    else:
        if any(kind == "list" for element in before for _, kind in element.properties):
            raise PointFileError(f"{path}: binary elements with list properties before 'vertex' are not supported")
        offset = data_start + sum(
            element.count * np.dtype([(n, order + k) for n, k in element.properties]).itemsize for element in before)
        if len(raw) < offset + vertex.count * dtype.itemsize:
            raise PointFileError(f"{path}: binary vertex data is truncated")
        points = np.frombuffer(raw, dtype, count=vertex.count, offset=offset)
    width, height = grid if grid and grid[0] * grid[1] == vertex.count else (vertex.count, 1)
    return PointTable(_copy_fields(points, dtype.names), width, height)


def write_ply(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write a structured array as a binary little-endian PLY vertex element.

    A (height, width) array is flattened row-major and its shape kept in a comment line.
    Field types must be PLY scalars (int8..uint32, float32, float64); subarrays are refused.
    """
    points = np.asarray(points)
    if points.dtype.names is None or points.ndim not in (1, 2):
        raise PointFileError(f"write_ply needs a 1-D or 2-D structured array, got {points.dtype} {points.shape}")
    header = ["ply", "format binary_little_endian 1.0"]
    if points.ndim == 2:
        header.append(f"comment {_PLY_GRID_COMMENT} {points.shape[1]} {points.shape[0]}")
    header.append(f"element vertex {points.size}")
    formats = []
    for name in points.dtype.names:
        field = points.dtype.fields[name][0]
        code = f"{field.kind}{field.itemsize}"
        if field.shape or code not in _PLY_NAME_BY_TYPE or " " in name:
            raise PointFileError(f"field {name!r} of dtype {field} cannot be a PLY property")
        header.append(f"property {_PLY_NAME_BY_TYPE[code]} {name}")
        formats.append((name, "<" + code))
    header.append("end_header")
    records = np.empty(points.size, np.dtype(formats))
    flat = points.reshape(-1)
    for name in points.dtype.names:
        records[name] = flat[name]
    Path(path).write_bytes(("\n".join(header) + "\n").encode("ascii") + records.tobytes())


_READERS = {".pcd": read_pcd, ".ply": read_ply}


def read_point_file(path: str | os.PathLike) -> PointTable:
    """Read a .pcd or .ply file, chosen by extension."""
    reader = _READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise PointFileError(f"{path}: unsupported extension (expected one of {sorted(_READERS)})")
    return reader(path)
