"""ScanNet-benchmark AP on hand-built frames whose AP can be worked out on paper."""
import json
import math

import numpy as np
import pytest

from mask3d_ros.evaluation.ap import AP_THRESHOLDS, evaluate
from mask3d_ros.evaluation.predictions import InstancePredictions

CLASSES = ("table", "object", "tool")  # table: stuff (void for AP); object and tool: instance classes
TABLE, OBJECT, TOOL = 0, 1, 2
INSTANCE_CLASSES = ("object", "tool")


def frame(*blocks):
    """Ground truth from (class, instance, points) blocks laid out one after another."""
    semantic = np.concatenate([np.full(n, c) for c, _, n in blocks])
    instance = np.concatenate([np.full(n, i) for _, i, n in blocks])
    return semantic, instance


def predict(num_points, *instances):
    """Predictions from (point indices, class, score) triples."""
    masks = np.zeros((len(instances), num_points), bool)
    for row, (points, _, _) in enumerate(instances):
        masks[row, points] = True
    return InstancePredictions(masks, np.array([c for _, c, _ in instances]), np.array([s for _, _, s in instances]))


def ap(frames, min_region_size=100):
    return evaluate(frames, CLASSES, INSTANCE_CLASSES, min_region_size)


# A (object) = points 0-199, T (tool) = 200-399, table = 400-599.
SEMANTIC, INSTANCE = frame((OBJECT, 1, 200), (TOOL, 2, 200), (TABLE, 0, 200))
A, T, TABLE_POINTS = np.arange(0, 200), np.arange(200, 400), np.arange(400, 600)


def test_perfect_predictions_score_one():
    result = ap([(SEMANTIC, INSTANCE, predict(600, (A, OBJECT, 0.9), (T, TOOL, 0.8)))])
    assert (result.AP, result.AP50, result.AP25) == (1.0, 1.0, 1.0)
    assert np.all(result.per_class == 1.0) and np.all(result.class_agnostic == 1.0)


def test_false_positive_only_hurts_when_it_outranks_the_true_positive():
    # An 'object' prediction on the tool: no object ground truth there, not void -> false positive.
    below = ap([(SEMANTIC, INSTANCE, predict(600, (A, OBJECT, 0.9), (T, OBJECT, 0.5), (T, TOOL, 0.8)))])
    above = ap([(SEMANTIC, INSTANCE, predict(600, (A, OBJECT, 0.5), (T, OBJECT, 0.9), (T, TOOL, 0.8)))])
    assert below.to_json()["classes"]["object"]["AP"] == 1.0
    # Curve: (p .5, r 1) at the TP's score, (p 0, r 0) at the FP's, (1, 0); widths .5 .5 0 -> 0.25.
    assert above.to_json()["classes"]["object"] == {"AP": 0.25, "AP50": 0.25, "AP25": 0.25}
    assert above.to_json()["classes"]["tool"]["AP"] == 1.0
    assert above.AP == pytest.approx((0.25 + 1.0) / 2)


def test_iou_thresholds_are_strict_and_stop_at_0_90():
    assert len(AP_THRESHOLDS) == 9 and AP_THRESHOLDS[0] == 0.5 and AP_THRESHOLDS[-1] == pytest.approx(0.9)
    semantic, instance = frame((OBJECT, 1, 200))
    covering_148 = ap([(semantic, instance, predict(200, (np.arange(148), OBJECT, 1.0)))])  # IoU 0.74
    assert covering_148.AP50 == 1.0 and covering_148.AP25 == 1.0
    assert covering_148.AP == pytest.approx(5 / 9)  # matched at 0.50 ... 0.70
    covering_half = ap([(semantic, instance, predict(200, (np.arange(100), OBJECT, 1.0)))])  # IoU exactly 0.5
    assert covering_half.AP50 == 0.0 and covering_half.AP25 == 1.0 and covering_half.AP == 0.0


def test_min_region_size_drops_small_ground_truth_and_predictions():
    semantic, instance = frame((OBJECT, 1, 50), (TABLE, 0, 150))
    small = [(semantic, instance, predict(200, (np.arange(50), OBJECT, 1.0)))]
    assert ap(small).to_json()["classes"]["object"]["AP"] is None  # no counted ground truth: NaN
    assert math.isnan(ap(small).AP)
    assert ap(small, min_region_size=10).AP == 1.0


def test_predictions_on_void_or_small_ground_truth_are_ignored():
    # Big object A (0-199), small object (200-249), table (250-449).
    semantic, instance = frame((OBJECT, 1, 200), (OBJECT, 2, 50), (TABLE, 0, 200))
    on_table = np.arange(250, 450)
    small_and_table = np.arange(200, 320)  # 50 small-GT + 70 table points: all ignored
    result = ap([(semantic, instance, predict(450, (np.arange(200), OBJECT, 0.5), (on_table, OBJECT, 0.9),
                                             (small_and_table, OBJECT, 0.8)))])
    assert result.AP == 1.0
    # 125 table + 75 A points (IoU 0.23): ignored while the ignored fraction 0.625 exceeds the
    # threshold, a false positive (outranking the true positive: AP 0.25) from 0.65 on.
    mostly_table = np.r_[np.arange(75), np.arange(250, 375)]
    result = ap([(semantic, instance, predict(450, (np.arange(200), OBJECT, 0.5), (mostly_table, OBJECT, 0.9)))])
    assert result.per_class[0].tolist() == [1.0, 1.0, 1.0] + [0.25] * 6 + [1.0]


def test_duplicates_are_false_positives():
    semantic, instance = frame((OBJECT, 1, 200), (OBJECT, 2, 200))
    a, b = np.arange(200), np.arange(200, 400)
    result = ap([(semantic, instance, predict(400, (a, OBJECT, 0.9), (a, OBJECT, 0.8), (b, OBJECT, 0.7)))])
    # Curve points (score .7: p 2/3 r 1), (.8: p .5 r .5), (.9: p 1 r .5), (1, 0); all widths .25.
    assert result.AP50 == pytest.approx(0.25 * (2 / 3 + 0.5 + 1 + 1))
    assert result.AP == pytest.approx(result.AP50)


def test_frames_are_pooled_not_averaged():
    semantic, instance = frame((OBJECT, 1, 300), (TABLE, 0, 200))
    first = (semantic, instance, predict(500, (np.arange(300), OBJECT, 0.5)))
    missed_with_false_positive = (semantic, instance, predict(500, (np.arange(120), OBJECT, 0.9)))  # IoU 0.4
    # Pooled: TP .5, FP .9, one missed GT -> curve (p .5 r .5), (p 0 r 0), (1, 0) -> 0.125.
    assert ap([first, missed_with_false_positive]).AP50 == pytest.approx(0.125)


def test_class_agnostic_row_ignores_the_class():
    wrong_class = ap([(SEMANTIC, INSTANCE, predict(600, (A, TOOL, 0.9), (T, TOOL, 0.8)))])
    assert wrong_class.to_json()["classes"]["object"]["AP"] == 0.0
    assert wrong_class.to_json()["class_agnostic"]["AP"] == 1.0


def test_predictions_of_stuff_classes_are_not_counted():
    result = ap([(SEMANTIC, INSTANCE, predict(600, (A, OBJECT, 0.5), (T, TOOL, 0.5), (TABLE_POINTS, TABLE, 1.0)))])
    assert result.AP == 1.0


def test_json_and_table():
    result = ap([(SEMANTIC, INSTANCE, predict(600, (A, OBJECT, 0.9)))])
    report = json.loads(json.dumps(result.to_json()))
    assert set(report) == {"AP", "AP50", "AP25", "classes", "class_agnostic"}
    assert report["classes"] == {"object": {"AP": 1.0, "AP50": 1.0, "AP25": 1.0},
                                 "tool": {"AP": 0.0, "AP50": 0.0, "AP25": 0.0}}
    assert report["AP50"] == 0.5
    table = result.format_table().splitlines()
    assert table[0] == "| class | AP | AP50 | AP25 |"
    assert "| object | 1.000 | 1.000 | 1.000 |" in table and "| tool | 0.000 | 0.000 | 0.000 |" in table
    assert any(line.startswith("| all (class-agnostic) |") for line in table)


def test_no_predictions_and_empty_frames():
    empty = InstancePredictions.empty(600)
    assert ap([(SEMANTIC, INSTANCE, empty)]).AP == 0.0
    no_ground_truth = np.full(10, TABLE), np.zeros(10, int)
    assert ap([(*no_ground_truth, InstancePredictions.empty(10))]).to_json()["AP"] is None
