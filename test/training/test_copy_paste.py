"""Copy-paste composition: real objects set down on other frames' tables, with occlusion."""
from dataclasses import replace

import numpy as np
import pytest

from mask3d_ros.data import synthetic
from mask3d_ros.data.datasets import IGNORE, load_mosd
from mask3d_ros.training import copy_paste

SMALL = synthetic.Camera.kinect(320, 240)


@pytest.fixture(scope="module")
def frames():
    return [synthetic.generate_frame(seed, SMALL).to_scene(f"synthetic_{seed}") for seed in (3, 4, 5)]


def _new_ids(host, scene):
    return [i for i in np.unique(scene.instance) if i > host.instance.max()]


def test_visible_hides_what_is_behind_a_nearer_surface():
    grid = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 121), np.linspace(-0.3, 0.3, 121)), -1).reshape(-1, 2)
    far = np.c_[grid, np.full(len(grid), 1.0)]
    near = np.c_[grid[np.abs(grid).max(1) < 0.05] * 0.5, np.full((np.abs(grid).max(1) < 0.05).sum(), 0.5)]
    seen = copy_paste.visible(np.r_[far, near], SMALL)
    far_seen, near_seen = seen[:len(far)], seen[len(far):]
    assert near_seen.all()
    behind = np.abs(far[:, :2]).max(1) < 0.045          # inside the near square's silhouette
    outside = np.abs(far[:, :2]).max(1) > 0.06
    assert not far_seen[behind].any()
    assert far_seen[outside].all()


def test_objects_are_cut_out_in_table_coordinates(frames):
    for frame in frames:
        objects = copy_paste.extract_objects(frame)
        assert objects, frame.name
        for obj in objects:
            assert np.percentile(obj.xyz[:, 2], 2) < copy_paste.ON_TABLE          # standing on the table
            assert np.abs(np.median(obj.xyz[:, :2], axis=0)).max() < obj.radius    # footprint centred
            assert len(obj.xyz) >= copy_paste.MIN_OBJECT_POINTS and obj.rgb.dtype == np.uint8


def test_compose_adds_labelled_objects_on_free_table_spots(frames):
    host, bank = frames[0], [obj for frame in frames[1:] for obj in copy_paste.extract_objects(frame)]
    rng = np.random.default_rng(0)
    scene = copy_paste.compose(host, bank, rng, added=(4, 4), touching=0.0, stacked=0.0, camera=SMALL)
    new = _new_ids(host, scene)
    assert len(new) >= 2                                      # four tried; a small table may refuse some
    plane = copy_paste.table_plane(host)
    for instance in new:
        member = scene.instance == instance
        assert (scene.semantic[member] == 1).all()            # "object"
        heights = plane.to_plane(scene.xyz[member])[:, 2]
        assert np.percentile(heights, 2) < 0.03               # set down on the table, not floating
    assert set(np.unique(scene.semantic)) <= {IGNORE, 0, 1}
    assert copy_paste.visible(scene.xyz, SMALL).all()         # hidden points were removed
    assert (scene.instance[scene.semantic == IGNORE] == 0).all()


def test_stacked_objects_rest_on_others(frames):
    host, bank = frames[0], [obj for frame in frames for obj in copy_paste.extract_objects(frame)]
    scene = copy_paste.compose(host, bank, np.random.default_rng(1), added=(3, 3), touching=0.0, stacked=1.0,
                               camera=SMALL)
    plane = copy_paste.table_plane(host)
    lowest = [np.percentile(plane.to_plane(scene.xyz[scene.instance == i])[:, 2], 2) for i in _new_ids(host, scene)]
    assert lowest and max(lowest) > 0.03                      # at least one sits above the table


def test_resized_objects_keep_their_footing_and_change_size(frames):
    host, bank = frames[0], [obj for frame in frames[1:] for obj in copy_paste.extract_objects(frame)][:1]
    plane = copy_paste.table_plane(host)
    extents = []
    for factor in (0.5, 1.5):
        scene = copy_paste.compose(host, bank, np.random.default_rng(2), added=(1, 1), touching=0.0, stacked=0.0,
                                   turn_noise=0.0, scale=(factor, factor), height_scale=(factor, factor),
                                   camera=SMALL)
        (pasted,) = _new_ids(host, scene)
        uvw = plane.to_plane(scene.xyz[scene.instance == pasted])
        assert uvw[:, 2].min() < 0.04                          # still standing on the table
        extents.append(np.ptp(uvw, axis=0))
    assert extents[1][2] > 2 * extents[0][2]                     # 3x the height (less what is hidden)
    assert extents[1][:2].max() > 2 * extents[0][:2].max()


def test_make_scenes_is_deterministic_in_the_seed(frames):
    first, again, other = (copy_paste.make_scenes(frames, 2, seed, camera=SMALL) for seed in (5, 5, 6))
    assert all(np.array_equal(a.xyz, b.xyz) and np.array_equal(a.instance, b.instance) for a, b in zip(first, again))
    assert not all(len(a.xyz) == len(b.xyz) and np.array_equal(a.xyz, b.xyz) for a, b in zip(first, other))
    no_table = replace(frames[0], semantic=np.where(frames[0].semantic == 0, IGNORE, frames[0].semantic))
    with pytest.raises(ValueError, match="labelled table"):
        copy_paste.make_scenes([no_table], 1, 0)


def test_real_mosd_frames_compose_into_cluttered_scenes(mosd_dir):
    learn = [load_mosd(mosd_dir / "learn" / f"learn{index}.pcd") for index in (0, 20, 28, 35)]
    scenes = copy_paste.make_scenes(learn, 3, 0)
    for scene in scenes:
        host_objects = max(len(np.unique(f.instance[f.instance > 0])) for f in learn)
        objects = len(np.unique(scene.instance[scene.instance > 0]))
        assert objects > host_objects                         # more clutter than any source frame
        assert copy_paste.visible(scene.xyz).all()
