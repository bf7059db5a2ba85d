"""The committed tabletop model loads strictly and still scores what its model card records."""
import json
from pathlib import Path

import pytest

from mask3d_ros.model.checkpoint import read_checkpoint
from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.tools import evaluate as eval_cli
from mask3d_ros.tools.evaluate import SegmenterPredictor, evaluate_scenes, expand_frames

REPO = Path(__file__).resolve().parents[2]
METRICS = json.loads((REPO / "model" / "mask3d_tabletop.metrics.json").read_text())


def test_bundled_model_describes_itself():
    checkpoint = bundled_checkpoint()
    assert checkpoint.stat().st_size < 25e6
    description = read_checkpoint(checkpoint).description
    assert description["class_names"] == ["table", "object"]
    assert description["model"]["per_scene_norm"] is True


@pytest.mark.slow
def test_bundled_model_reaches_the_recorded_val_ap(mosd_dir):
    frames = expand_frames([mosd_dir / "val"], "mosd")
    assert len(frames) == METRICS["val"]["frames"]
    predict = SegmenterPredictor(str(bundled_checkpoint()), device="cpu").predict_scene
    result = evaluate_scenes(frames, "mosd", predict).to_json()
    recorded = METRICS["val"]["model"]
    assert abs(result["AP50"] - recorded["AP50"]) <= 0.02, (result["AP50"], recorded)
    assert abs(result["AP"] - recorded["AP"]) <= 0.02, (result["AP"], recorded)


def test_eval_overrides_the_checkpoints_post_processing(mosd_dir, tmp_path):
    """Ablations through the evaluator: the bundled model with its mask smoothing switched off."""
    assert read_checkpoint(bundled_checkpoint()).description["smooth_radius"] > 0
    frames = [str(mosd_dir / "val" / "test55.pcd")]
    reports = {}
    for name, extra in (("own", []), ("off", ["--smooth-radius", "0", "--dbscan-eps", "0"])):
        out = tmp_path / f"{name}.json"
        assert eval_cli.main(["--dataset", "mosd", *frames, *extra, "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["off"]["predictor"].endswith(", dbscan_eps 0, smooth_radius 0")
    assert reports["own"]["predictor"] == str(bundled_checkpoint())
    assert 0 <= reports["off"]["AP50"] <= 1 and 0 <= reports["own"]["AP50"] <= 1
