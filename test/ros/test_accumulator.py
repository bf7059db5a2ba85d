"""RollingMap: voxel de-duplication, frame/age windows, caps, crops, injected poses."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask3d_ros.model.voxel import grid_keys
from mask3d_ros.ros.accumulator import RollingMap
from mask3d_ros.ros.poses import NS_PER_S, StaticPoses, matrix_from_pose

GREY = np.array([100, 100, 100], np.uint8)


def plane(n=20, spacing=0.05, z=1.0, offset=(0.0, 0.0)):
    """An n x n grid of points on z = const, in the sensor frame (off voxel boundaries)."""
    u, v = np.meshgrid(np.arange(n) * spacing + offset[0] + 0.0123, np.arange(n) * spacing + offset[1] + 0.0123)
    return np.stack([u.ravel(), v.ravel(), np.full(n * n, z)], 1).astype(np.float32)


def colours(n, value=100):
    return np.full((n, 3), value, np.uint8)


def translation(x=0.0, y=0.0, z=0.0):
    return matrix_from_pose((x, y, z), (0, 0, 0, 1))


def test_voxel_deduplication_keeps_one_point_per_voxel_newest_wins():
    m = RollingMap(voxel_size=0.1, max_frames=0)
    xyz = plane(10, spacing=0.02)  # 0.18 m square: 2 x 2 voxels
    m.add(xyz, colours(len(xyz), 10), np.eye(4), 1 * NS_PER_S)
    assert m.num_points == 4
    m.add(xyz, colours(len(xyz), 200), np.eye(4), 2 * NS_PER_S)
    snap = m.snapshot()
    assert len(snap) == 4
    assert np.all(snap.rgb == 200), "the newest observation of a voxel replaces older ones"
    keys, _ = grid_keys(snap.xyz, 0.1)
    assert len(np.unique(keys)) == len(keys)


def test_injected_poses_put_points_in_the_fixed_frame():
    """A camera moving 1 m along x sees a fixed wall: in the fixed frame the points coincide."""
    wall_world = plane(10, 0.1, z=3.0)
    m = RollingMap(voxel_size=0.05, max_frames=0)
    poses = StaticPoses(lambda frame, stamp: translation(x=stamp / NS_PER_S))
    for t in range(3):
        pose = poses.lookup("cam", t * NS_PER_S)
        seen = wall_world - pose[:3, 3].astype(np.float32)  # the wall in the camera frame
        m.add(seen, colours(len(seen)), pose, t * NS_PER_S)
    snap = m.snapshot()
    assert len(snap) == len(wall_world), "the same wall seen three times is stored once"
    assert np.allclose(np.sort(snap.xyz[:, 0]), np.sort(wall_world[:, 0]), atol=1e-5)
    assert snap.stamp_ns == 2 * NS_PER_S
    assert snap.frames == 1, "every voxel was refreshed by the last frame"


def test_frame_window_forgets_points_not_seen_in_the_last_n_frames():
    m = RollingMap(voxel_size=0.05, max_frames=2)
    for i in range(4):  # four disjoint patches
        xyz = plane(4, 0.1, offset=(i * 10.0, 0.0))
        m.add(xyz, colours(len(xyz)), np.eye(4), i * NS_PER_S)
    snap = m.snapshot()
    assert len(snap) == 2 * 16
    assert snap.xyz[:, 0].min() >= 20.0 - 1e-6, "only the last two patches remain"
    assert m.num_frames == 2


def test_age_window_uses_cloud_stamps_not_wall_time():
    m = RollingMap(voxel_size=0.05, max_age_s=1.5)
    for i, t in enumerate([0.0, 1.0, 2.0, 3.0]):
        xyz = plane(3, 0.1, offset=(i * 10.0, 0.0))
        m.add(xyz, colours(len(xyz)), np.eye(4), int(t * NS_PER_S))
    assert sorted({int(x // 10) for x in m.snapshot().xyz[:, 0]}) == [2, 3]


def test_time_jumping_back_clears_the_map():
    m = RollingMap(voxel_size=0.05, max_frames=0)
    xyz = plane(3)
    m.add(xyz, colours(len(xyz)), np.eye(4), 100 * NS_PER_S)
    result = m.add(xyz + 5, colours(len(xyz)), np.eye(4), 10 * NS_PER_S)  # bag restarted
    assert result.cleared
    assert len(m.snapshot()) == len(xyz) and m.snapshot().stamp_ns == 10 * NS_PER_S
    small_jitter = m.add(xyz + 9, colours(len(xyz)), np.eye(4), 10 * NS_PER_S - 1000)
    assert not small_jitter.cleared


def test_max_points_cap_drops_oldest_first():
    m = RollingMap(voxel_size=0.05, max_frames=0, max_points=50)
    old = plane(5, 0.1, offset=(0.0, 0.0))  # 25 points
    new = plane(5, 0.1, offset=(10.0, 0.0))  # 25 points
    newer = plane(5, 0.1, offset=(20.0, 0.0))  # 25 points
    for i, xyz in enumerate((old, new, newer)):
        m.add(xyz, colours(len(xyz)), np.eye(4), i * NS_PER_S)
    snap = m.snapshot()
    assert len(snap) == 50
    assert snap.xyz[:, 0].min() >= 10.0 - 1e-6, "the oldest patch went first"


def test_max_points_subsamples_a_single_huge_cloud_uniformly():
    m = RollingMap(voxel_size=0.01, max_points=100)
    xyz = plane(40, 0.05)  # 1600 points, all in distinct voxels
    m.add(xyz, colours(len(xyz)), np.eye(4), 0)
    snap = m.snapshot()
    assert len(snap) == 100
    assert snap.xyz[:, 0].max() > 1.5 and snap.xyz[:, 0].min() < 0.4, "spread over the whole cloud"


def test_roi_box_in_fixed_frame_and_range_crop_in_sensor_frame():
    m = RollingMap(voxel_size=0.01, roi_min=[-1, -1, -1], roi_max=[1, 1, 1], max_range=2.5)
    sensor_points = np.array([[0, 0, 1.0], [0, 0, 2.0], [0, 0, 3.0]], np.float32)
    pose = translation(z=-1.5)  # sensor 1.5 m below the fixed origin
    result = m.add(sensor_points, colours(3), pose, 0)
    # ranges 1, 2, 3: the 3 m point is out of range; in the fixed frame z = -0.5, 0.5 (both in the box)
    assert result.points_kept == 2
    assert np.allclose(np.sort(m.snapshot().xyz[:, 2]), [-0.5, 0.5])
    m2 = RollingMap(voxel_size=0.01, min_range=1.5)
    m2.add(sensor_points, colours(3), np.eye(4), 0)
    assert len(m2.snapshot()) == 2


def test_reset_and_snapshots_are_immutable():
    m = RollingMap(voxel_size=0.05)
    xyz = plane(4)
    m.add(xyz, colours(len(xyz)), np.eye(4), 0)
    before = m.snapshot()
    version = before.version
    m.add(xyz + 100, colours(len(xyz)), np.eye(4), NS_PER_S)
    assert len(before) == 16 and before.xyz[:, 0].max() < 50, "a snapshot is not changed by later adds"
    assert m.version > version
    m.reset()
    assert m.num_points == 0 and len(m.snapshot()) == 0 and m.snapshot().stamp_ns == 0


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        RollingMap(voxel_size=0)
    with pytest.raises(ValueError):
        RollingMap(voxel_size=0.1, roi_min=[0, 0, 0], roi_max=[1, -1, 1])
    with pytest.raises(ValueError):
        RollingMap(voxel_size=0.1).add(np.zeros((3, 3)), np.zeros((2, 3), np.uint8), np.eye(4), 0)


def test_points_outside_the_key_range_are_dropped_not_wrapped():
    m = RollingMap(voxel_size=0.001)
    xyz = np.array([[0, 0, 0], [5000.0, 0, 0]], np.float32)  # 5 km at 1 mm is beyond 2^20 voxels
    m.add(xyz, colours(2), np.eye(4), 0)
    assert m.num_points == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.floats(-3, 3), st.floats(-3, 3)), min_size=1, max_size=8),
       st.integers(0, 3), st.integers(5, 300))
def test_memory_stays_bounded_and_voxels_unique(frames, max_frames, max_points):
    """Whatever the clouds, the map holds <= max_points points, one per voxel, inside the window."""
    rng = np.random.default_rng(0)
    m = RollingMap(voxel_size=0.1, max_frames=max_frames, max_points=max_points)
    for i, (n, dx, dy) in enumerate(frames):
        xyz = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
        m.add(xyz, np.full((n, 3), i, np.uint8), translation(dx, dy), i * NS_PER_S // 10)  # colour: the cloud
        snap = m.snapshot()
        assert len(snap) <= max_points
        assert snap.frames == len(np.unique(snap.rgb[:, 0])), "frames counts the clouds that still hold points"
        keys, _ = grid_keys(snap.xyz, 0.1)
        assert len(np.unique(keys)) == len(keys)
        if max_frames:
            assert m.num_frames <= max_frames
