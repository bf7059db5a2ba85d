"""The committed tabletop model loads strictly and still scores what its model card records."""
import json
from pathlib import Path

import pytest

from mask3d_ros.checkpoint import read_checkpoint
from mask3d_ros.cli.evaluate import SegmenterPredictor, evaluate_scenes, expand_frames
from mask3d_ros.inference import bundled_checkpoint

REPO = Path(__file__).resolve().parents[1]
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
