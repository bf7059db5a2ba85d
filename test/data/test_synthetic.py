"""Synthetic tabletop frames: exact labels, determinism, Kinect-like noise, camera geometry."""
import numpy as np
import open3d as o3d
import pytest

from mask3d_ros.data import synthetic
from mask3d_ros.data.synthetic import OBJECT, TABLE, UNLABELLED, Camera, KinectNoise

SMALL = Camera.kinect(160, 120)


def world_points(frame):
    """Finite points of a frame in the world frame, with their labels."""
    valid = np.isfinite(frame.xyz).all(-1)
    xyz = frame.xyz[valid].astype(np.float64)
    return xyz @ frame.camera_pose[:3, :3].T + frame.camera_pose[:3, 3], frame.semantic[valid], frame.instance[valid]


def distance_to(part, points):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(part.vertices), o3d.core.Tensor(part.triangles))
    return scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()


def test_ideal_sensor_labels_every_point_with_the_surface_it_lies_on():
    rng = np.random.default_rng(5)
    tabletop = synthetic.random_tabletop(rng, (1.4, 1.0), (0.0, 0.0), num_objects=6)
    eye = np.array([0.0, -0.8, tabletop.table_height + 0.6])
    pose = synthetic.look_at(eye, tabletop.workspace_centre)
    frame = synthetic.render(tabletop, pose, Camera.kinect(320, 240), noise=None)
    points, semantic, instance = world_points(frame)
    objects = [part for part in tabletop.parts if part.semantic == OBJECT]
    assert len(objects) >= 4 and set(np.unique(instance[semantic == OBJECT])) <= {part.instance for part in objects}
    for part in objects:
        mine = instance == part.instance
        if mine.any():
            assert np.all(semantic[mine] == OBJECT)
            assert distance_to(part, points[mine]).max() < 2e-4
    table = semantic == TABLE
    assert table.sum() > 0.5 * len(points) and np.all(instance[table] == 0)
    assert distance_to(tabletop.parts[0], points[table]).max() < 2e-4
    assert not np.any(semantic == UNLABELLED)  # floor and legs are cropped away
    missing = ~np.isfinite(frame.xyz).all(-1)
    assert np.all(frame.semantic[missing] == UNLABELLED) and np.all(frame.instance[missing] == 0)


def test_same_seed_same_frame_and_other_seed_other_frame():
    first, again, other = (synthetic.generate_frame(seed, SMALL) for seed in (11, 11, 12))
    for name in ("xyz", "rgb", "semantic", "instance", "camera_pose"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.camera_pose, other.camera_pose)


def test_depth_noise_follows_the_kinect_model():
    noise, rng = KinectNoise(), np.random.default_rng(0)
    for z in (0.8, 1.0, 2.0):
        noisy = noise.corrupt_depth(np.full(200_000, z), rng)
        step = z**2 * noise.disparity_step / noise.baseline_focal  # depth step of one disparity step
        expected = np.sqrt(noise.sigma(z) ** 2 + step**2 / 12)
        assert abs(noisy.mean() - z) < 1e-3 and noisy.std() == pytest.approx(expected, rel=0.1)
        disparity_steps = noise.baseline_focal / noisy / noise.disparity_step
        np.testing.assert_allclose(disparity_steps, np.round(disparity_steps), atol=1e-6)
    assert noise.sigma(0.4) == noise.sigma_base


def test_frames_look_like_mosd():
    for seed in range(3):
        frame = synthetic.generate_frame(seed, SMALL)
        assert frame.xyz.shape == (120, 160, 3) and frame.rgb.dtype == np.uint8
        scene = frame.to_scene(f"s{seed}")
        z = scene.xyz[:, 2]
        assert 0.45 < z.min() and z.max() < 2.5  # in front of the camera, cropped far away
        assert 0.5 < len(z) / (120 * 160) < 0.95  # the table fills most of the image, some misses
        objects = np.unique(scene.instance[scene.instance > 0])
        assert 1 <= len(objects) <= 16 and np.all(scene.semantic[scene.instance > 0] == OBJECT)
        points, semantic, _ = world_points(frame)
        table = points[semantic == TABLE]
        assert 0.68 < np.median(table[:, 2]) < 0.8
        # table flat to within Kinect noise (mOSD: ~1.7 mm residual at 0.8-1.0 m)
        centred = table - table.mean(0)
        residual = centred @ np.linalg.svd(centred, full_matrices=False)[2][2]
        assert 0.0008 < residual.std() < 0.005
        forward = frame.camera_pose[:3, 2]
        assert -np.sin(np.radians(55)) < forward[2] < -np.sin(np.radians(25))  # looking down 30-50 deg (+roll)
        np.testing.assert_array_equal(frame.xyz.reshape(-1, 3)[scene.valid_index], scene.xyz)


def test_sequence_circles_one_table():
    frames = synthetic.sequence(3, 4, Camera.kinect(80, 60), noise=None)
    eyes = np.array([frame.camera_pose[:3, 3] for frame in frames])
    assert np.ptp(eyes[:, 2]) < 1e-9 and np.ptp(np.linalg.norm(eyes[:, :2], axis=1)) < 1e-9
    assert np.min(np.linalg.norm(np.diff(eyes, axis=0), axis=1)) > 0.5
    tables = [world_points(frame)[0][world_points(frame)[1] == TABLE][:, 2] for frame in frames]
    assert np.ptp([np.median(z) for z in tables]) < 1e-4  # the same table seen from everywhere
    for frame in frames:  # every camera looks at the table centre
        forward, eye = frame.camera_pose[:3, 2], frame.camera_pose[:3, 3]
        t = -eye[:2] @ forward[:2] / (forward[:2] @ forward[:2])
        assert np.linalg.norm((eye + t * forward)[:2]) < 1e-6


def test_training_scenes_and_camera_scaling():
    scenes = synthetic.make_training_scenes(2, seed=4, width=80, height=60)
    assert [scene.organized_shape for scene in scenes] == [(60, 80)] * 2
    assert scenes[0].name != scenes[1].name and scenes[0].name.startswith("synthetic_")
    assert scenes[0].class_names == synthetic.CLASS_NAMES and scenes[0].instance_classes == ("object",)
    assert (SMALL.fx, SMALL.fy, SMALL.cx, SMALL.cy) == (131.25, 131.25, 79.5, 59.5)


def test_varied_frames_pack_more_objects_and_keep_classic_frames_unchanged():
    classic = synthetic.generate_frame(11, SMALL)
    again = synthetic.generate_frame(11, SMALL, varied=False)
    np.testing.assert_array_equal(classic.xyz, again.xyz)
    counts = []
    for seed in range(4):
        varied = synthetic.generate_frame(seed, SMALL, varied=True)
        scene = varied.to_scene("v")
        assert np.all(scene.semantic[scene.instance > 0] == OBJECT)
        counts.append(len(np.unique(scene.instance[scene.instance > 0])))
    assert max(counts) >= 4


def test_touching_placement_puts_objects_against_each_other():
    rng = np.random.default_rng(0)
    placed = [(np.zeros(2), 0.1)]
    centres = [synthetic._touching_place(rng, 0.05, placed, np.zeros(2), (0.3, 0.2)) for _ in range(40)]
    distances = [np.linalg.norm(c) for c in centres if c is not None]
    assert min(distances) < 0.15  # footprints overlap: boxes touch
    assert all(d >= 0.7 * 0.15 - 1e-9 for d in distances)


def test_accumulated_map_is_a_deduplicated_world_frame_cloud():
    scene = synthetic.accumulated_map(3, Camera.kinect(80, 60), voxel_size=0.01)
    assert scene.name == "synthetic_map_3" and scene.class_names == synthetic.CLASS_NAMES
    table = scene.xyz[scene.semantic == TABLE]
    assert 0.68 < np.median(table[:, 2]) < 0.8 and np.ptp(np.percentile(table[:, 2], [5, 95])) < 0.02  # z up
    keys = np.floor(scene.xyz / np.float32(0.01)).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(keys)  # one point per voxel
    again = synthetic.accumulated_map(3, Camera.kinect(80, 60), voxel_size=0.01)
    np.testing.assert_array_equal(scene.xyz, again.xyz)


def test_cached_scenes_come_back_identical(tmp_path):
    first = synthetic.cached_scenes("map", 1, 7, str(tmp_path))
    assert (tmp_path / "map_7.npz").exists()
    second = synthetic.cached_scenes("map", 1, 7, str(tmp_path))
    for name in ("xyz", "rgb", "semantic", "instance"):
        np.testing.assert_array_equal(getattr(first[0], name), getattr(second[0], name))
    assert second[0].semantic.dtype == np.int64 and second[0].name == first[0].name
