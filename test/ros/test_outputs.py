"""Output building from plain data: the segmentation contract, selection, stable ids, labeled
cloud records, InstanceArray and the vision_msgs messages (with a stand-in module)."""
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
from std_msgs.msg import Header

from mask3d_ros.data.colors import unpack_rgb
from mask3d_ros.model.results import NO_CLASS, PointSegmentation, to_point_segmentation
from mask3d_ros.ros.cloud import create_cloud, read_points
from mask3d_ros.ros.outputs import (
    LABELED_CLOUD_DTYPE,
    InstanceTracker,
    add_boxes,
    build_detections,
    build_instance_array,
    build_label_info,
    instance_colour,
    labeled_records,
    select_instances,
)

NAMES = ("table", "mug", "box")


def two_blobs(offset=0.0):
    rng = np.random.default_rng(1)
    a = rng.normal((0 + offset, 0, 0), 0.02, (50, 3))
    b = rng.normal((1 + offset, 0, 0), 0.02, (30, 3))
    floor = rng.uniform(-1, 2, (20, 3))
    return np.concatenate([a, b, floor]).astype(np.float32)


def two_blob_segmentation():
    point_instance = np.r_[np.zeros(50), np.ones(30), -np.ones(20)].astype(int)
    return PointSegmentation.from_point_instances(point_instance, [1, 2], [0.9, 0.6], NAMES, {"total": 5.0})


def test_from_point_instances_builds_a_consistent_segmentation():
    seg = two_blob_segmentation()
    seg.validate(100)
    assert [(i.id, i.class_name, len(i.indices)) for i in seg.instances] == [(1, "mug", 50), (2, "box", 30)]
    assert seg.class_id[99] == NO_CLASS and seg.instance_id[99] == 0 and seg.score[99] == 0
    assert seg.score[0] == pytest.approx(0.9) and seg.class_id[60] == 2
    with pytest.raises(ValueError):
        seg.validate(99)


def test_validate_catches_inconsistent_indices():
    seg = two_blob_segmentation()
    seg.instances[0].indices = seg.instances[0].indices[:-1]
    with pytest.raises(ValueError, match="no instance lists"):
        seg.validate(100)


def test_selection_by_score_size_class_and_count():
    seg = two_blob_segmentation()
    assert [i.id for i in select_instances(seg, score_threshold=0.7).instances] == [1]
    high = select_instances(seg, score_threshold=0.7)
    assert np.all(high.instance_id[50:80] == 0) and np.all(high.class_id[50:80] == NO_CLASS)
    high.validate(100)
    assert [i.id for i in select_instances(seg, min_points=40).instances] == [1]
    assert [i.id for i in select_instances(seg, class_filter=["box"]).instances] == [2]
    assert [i.id for i in select_instances(seg, class_filter=["1"]).instances] == [1], "ids as text work too"
    assert [i.id for i in select_instances(seg, max_instances=1).instances] == [1]
    assert len(select_instances(seg).instances) == 2


def test_tracker_keeps_ids_for_overlapping_instances_and_never_reuses_them():
    tracker = InstanceTracker(voxel_size=0.05)
    first = tracker.assign(two_blobs(), two_blob_segmentation())
    ids_first = [i.id for i in first.instances]
    # the same objects, listed in the opposite order by the model
    swapped = PointSegmentation.from_point_instances(
        np.r_[np.ones(50), np.zeros(30), -np.ones(20)].astype(int), [2, 1], [0.6, 0.9], NAMES)
    second = tracker.assign(two_blobs(), swapped)
    assert {i.class_name: i.id for i in second.instances} == {i.class_name: i.id for i in first.instances}
    second.validate(100)
    # the objects moved far away: new ids, never the old ones
    third = tracker.assign(two_blobs(offset=10.0), two_blob_segmentation())
    assert not set(i.id for i in third.instances) & set(ids_first)
    tracker.reset()
    assert [i.id for i in tracker.assign(two_blobs(), two_blob_segmentation()).instances] == [1, 2]


def test_tracker_does_not_match_across_classes():
    tracker = InstanceTracker(voxel_size=0.05)
    first = tracker.assign(two_blobs(), two_blob_segmentation())
    relabelled = PointSegmentation.from_point_instances(
        np.r_[np.zeros(50), np.ones(30), -np.ones(20)].astype(int), [0, 2], [0.9, 0.6], NAMES)
    second = tracker.assign(two_blobs(), relabelled)
    assert second.instances[0].id not in {i.id for i in first.instances}


def test_boxes_labeled_records_and_cloud_round_trip():
    xyz = two_blobs()
    seg = add_boxes(xyz, two_blob_segmentation())
    box = seg.instances[0]
    assert np.allclose(box.center, (xyz[:50].min(0) + xyz[:50].max(0)) / 2, atol=1e-6)
    input_rgb = np.full((100, 3), 200, np.uint8)
    records = labeled_records(xyz, seg, input_rgb)
    assert records.dtype == LABELED_CLOUD_DTYPE
    cloud = create_cloud(Header(frame_id="odom"), LABELED_CLOUD_DTYPE, records)
    fields = {f.name: (f.datatype, f.offset) for f in cloud.fields}
    assert fields["label"][0] == 6 and fields["instance_id"][0] == 6 and fields["score"][0] == 7  # UINT32, FLOAT32
    back = read_points(cloud)
    assert np.array_equal(back["instance_id"], seg.instance_id)
    assert np.array_equal(back["label"], seg.class_id)
    colours = unpack_rgb(back["rgb"])
    assert tuple(colours[0]) == instance_colour(1)
    assert tuple(colours[99]) == (100, 100, 100), "unassigned points keep a dimmed grey of their colour"


def test_instance_array_indices_point_at_the_instance_points():
    seg = add_boxes(two_blobs(), two_blob_segmentation())
    msg = build_instance_array(Header(frame_id="odom"), seg)
    assert [i.id for i in msg.instances] == [1, 2]
    first = msg.instances[0]
    assert first.point_count == 50 and list(first.point_indices) == list(range(50))
    assert first.class_name == "mug" and first.class_id == 1 and first.score == pytest.approx(0.9)
    assert first.center.orientation.w == 1.0 and first.size.x > 0


# --- vision_msgs stand-in (the Humble/Jazzy 4.x field layout) -----------------------------------


@dataclass
class _Vec:
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    w: float = 1.0


@dataclass
class _Pose:
    position: _Vec = field(default_factory=_Vec)
    orientation: _Vec = field(default_factory=_Vec)


@dataclass
class _Hypothesis:
    class_id: str = ""
    score: float = 0.0


@dataclass
class _PoseWithCovariance:
    pose: _Pose = field(default_factory=_Pose)


@dataclass
class ObjectHypothesisWithPose:
    hypothesis: _Hypothesis = field(default_factory=_Hypothesis)
    pose: _PoseWithCovariance = field(default_factory=_PoseWithCovariance)


@dataclass
class _Box:
    center: _Pose = field(default_factory=_Pose)
    size: _Vec = field(default_factory=_Vec)


@dataclass
class Detection3D:
    header: object = None
    results: list = field(default_factory=list)
    bbox: _Box = field(default_factory=_Box)
    id: str = ""


@dataclass
class Detection3DArray:
    header: object = None
    detections: list = field(default_factory=list)


@dataclass
class VisionClass:
    class_id: int = 0
    class_name: str = ""


@dataclass
class LabelInfo:
    header: object = None
    class_map: list = field(default_factory=list)
    threshold: float = 0.0


VISION_MSGS = SimpleNamespace(Detection3DArray=Detection3DArray, Detection3D=Detection3D,
                              ObjectHypothesisWithPose=ObjectHypothesisWithPose, LabelInfo=LabelInfo,
                              VisionClass=VisionClass)


def test_detections_follow_the_humble_jazzy_api():
    seg = add_boxes(two_blobs(), two_blob_segmentation())
    header = Header(frame_id="odom")
    out = build_detections(VISION_MSGS, header, seg)
    assert out.header is header and len(out.detections) == 2
    det = out.detections[0]
    assert det.id == "1" and det.header is header
    assert det.results[0].hypothesis.class_id == "1" and det.results[0].hypothesis.score == pytest.approx(0.9)
    assert det.bbox.center.position.x == pytest.approx(seg.instances[0].center[0])
    assert det.bbox.size.z == pytest.approx(seg.instances[0].size[2])
    assert det.results[0].pose.pose.position.y == pytest.approx(seg.instances[0].center[1])


def test_label_info_maps_ids_to_names():
    info = build_label_info(VISION_MSGS, Header(), NAMES, 0.5)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "table"), (1, "mug"), (2, "box")]
    assert info.threshold == 0.5


def test_segmenter_result_conversion():
    """The Segmenter's VoxelSegmentation (per voxel + inverse_map, -1 none) maps to per-point instances."""
    result = SimpleNamespace(point_instance=np.array([0, 0, -1, 1, 1, 1]), class_ids=np.array([2, 0]),
                             scores=np.array([0.8, 0.4], np.float32), timings_ms={"total": 3.0})
    seg = to_point_segmentation(result, NAMES)
    seg.validate(6)
    assert [(i.id, i.class_name, list(i.indices)) for i in seg.instances] == [(1, "box", [0, 1]),
                                                                              (2, "table", [3, 4, 5])]
    assert seg.timings_ms == {"total": 3.0}


def test_tracker_leaves_out_points_beyond_the_key_range():
    """A point too far for the grid keys belongs to no voxel; the rest of its instance still matches."""
    xyz = two_blobs()
    xyz[0] = 1e9                                      # beyond +-2^20 voxels of 5 cm
    tracker = InstanceTracker(voxel_size=0.05)
    first = tracker.assign(xyz, two_blob_segmentation())
    second = tracker.assign(two_blobs(), two_blob_segmentation())
    assert [i.id for i in second.instances] == [i.id for i in first.instances] == [1, 2]


def test_from_point_instances_matches_a_per_point_reading():
    """Shuffled owners, an instance with no points: rows ascending, per-point values from the owner."""
    point_instance = np.random.default_rng(4).choice([-1, 0, 1, 3], 500)
    classes, scores = [1, 2, 0, 2], [0.3, 0.8, 0.5, 0.6]
    seg = PointSegmentation.from_point_instances(point_instance, classes, scores, NAMES)
    seg.validate(500)
    assert [inst.id for inst in seg.instances] == [2, 4, 1], "by score; instance 3 has no points"
    for inst in seg.instances:
        np.testing.assert_array_equal(inst.indices, np.flatnonzero(point_instance == inst.id - 1))
        assert (inst.class_id, inst.score) == (classes[inst.id - 1], pytest.approx(scores[inst.id - 1]))
    owned = point_instance >= 0
    np.testing.assert_array_equal(seg.instance_id, np.where(owned, point_instance + 1, 0))
    np.testing.assert_array_equal(seg.class_id[~owned], NO_CLASS)
    np.testing.assert_array_equal(seg.class_id[owned], np.take(classes, point_instance[owned]))
    np.testing.assert_array_equal(seg.score[owned], np.take(np.float32(scores), point_instance[owned]))
