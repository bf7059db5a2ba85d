"""Mask3D's training losses: class cross-entropy plus mask BCE and dice on matched pairs.

Follows the official ``SetCriterion``: unmatched queries are trained towards "no object" with a
0.1 class weight, mask and dice losses are averaged over a scene's matched masks and summed over
the scenes of a batch, and every intermediate decoder prediction (12 auxiliary outputs) gets the
same losses after its own matching.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mask3d_ros.training.matcher import IGNORE_CLASS, MatchCosts, hungarian_match


@dataclass
class SceneTargets:
    """Ground truth of one scene at voxel level: a class and a binary mask per instance."""

    classes: Tensor     # [T] long, 0..K-1 (IGNORE_CLASS for "unlabelled" instances)
    masks: Tensor       # [T, N_vox] float 0/1, rows in the model's voxel order


@dataclass(frozen=True)
class LossWeights:
    """Official loss weights (``loss_ce: 2, loss_mask: 5, loss_dice: 2``) and no-object weight."""

    ce: float = 2.0
    mask: float = 5.0
    dice: float = 2.0
    no_object: float = 0.1
    costs: MatchCosts = field(default_factory=MatchCosts)


def sigmoid_bce_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE over the points of each mask, summed over masks: [M, N] -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum()


def dice_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - dice`` of each mask, summed over masks: [M, N] -> scalar."""
    probs = logits.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1.0 - (numerator + 1.0) / (denominator + 1.0)).sum()


class SetCriterion(nn.Module):
    """Sum of the weighted losses of the final prediction and every auxiliary prediction."""

    def __init__(self, num_classes: int, weights: LossWeights = LossWeights()):
        """num_classes counts real classes; logits have num_classes + 1 columns (no-object last)."""
        super().__init__()
        self.num_classes = num_classes
        self.weights = weights
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = weights.no_object
        # Saved as ``criterion.empty_weight`` in official checkpoints.
        self.register_buffer("empty_weight", empty_weight)

    def single_output_losses(self, outputs: list[dict], targets: list[SceneTargets]) -> dict[str, Tensor]:
        """Losses of one decoder step over a batch of scenes (one output dict per scene)."""
        logits_all, classes_all = [], []
        loss_mask = loss_dice = outputs[0]["pred_logits"].new_zeros(())
        for out, tgt in zip(outputs, targets):
            logits, masks = out["pred_logits"], out["pred_masks"]
            queries, instances = hungarian_match(logits, masks, tgt.classes, tgt.masks, self.weights.costs)
            target_classes = torch.full((logits.shape[0],), self.num_classes, dtype=torch.long, device=logits.device)
            target_classes[queries.to(logits.device)] = tgt.classes[instances].to(logits.device)
            logits_all.append(logits)
            classes_all.append(target_classes)
            if queries.numel():
                matched = masks[:, queries.to(masks.device)].T.float()
                truth = tgt.masks[instances].to(matched)
                loss_mask = loss_mask + sigmoid_bce_per_mask(matched, truth) / queries.numel()
                loss_dice = loss_dice + dice_per_mask(matched, truth) / queries.numel()
        loss_ce = F.cross_entropy(torch.cat(logits_all).float(), torch.cat(classes_all),
                                  weight=self.empty_weight, ignore_index=IGNORE_CLASS)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}

    def forward(self, outputs: list[dict], targets: list[SceneTargets]) -> tuple[Tensor, dict[str, float]]:
        """Total loss and its named parts (final step and ``_<i>`` for auxiliary step i)."""
        steps = [("", outputs)]
        num_aux = len(outputs[0].get("aux_outputs", []))
        steps += [(f"_{i}", [out["aux_outputs"][i] for out in outputs]) for i in range(num_aux)]
        total = outputs[0]["pred_logits"].new_zeros(())
        parts: dict[str, float] = {}
        w = self.weights
        for suffix, step_outputs in steps:
            losses = self.single_output_losses(step_outputs, targets)
            total = total + w.ce * losses["loss_ce"] + w.mask * losses["loss_mask"] + w.dice * losses["loss_dice"]
            parts.update({name + suffix: float(value.detach()) for name, value in losses.items()})
        return total, parts
