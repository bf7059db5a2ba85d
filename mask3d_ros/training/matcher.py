"""Hungarian matching of predicted masks to ground-truth instances (Mask3D's training matcher).

Mask3D predicts a fixed set of Q (class, mask) pairs; training first pairs each ground-truth
instance with one prediction by minimising ``5 * mask BCE + 2 * class + 2 * dice`` (the
official weights), then supervises only the pairs. All voxels take part (no point sampling),
as in the released configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

# Targets of this class are matched by mask only (the official ``ignore`` label 253).
IGNORE_CLASS = 253


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the three matching costs; defaults are the official ``hungarian_matcher.yaml``."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 2.0


def pairwise_mask_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of every predicted mask [Q, N] against every target [T, N]."""
    n = logits.shape[1]
    pos = F.softplus(-logits)          # BCE-with-logits against 1
    neg = F.softplus(logits)           # ... against 0
    return (pos @ targets.T + neg @ (1.0 - targets).T) / n


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - dice`` of every sigmoid mask [Q, N] against every binary target [T, N]."""
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1, keepdim=True) + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


@torch.no_grad()
def hungarian_match(pred_logits: Tensor, pred_masks: Tensor, target_classes: Tensor,
                    target_masks: Tensor, costs: MatchCosts = MatchCosts()) -> tuple[Tensor, Tensor]:
    """Pair predictions with targets for one scene.

    pred_logits [Q, K+1], pred_masks [N, Q] (logits, voxel rows), target_classes [T],
    target_masks [T, N] (0/1). Returns (query indices, target indices), each [min(Q, T)],
    sorted by query.
    """
    if target_classes.numel() == 0:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty
    probs = pred_logits.float().softmax(-1)
    safe_classes = target_classes.clamp(max=probs.shape[-1] - 1)
    cost_class = -probs[:, safe_classes]
    cost_class[:, target_classes == IGNORE_CLASS] = -1.0
    masks = pred_masks.float().T
    targets = target_masks.float()
    cost = (costs.mask_weight * pairwise_mask_bce(masks, targets)
            + costs.class_weight * cost_class
            + costs.dice_weight * pairwise_dice(masks, targets))
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    order = np.argsort(rows)
    return torch.as_tensor(rows[order], dtype=torch.long), torch.as_tensor(cols[order], dtype=torch.long)
