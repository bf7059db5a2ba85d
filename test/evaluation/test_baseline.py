"""The RANSAC + DBSCAN baseline: sane and deterministic on real frames, exact on easy synthetic ones."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from mask3d_ros.data import synthetic
from mask3d_ros.data.datasets import load_mosd
from mask3d_ros.evaluation import baseline
from mask3d_ros.evaluation.ap import evaluate
from mask3d_ros.evaluation.baseline import BaselineParams
from mask3d_ros.tools import evaluate as eval_cli

VAL_FRAMES = ("test1.pcd", "test4.pcd", "test13.pcd", "test28.pcd")  # boxes and occluded objects


@pytest.fixture(scope="module")
def val_scenes(mosd_dir):
    return [load_mosd(mosd_dir / "val" / name) for name in VAL_FRAMES]


def ap(scenes, predictions):
    return evaluate(((s.semantic, s.instance, p) for s, p in zip(scenes, predictions)),
                    scenes[0].class_names, scenes[0].instance_classes)


def test_baseline_on_mosd_val_frames_is_sane_and_deterministic(val_scenes):
    first = [baseline.predict_scene(scene) for scene in val_scenes]
    again = [baseline.predict_scene(scene) for scene in val_scenes]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.scores, b.scores)
    for scene, predictions in zip(val_scenes, first):
        assert predictions.masks.shape == (len(predictions.scores), len(scene.xyz))
        assert np.all(predictions.classes == scene.class_names.index("object"))
        assert np.all((predictions.scores > 0) & (predictions.scores < 1))
        assert predictions.masks.sum(0).max() <= 1  # clusters do not overlap
        table_in_masks = (predictions.masks.any(0) & (scene.semantic == 0)).sum() / (scene.semantic == 0).sum()
        assert table_in_masks < 0.01
    result = ap(val_scenes, first)
    assert result.AP50 > 0.9 and result.AP > 0.7  # these frames have well separated objects


def test_separated_synthetic_objects_become_one_cluster_each():
    rng = np.random.default_rng(3)  # three objects standing apart (stacked boxes would merge)
    tabletop = synthetic.random_tabletop(rng, (1.2, 1.0), (0.0, 0.0), workspace_half=(0.3, 0.2), num_objects=3)
    eye = np.array([0.0, -0.7, tabletop.table_height + 0.6])
    pose = synthetic.look_at(eye, tabletop.workspace_centre)
    frame = synthetic.render(tabletop, pose, synthetic.Camera.kinect(320, 240))
    scene = frame.to_scene("three")
    assert ap([scene], [baseline.predict_scene(scene)]).AP50 == pytest.approx(1.0)


def test_tuning_picks_from_the_grid(val_scenes):
    grid = {"cluster_eps": (0.015, 0.3)}  # 30 cm merges neighbouring objects
    params, ap50 = baseline.tune_baseline(val_scenes[:2], grid)
    assert params == BaselineParams(cluster_eps=0.015) and ap50 == pytest.approx(1.0)


def test_eval_cli_on_baseline_writes_json(mosd_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    frames = [str(mosd_dir / "val" / name) for name in VAL_FRAMES[:2]]
    assert eval_cli.main(["--baseline", "--dataset", "mosd", *frames, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["AP50"] == pytest.approx(1.0) and set(report["classes"]) == {"object"}
    assert report["predictor"] == "baseline" and report["frames"] == frames
    assert "| object |" in capsys.readouterr().out


def test_segmenter_predictor_maps_voxel_instances_to_points_and_classes():
    segmentation = SimpleNamespace(masks=np.array([[True, False], [False, True]]), inverse_map=np.array([0, 0, 1]),
                                   class_ids=np.array([1, 0]), scores=np.array([0.9, 0.4], np.float32))
    predictor = eval_cli.SegmenterPredictor.__new__(eval_cli.SegmenterPredictor)
    predictor.disjoint = False                       # __init__ skipped: the state it would set
    predictor.segmenter = SimpleNamespace(preset=SimpleNamespace(class_names=("chair", "object")),
                                          segment=lambda xyz, rgb: segmentation)
    scene = synthetic.Frame(np.zeros((1, 3, 3), np.float32), np.zeros((1, 3, 3), np.uint8), np.zeros((1, 3), int),
                            np.zeros((1, 3), int), np.eye(4)).to_scene("tiny")
    predictions = predictor.predict_scene(scene)
    np.testing.assert_array_equal(predictions.masks, [[True, True, False], [False, False, True]])
    assert predictions.classes.tolist() == [1, -1]  # 'object' is the scene's class 1; 'chair' it lacks
    assert predictions.scores.tolist() == pytest.approx([0.9, 0.4])
