"""PCD and PLY files: every encoding against independent writers, malformed files, real mOSD frames."""
import lzf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask3d_ros.data.pointfile import PointFileError, PointTable, read_pcd, read_ply, read_point_file, write_ply

PCD_TYPES = {"i1": ("I", 1), "u1": ("U", 1), "i2": ("I", 2), "u2": ("U", 2), "i4": ("I", 4), "u4": ("U", 4),
             "i8": ("I", 8), "u8": ("U", 8), "f4": ("F", 4), "f8": ("F", 8)}


def pcd_bytes(records, encoding, width=None, height=1, padding=0):
    """A PCD file written the way PCL does, independently of the reader (padding: a '_' field)."""
    names = list(records.dtype.names) + (["_"] if padding else [])
    kinds, sizes, counts, columns = [], [], [], []
    for name in records.dtype.names:
        field = records.dtype.fields[name][0]
        kind, size = PCD_TYPES[f"{field.base.kind}{field.base.itemsize}"]
        kinds.append(kind), sizes.append(size), counts.append(int(np.prod(field.shape, dtype=int)))
        columns.append(np.ascontiguousarray(records[name]).astype(field.base.newbyteorder("<")))
    if padding:
        kinds.append("U"), sizes.append(1), counts.append(padding)
        columns.append(np.full((len(records), padding), 0xCD, np.uint8))
    width = len(records) if width is None else width
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(names),
        "SIZE " + " ".join(map(str, sizes)), "TYPE " + " ".join(kinds), "COUNT " + " ".join(map(str, counts)),
        f"WIDTH {width}", f"HEIGHT {height}", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {len(records)}",
        f"DATA {encoding}", ""]).encode()
    flat = [column.reshape(len(records), count) for column, count in zip(columns, counts)]
    if encoding == "ascii":
        rows = [" ".join(repr(value.item()) for column in flat for value in column[i]) for i in range(len(records))]
        return header + "".join(row + "\n" for row in rows).encode()
    if encoding == "binary":
        return header + b"".join(b"".join(column[i].tobytes() for column in flat) for i in range(len(records)))
    raw = b"".join(column.tobytes() for column in flat)
    compressed = lzf.compress(raw, 2 * len(raw) + 16) if raw else b""
    return header + np.array([len(compressed), len(raw)], "<u4").tobytes() + compressed


RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("normal", "<f8", (3,)), ("label", "<u2"),
                   ("ring", "u1"), ("t", "<i8"), ("s", "i1")])


@st.composite
def records(draw):
    count = draw(st.integers(0, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    out = np.zeros(count, RECORD)
    out["x"], out["y"], out["z"] = rng.normal(size=(3, count)).astype(np.float32)
    out["x"][rng.random(count) < 0.3] = np.nan
    out["normal"] = rng.normal(size=(count, 3))
    out["label"], out["ring"] = rng.integers(0, 65536, count), rng.integers(0, 256, count)
    out["t"], out["s"] = rng.integers(-2 ** 62, 2 ** 62, count), rng.integers(-128, 128, count)
    return out


@settings(max_examples=25, deadline=None)
@given(records(), st.sampled_from(["ascii", "binary", "binary_compressed"]), st.integers(0, 3))
def test_pcd_encodings_roundtrip(tmp_path_factory, points, encoding, padding):
    path = tmp_path_factory.mktemp("pcd") / "cloud.pcd"
    path.write_bytes(pcd_bytes(points, encoding, padding=padding))
    table = read_pcd(path)
    assert table.points.dtype == RECORD  # packed, '_' padding dropped, count 3 as a subarray
    assert (table.width, table.height) == (len(points), 1) and not table.is_organized
    assert table.points.tobytes() == points.tobytes()


def test_pcd_organized_shape(tmp_path):
    points = np.zeros(6, [("x", "<f4"), ("rgb", "<f4")])
    points["x"] = np.arange(6)
    path = tmp_path / "grid.pcd"
    path.write_bytes(pcd_bytes(points, "binary", width=3, height=2))
    table = read_point_file(path)
    assert table.is_organized and table.grid().shape == (2, 3) and table.grid()["x"][1, 0] == 3


PCD_OK = pcd_bytes(np.zeros(2, [("x", "<f4"), ("y", "<f4")]), "binary")
MALFORMED_PCD = {
    "no DATA line": (PCD_OK.split(b"DATA")[0], "header has no DATA line"),
    "points mismatch": (PCD_OK.replace(b"POINTS 2", b"POINTS 3"), r"POINTS 3 != WIDTH 2 x HEIGHT 1"),
    "truncated binary": (PCD_OK[:-1], "binary data has 15 bytes, header needs 2 x 8"),
    "unknown type": (PCD_OK.replace(b"TYPE F F", b"TYPE F Q"), "field 'y' has unsupported TYPE Q SIZE 4"),
    "bad size": (PCD_OK.replace(b"SIZE 4 4", b"SIZE 4 3"), "field 'y' has unsupported TYPE F SIZE 3"),
    "field count mismatch": (PCD_OK.replace(b"SIZE 4 4", b"SIZE 4"), "FIELDS/SIZE/TYPE/COUNT disagree: 2/1/2/2"),
    "unknown encoding": (PCD_OK.replace(b"DATA binary", b"DATA zipped"), "unknown DATA encoding 'zipped'"),
    "no WIDTH": (PCD_OK.replace(b"WIDTH 2\n", b""), "incomplete or malformed PCD header"),
    "duplicate field": (PCD_OK.replace(b"FIELDS x y", b"FIELDS x x"), "duplicate field 'x'"),
    "ascii rows short": (pcd_bytes(np.zeros(2, [("x", "<f4")]), "ascii").rsplit(b"0.0\n", 1)[0],
                         "ascii data has 1 rows, header says 2"),
    "ascii junk": (pcd_bytes(np.zeros(2, [("x", "<u1")]), "ascii").replace(b"0\n", b"zz\n"),
                   "ascii data does not match the header"),
    "lzf sizes": (pcd_bytes(np.ones(4, [("x", "<f4")]), "binary_compressed").replace(
        np.array([16], "<u4").tobytes(), np.array([12], "<u4").tobytes()),
        "binary_compressed holds 12 bytes, expected 4 points x 4 B"),
    "lzf corrupt": (pcd_bytes(np.ones(64, [("x", "<f4")]), "binary_compressed")[:-3], "LZF data is corrupt"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PCD))
def test_malformed_pcd_raises_specific_error(tmp_path, case):
    content, message = MALFORMED_PCD[case]
    path = tmp_path / "bad.pcd"
    path.write_bytes(content)
    with pytest.raises(PointFileError, match=message):
        read_pcd(path)


# --- real mOSD frames ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["learn/learn0.pcd", "learn/learn25.pcd", "val/test1.pcd", "val/test58.pcd"])
def test_mosd_frames(mosd_dir, name):
    table = read_pcd(mosd_dir / name)
    points = table.points
    assert points.dtype.names == ("label", "x", "y", "z", "rgba")
    assert points["label"].dtype == np.uint32 and points["rgba"].dtype == np.uint32
    finite = np.isfinite(points["x"]) & np.isfinite(points["y"]) & np.isfinite(points["z"])
    labels = points["label"]
    assert np.array_equal(labels == 0, ~finite)  # README: label 0 for every NaN point, and only those
    assert np.all((labels <= 9) | (labels >= 20))  # 1..9 table parts, 10k..10k+9 parts of object k-1
    assert np.all(points["rgba"] >> 24 == 0)  # alpha byte unused
    if name == "val/test58.pcd":  # one of two val frames stored unorganised and dense
        assert (table.width, table.height) == (186764, 1) and finite.all()
    else:
        assert (table.width, table.height) == (640, 480) and len(points) == 307200
        assert 100_000 < finite.sum() < 250_000
        assert np.all(points["z"][finite] > 0.3) and np.all(points["z"][finite] < 3.0)  # Kinect depth range


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
def test_mosd_frame_against_pypcd4(mosd_dir, tmp_path, encoding):
    pypcd4 = pytest.importorskip("pypcd4")
    source = pypcd4.PointCloud.from_path(mosd_dir / "val" / "test1.pcd")
    assert read_pcd(mosd_dir / "val" / "test1.pcd").points.tobytes() == source.pc_data.tobytes()
    part = pypcd4.PointCloud.from_points([source.pc_data[name][:5000] for name in source.fields], source.fields,
                                          source.types)
    path = tmp_path / "part.pcd"
    part.save(path, encoding=pypcd4.Encoding(encoding))
    assert read_pcd(path).points.tobytes() == source.pc_data[:5000].tobytes()


# --- PLY -------------------------------------------------------------------------------------

PLY_RECORD = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                       ("label", "<u4"), ("instance", "<i4"), ("score", "<f8"), ("a", "i1"), ("b", "<i2"),
                       ("c", "<u2")])


def ply_points(count, seed=0):
    rng = np.random.default_rng(seed)
    points = np.zeros(count, PLY_RECORD)
    for name in PLY_RECORD.names:
        kind = PLY_RECORD.fields[name][0]
        if kind.kind == "f":
            points[name] = rng.normal(size=count)
        else:
            info = np.iinfo(kind)
            points[name] = rng.integers(info.min, info.max, count, endpoint=True)
    return points


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4)])
def test_ply_roundtrip_keeps_types_and_grid(tmp_path, shape):
    points = ply_points(int(np.prod(shape))).reshape(shape)
    path = tmp_path / "out.ply"
    write_ply(path, points)
    table = read_point_file(path)
    assert table.points.dtype == PLY_RECORD
    assert table.points.tobytes() == points.tobytes()
    assert (table.height, table.width) == (shape if len(shape) == 2 else (1, shape[0]))


def test_plyfile_reads_what_we_write_and_we_read_what_it_writes(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    points = ply_points(50, seed=3)
    write_ply(tmp_path / "ours.ply", points)
    assert plyfile.PlyData.read(tmp_path / "ours.ply")["vertex"].data.tobytes() == points.tobytes()
    faces = np.array([([0, 1, 2],), ([2, 3, 4, 5],)], dtype=[("vertex_indices", "O")])
    for text, byte_order in ((True, "<"), (False, "<"), (False, ">")):
        vertex = plyfile.PlyElement.describe(points.astype(PLY_RECORD.newbyteorder(byte_order)), "vertex")
        face = plyfile.PlyElement.describe(faces, "face")
        path = tmp_path / f"theirs_{text}_{byte_order == '>'}.ply"
        plyfile.PlyData([vertex, face], text=text, byte_order=byte_order, comments=["made by plyfile"]).write(path)
        table = read_ply(path)
        if text:  # ascii holds floats with enough digits to round-trip float32, doubles to ~1e-16
            for name in PLY_RECORD.names:
                assert np.allclose(table.points[name], points[name], rtol=1e-15, atol=0)
        else:
            assert table.points.tobytes() == points.tobytes()


def test_ply_elements_before_vertex(tmp_path):
    ascii_ply = (b"ply\nformat ascii 1.0\ncomment hello\nelement camera 2\nproperty float f\n"
                 b"element vertex 2\nproperty float x\nproperty uchar label\nelement face 1\n"
                 b"property list uchar int vertex_indices\nend_header\n1.5\n2.5\n0.25 3\n-1 200\n3 0 1 2\n")
    (tmp_path / "a.ply").write_bytes(ascii_ply)
    table = read_ply(tmp_path / "a.ply")
    assert table.points["x"].tolist() == [0.25, -1.0] and table.points["label"].tolist() == [3, 200]
    binary_ply = (b"ply\nformat binary_big_endian 1.0\nelement camera 1\nproperty double f\n"
                  b"element vertex 1\nproperty short x\nend_header\n" + np.array([9.0], ">f8").tobytes()
                  + np.array([-7], ">i2").tobytes())
    (tmp_path / "b.ply").write_bytes(binary_ply)
    points = read_ply(tmp_path / "b.ply").points
    assert points["x"].tolist() == [-7] and points.dtype["x"] == np.dtype("<i2")


MALFORMED_PLY = {
    "not ply": (b"plx\nformat ascii 1.0\nend_header\n", "not a PLY file"),
    "no end_header": (b"ply\nformat ascii 1.0\nelement vertex 1\n", "header has no end_header line"),
    "bad format": (b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n",
                   "unknown PLY format 'binary_middle_endian'"),
    "no vertex": (b"ply\nformat ascii 1.0\nelement face 0\nend_header\n", "no vertex element"),
    "bad type": (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float16 x\nend_header\n1\n",
                 "unknown PLY property type 'float16'"),
    "truncated": (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nend_header\n"
                  + bytes(7), "binary vertex data is truncated"),
    "short ascii": (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1\n2\n",
                    "2 vertex rows, header says 3"),
    "vertex list": (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar int n\nend_header\n1 1\n",
                    "list properties on vertices"),
    "binary list first": (b"ply\nformat binary_little_endian 1.0\nelement face 1\nproperty list uchar int n\n"
                          b"element vertex 0\nproperty float x\nend_header\n", "list properties before 'vertex'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PLY))
def test_malformed_ply_raises_specific_error(tmp_path, case):
    content, message = MALFORMED_PLY[case]
    (tmp_path / "bad.ply").write_bytes(content)
    with pytest.raises(PointFileError, match=message):
        read_ply(tmp_path / "bad.ply")


def test_write_ply_refuses_what_ply_cannot_hold(tmp_path):
    with pytest.raises(PointFileError, match="field 'n' of dtype int64"):
        write_ply(tmp_path / "x.ply", np.zeros(2, [("x", "f4"), ("n", "i8")]))
    with pytest.raises(PointFileError, match="field 'v'"):
        write_ply(tmp_path / "x.ply", np.zeros(2, [("v", "f4", (3,))]))
    with pytest.raises(PointFileError, match="structured array"):
        write_ply(tmp_path / "x.ply", np.zeros((2, 3)))


def test_read_point_file_dispatch(tmp_path):
    with pytest.raises(PointFileError, match=r"unsupported extension \(expected one of \['.pcd', '.ply'\]\)"):
        read_point_file(tmp_path / "cloud.xyz")
    write_ply(tmp_path / "UPPER.PLY", np.ones(1, [("x", "<f4")]))
    table = read_point_file(tmp_path / "UPPER.PLY")
    assert isinstance(table, PointTable) and table.points.tolist() == [(1.0,)] and (table.width, table.height) == (1, 1)
