"""ScanNet-benchmark instance segmentation AP (AP, AP50, AP25), re-implemented in numpy.

The definitions follow the ScanNet instance evaluator (``evaluate_semantic_instance.py``), which
Mask3D and the papers it is compared with report:

* Ground-truth instances are the (semantic class, instance id) groups of an *instance class* with
  instance id > 0. Every point that belongs to no such instance (unlabelled points, stuff classes
  such as the table or ScanNet's wall and floor) is *void*.
* Ground-truth instances with fewer than ``min_region_size`` points are not counted, and neither are
  predictions with fewer points (the evaluator skips them when reading them).
* A prediction can only match a ground truth of its own class. A match needs IoU > threshold
  (strictly). Ground truths are visited in order; each takes the first not-yet-used prediction above
  the threshold, further ones above the threshold are duplicates, counted as false positives (the
  one with the highest score is kept as the true positive).
* An unmatched prediction is a false positive unless more than ``threshold`` of its points are
  ignored: void points plus points of too-small ground truths of its class. A prediction above the
  threshold with a too-small ground truth is neither true nor false positive.
* Matches are accumulated over all frames per class; the precision/recall curve has one point per
  distinct score plus the artificial (recall 0, precision 1) end; AP is the area under it with the
  evaluator's midpoint step widths.
* AP averages the thresholds ``np.arange(0.5, 0.95, 0.05)`` exactly as the evaluator builds them,
  i.e. 0.50 ... 0.90 (nine values; 0.95 is not among them although the benchmark is quoted as
  0.50:0.95). The overall rows average the classes that have ground truth (NaN classes skipped).

Besides the per-class rows, a class-agnostic row evaluates every instance class as one class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from mask3d_ros.evaluation.predictions import InstancePredictions

AP_THRESHOLDS = np.arange(0.5, 0.95, 0.05)
"""The IoU thresholds averaged into AP, exactly as the ScanNet evaluator builds them (0.50..0.90)."""
MIN_REGION_SIZE = 100
"""The ScanNet evaluator's minimum ground-truth (and prediction) size in points."""


@dataclass(frozen=True)
class FrameOverlaps:
    """What the AP computation needs from one frame, so masks need not be kept in memory."""

    gt_classes: np.ndarray  # int [G]
    gt_sizes: np.ndarray  # int [G]
    pred_classes: np.ndarray  # int [P], only predictions of instance classes and large enough
    pred_sizes: np.ndarray  # int [P]
    pred_scores: np.ndarray  # float [P]
    pred_void: np.ndarray  # int [P], points of the prediction that belong to no GT instance
    intersections: np.ndarray  # int [P, G]


def frame_overlaps(
    semantic: np.ndarray,
    instance: np.ndarray,
    predictions: InstancePredictions,
    instance_class_ids: Sequence[int],
    min_region_size: int = MIN_REGION_SIZE,
) -> FrameOverlaps:
    """Intersect one frame's predictions with its ground-truth instances."""
    semantic = np.asarray(semantic, np.int64)
    instance = np.asarray(instance, np.int64)
    is_instance_point = (instance > 0) & np.isin(semantic, np.asarray(instance_class_ids, np.int64))
    keys = np.stack([semantic[is_instance_point], instance[is_instance_point]], axis=1)
    gt_keys, gt_of_point, gt_sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    gt_index = np.full(len(semantic), -1, np.int64)  # -1: void
    gt_index[is_instance_point] = gt_of_point.reshape(-1)
    num_gt = len(gt_keys)

    masks = np.asarray(predictions.masks, bool).reshape(-1, len(semantic))
    classes = np.asarray(predictions.classes, np.int64)
    pred_sizes = masks.sum(axis=1)
    kept = np.isin(classes, np.asarray(instance_class_ids, np.int64)) & (pred_sizes >= min_region_size)
    masks = masks[kept]
    pred_rows, point_cols = np.nonzero(masks)
    cells = pred_rows * (num_gt + 1) + gt_index[point_cols] + 1
    counts = np.bincount(cells, minlength=len(masks) * (num_gt + 1)).reshape(len(masks), num_gt + 1)
    return FrameOverlaps(
        gt_classes=gt_keys[:, 0] if num_gt else np.zeros(0, np.int64),
        gt_sizes=gt_sizes,
        pred_classes=classes[kept],
        pred_sizes=pred_sizes[kept],
        pred_scores=np.asarray(predictions.scores, np.float64)[kept],
        pred_void=counts[:, 0],
        intersections=counts[:, 1:],
    )


def _match_class(frames: Sequence[FrameOverlaps], cls: int, threshold: float, min_region_size: int):
    """True-positive flags, scores and unmatched-GT count of one class at one IoU threshold."""
    y_true, y_score = [], []
    hard_false_negatives = 0
    has_gt = has_pred = False
    for frame in frames:
        gt_sel = np.flatnonzero(frame.gt_classes == cls)
        pred_sel = np.flatnonzero(frame.pred_classes == cls)
        inter = frame.intersections[np.ix_(pred_sel, gt_sel)]
        gt_sizes = frame.gt_sizes[gt_sel]
        pred_sizes = frame.pred_sizes[pred_sel]
        scores = frame.pred_scores[pred_sel]
        iou = inter / np.maximum(gt_sizes[None, :] + pred_sizes[:, None] - inter, 1)
        above = (iou > threshold) & (inter > 0)
        counted_gt = gt_sizes >= min_region_size
        has_gt |= bool(counted_gt.any())
        has_pred |= len(pred_sel) > 0

        used = np.zeros(len(pred_sel), bool)
        for g in np.flatnonzero(counted_gt):
            candidates = np.flatnonzero(above[:, g] & ~used)
            if len(candidates) == 0:
                hard_false_negatives += 1
                continue
            used[candidates[0]] = True
            candidate_scores = scores[candidates]
            best = np.argmax(candidate_scores)
            y_true.append(np.r_[1.0, np.zeros(len(candidates) - 1)])
            y_score.append(np.r_[candidate_scores[best], np.delete(candidate_scores, best)])

        unmatched = ~above.any(axis=1)
        ignored = frame.pred_void[pred_sel] + (inter * ~counted_gt[None, :]).sum(axis=1)
        false_positive = unmatched & (ignored / pred_sizes <= threshold)
        y_true.append(np.zeros(int(false_positive.sum())))
        y_score.append(scores[false_positive])
    return np.concatenate(y_true), np.concatenate(y_score), hard_false_negatives, has_gt, has_pred


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_false_negatives: int) -> float:
    """Area under the evaluator's precision/recall curve (one point per distinct score)."""
    order = np.argsort(y_score)
    true_cumsum = np.cumsum(y_true[order])
    thresholds_first = np.unique(y_score[order], return_index=True)[1]
    num_true = true_cumsum[-1] if len(true_cumsum) else 0.0
    below = np.where(thresholds_first > 0, true_cumsum[np.maximum(thresholds_first - 1, 0)], 0.0)
    tp = num_true - below
    fp = len(y_score) - thresholds_first - tp
    fn = below + hard_false_negatives
    precision = np.r_[tp / (tp + fp), 1.0]
    recall = np.r_[tp / (tp + fn), 0.0]
    padded = np.r_[recall[0], recall, 0.0]
    step_widths = (padded[:-2] - padded[2:]) / 2
    return float(precision @ step_widths)


def _ap_table(frames: Sequence[FrameOverlaps], class_ids: Sequence[int], thresholds, min_region_size):
    table = np.full((len(class_ids), len(thresholds)), np.nan)
    for row, cls in enumerate(class_ids):
        for col, threshold in enumerate(thresholds):
            y_true, y_score, hard_fn, has_gt, has_pred = _match_class(frames, cls, threshold, min_region_size)
            if has_gt and has_pred:
                table[row, col] = _average_precision(y_true, y_score, hard_fn)
            elif has_gt:
                table[row, col] = 0.0
    return table


def _as_one_class(frame: FrameOverlaps) -> FrameOverlaps:
    return FrameOverlaps(
        np.zeros_like(frame.gt_classes), frame.gt_sizes, np.zeros_like(frame.pred_classes),
        frame.pred_sizes, frame.pred_scores, frame.pred_void, frame.intersections,
    )


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


@dataclass(frozen=True)
class APResult:
    """AP per instance class and IoU threshold, plus the class-agnostic row."""

    class_names: tuple[str, ...]
    per_class: np.ndarray  # [C, T], NaN where a class has no ground truth
    class_agnostic: np.ndarray  # [T]
    thresholds: np.ndarray  # [T], AP_THRESHOLDS followed by 0.25

    def _summary(self, aps: np.ndarray) -> dict[str, float]:
        is50 = np.isclose(self.thresholds, 0.5)
        is25 = np.isclose(self.thresholds, 0.25)
        return {"AP": _nanmean(aps[..., ~is25]), "AP50": _nanmean(aps[..., is50]), "AP25": _nanmean(aps[..., is25])}

    @property
    def AP(self) -> float:  # noqa: N802 - the benchmark's name
        return self._summary(self.per_class)["AP"]

    @property
    def AP50(self) -> float:  # noqa: N802
        return self._summary(self.per_class)["AP50"]

    @property
    def AP25(self) -> float:  # noqa: N802
        return self._summary(self.per_class)["AP25"]

    def to_json(self) -> dict:
        """Plain dict (NaN as None) with the class mean at the top, as the ScanNet evaluator reports."""

        def clean(row: dict[str, float]) -> dict:
            return {key: (None if math.isnan(value) else value) for key, value in row.items()}

        return {
            **clean(self._summary(self.per_class)),
            "classes": {name: clean(self._summary(row)) for name, row in zip(self.class_names, self.per_class)},
            "class_agnostic": clean(self._summary(self.class_agnostic)),
        }

    def format_table(self) -> str:
        """Markdown table: one row per class, the class mean and the class-agnostic row."""
        rows = [(name, self._summary(row)) for name, row in zip(self.class_names, self.per_class)]
        rows.append(("mean over classes", self._summary(self.per_class)))
        rows.append(("all (class-agnostic)", self._summary(self.class_agnostic)))
        lines = ["| class | AP | AP50 | AP25 |", "|---|---:|---:|---:|"]
        for name, row in rows:
            lines.append(f"| {name} | " + " | ".join(f"{row[key]:.3f}" for key in ("AP", "AP50", "AP25")) + " |")
        return "\n".join(lines)


def average_precision(
    frames: Sequence[FrameOverlaps],
    class_names: Sequence[str],
    instance_class_ids: Sequence[int],
    min_region_size: int = MIN_REGION_SIZE,
) -> APResult:
    """AP over all frames, per instance class (named by ``class_names[id]``) and class-agnostic."""
    thresholds = np.r_[AP_THRESHOLDS, 0.25]
    per_class = _ap_table(frames, list(instance_class_ids), thresholds, min_region_size)
    agnostic = _ap_table([_as_one_class(frame) for frame in frames], [0], thresholds, min_region_size)[0]
    return APResult(tuple(class_names[i] for i in instance_class_ids), per_class, agnostic, thresholds)


def evaluate(
    frames: Iterable[tuple[np.ndarray, np.ndarray, InstancePredictions]],
    class_names: Sequence[str],
    instance_classes: Sequence[str],
    min_region_size: int = MIN_REGION_SIZE,
) -> APResult:
    """AP of predictions over ``(semantic, instance, predictions)`` frames.

    ``semantic`` holds indices into ``class_names`` (negative: unlabelled), ``instance`` the
    ground-truth instance ids (0: none); prediction classes index ``class_names`` as well.
    """
    instance_class_ids = [list(class_names).index(name) for name in instance_classes]
    overlaps = [
        frame_overlaps(semantic, instance, predictions, instance_class_ids, min_region_size)
        for semantic, instance, predictions in frames
    ]
    return average_precision(overlaps, class_names, instance_class_ids, min_region_size)
