"""Scene readers: mOSD frames, a tiny hand-made ScanNet scene, and our own PLY / NPZ format."""
import json

import numpy as np
import pytest

from mask3d_ros.data import datasets
from mask3d_ros.data.datasets import IGNORE, Scene, load_mosd, load_scannet, load_scene, write_scene
from mask3d_ros.data.pointfile import read_pcd


def test_mosd_frame_merges_parts_into_objects(mosd_dir):
    path = mosd_dir / "learn" / "learn36.pcd"  # has objects made of several parts (labels 41-44)
    scene = load_mosd(path)
    raw = read_pcd(path).points
    finite = np.isfinite(np.stack([raw["x"], raw["y"], raw["z"]], 1)).all(1)
    label = raw["label"][finite].astype(int)

    assert scene.name == "learn36" and scene.class_names == ("table", "object")
    assert scene.instance_classes == ("object",)
    assert np.isfinite(scene.xyz).all() and len(scene.xyz) == finite.sum()
    assert scene.organized_shape == (480, 640)
    np.testing.assert_array_equal(scene.valid_index, np.flatnonzero(finite))
    np.testing.assert_array_equal(scene.xyz[:, 2], raw["z"][finite])
    assert np.all(scene.semantic == np.where(label < 10, 0, 1))
    assert np.all(scene.instance[scene.semantic == 0] == 0)
    np.testing.assert_array_equal(scene.instance[label >= 10], label[label >= 10] // 10 - 1)
    assert set(np.unique(scene.instance)) == set(range(np.max(label) // 10))
    assert scene.rgb.dtype == np.uint8 and scene.rgb.shape == (len(scene.xyz), 3)


def test_unorganised_mosd_frame_has_no_grid(mosd_dir):
    scene = load_scene(mosd_dir / "val" / "test43.pcd")
    assert scene.organized_shape is None and scene.valid_index is None


# --- ScanNet ------------------------------------------------------------------------------------

# 8 vertices in 4 segments: segments 10 and 11 are a chair, 12 a desk, 13 unannotated.
SEGMENTS = [10, 10, 11, 11, 12, 12, 13, 13]
GROUPS = [
    {"id": 0, "objectId": 0, "segments": [10, 11], "label": "office chair"},
    {"id": 1, "objectId": 1, "segments": [12], "label": "desk"},
]
NYU40 = [5, 5, 5, 5, 14, 14, 0, 0]  # chair, desk, unannotated


def write_scannet_mesh(path, with_labels: bool):
    """A binary PLY laid out as ScanNet's: vertex (x y z red green blue alpha [label]) then faces."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    fields += [("label", "<u2")] if with_labels else []
    vertices = np.zeros(8, fields)
    vertices["x"] = np.arange(8)
    vertices["red"] = np.arange(8) * 10
    if with_labels:
        vertices["label"] = NYU40
    properties = "".join(f"property {dict(f4='float', u1='uchar', u2='ushort')[t[-2:]]} {name}\n" for name, t in fields)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex 8\n{properties}"
              "element face 2\nproperty list uchar int vertex_indices\nend_header\n")
    faces = b"".join(bytes([3]) + np.array(tri, "<i4").tobytes() for tri in ([0, 1, 2], [4, 5, 6]))
    path.write_bytes(header.encode() + vertices.tobytes() + faces)


@pytest.fixture
def scannet_scene(tmp_path):
    folder = tmp_path / "scene0000_00"
    folder.mkdir()
    write_scannet_mesh(folder / "scene0000_00_vh_clean_2.ply", with_labels=False)
    write_scannet_mesh(folder / "scene0000_00_vh_clean_2.labels.ply", with_labels=True)
    (folder / "scene0000_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": SEGMENTS}))
    (folder / "scene0000_00.aggregation.json").write_text(json.dumps({"sceneId": "scene0000_00", "segGroups": GROUPS}))
    return folder


def test_scannet_with_nyu40_labels(scannet_scene):
    scene = load_scene(scannet_scene)  # a folder: the .labels.ply is read
    assert scene.name == "scene0000_00"
    assert scene.class_names == datasets.SCANNET20_CLASSES
    assert "wall" not in scene.instance_classes and "chair" in scene.instance_classes
    chair, desk = scene.class_names.index("chair"), scene.class_names.index("desk")
    assert scene.semantic.tolist() == [chair] * 4 + [desk] * 2 + [IGNORE] * 2
    assert scene.instance.tolist() == [1, 1, 1, 1, 2, 2, 0, 0]
    assert scene.xyz[:, 0].tolist() == list(range(8)) and scene.rgb[:, 0].tolist() == list(range(0, 80, 10))


def test_scannet_with_a_label_map(scannet_scene):
    mesh = scannet_scene / "scene0000_00_vh_clean_2.ply"
    scene = load_scannet(mesh, label_map={"office chair": "seat", "chair": "seat"})
    assert scene.class_names == ("seat",) and scene.instance_classes == ("seat",)
    assert scene.semantic.tolist() == [0] * 4 + [IGNORE] * 4  # the desk is not mapped
    assert scene.instance.tolist() == [1, 1, 1, 1, 2, 2, 0, 0]
    with pytest.raises(ValueError, match="label_map"):
        load_scannet(mesh)  # no nyu40 labels in this mesh


# --- own format ---------------------------------------------------------------------------------


def make_scene(organised: bool) -> Scene:
    rng = np.random.default_rng(0)
    shape = (4, 5)
    valid_index = np.flatnonzero(rng.random(20) < 0.7) if organised else None
    n = len(valid_index) if organised else 12
    return Scene(
        xyz=rng.normal(size=(n, 3)).astype(np.float32),
        rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
        semantic=rng.integers(-1, 2, n),
        instance=rng.integers(0, 4, n),
        class_names=("table", "mug"),
        instance_classes=("mug",),
        name="own",
        organized_shape=shape if organised else None,
        valid_index=valid_index,
    )


@pytest.mark.parametrize("suffix", [".ply", ".npz"])
@pytest.mark.parametrize("organised", [False, True])
def test_own_format_round_trip(tmp_path, suffix, organised):
    scene = make_scene(organised)
    write_scene(tmp_path / f"own{suffix}", scene)
    loaded = load_scene(tmp_path / f"own{suffix}")
    for name in ("xyz", "rgb", "semantic", "instance"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(scene, name))
    assert (loaded.class_names, loaded.instance_classes) == (scene.class_names, scene.instance_classes)
    assert loaded.name == "own"
    assert loaded.organized_shape == scene.organized_shape
    if organised:
        np.testing.assert_array_equal(loaded.valid_index, scene.valid_index)


def test_own_format_classes(tmp_path):
    scene = make_scene(False)
    write_scene(tmp_path / "a.npz", scene)
    with pytest.raises(ValueError, match="other classes"):
        write_scene(tmp_path / "b.npz", Scene(**{**scene.__dict__, "class_names": ("x", "mug")}))
    (tmp_path / datasets.CLASSES_FILE).unlink()
    unnamed = load_scene(tmp_path / "a.npz")
    assert unnamed.class_names == unnamed.instance_classes == ("class_0", "class_1")


def test_dispatch():
    assert datasets.dataset_of("x/learn0.pcd") == "mosd"
    assert datasets.dataset_of("x/scene0000_00_vh_clean_2.ply") == "scannet"
    assert datasets.dataset_of("x/mine.ply") == "ply" and datasets.dataset_of("x/mine.npz") == "npz"
    with pytest.raises(ValueError, match="unknown dataset"):
        load_scene("x.ply", dataset="kitti")
