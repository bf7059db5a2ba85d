"""Hungarian matching and the set criterion on hand-built predictions."""
import torch

from mask3d_ros.training.criterion import SceneTargets, SetCriterion
from mask3d_ros.training.matcher import IGNORE_CLASS, hungarian_match, pairwise_dice, pairwise_mask_bce


def _scene(num_points=40, num_instances=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    owner = torch.randint(0, num_instances + 1, (num_points,), generator=g)   # 0 = background
    masks = torch.stack([(owner == i + 1).float() for i in range(num_instances)])
    classes = torch.arange(num_instances) % 2
    return SceneTargets(classes=classes, masks=masks)


def _perfect_prediction(targets: SceneTargets, num_queries: int, num_classes: int, permutation):
    """Queries `permutation[t]` predict target t exactly; the others predict no-object."""
    n = targets.masks.shape[1]
    logits = torch.full((num_queries, num_classes + 1), -8.0)
    logits[:, -1] = 8.0
    masks = torch.full((n, num_queries), -8.0)
    for t, q in enumerate(permutation):
        logits[q] = -8.0
        logits[q, targets.classes[t]] = 8.0
        masks[:, q] = targets.masks[t] * 16.0 - 8.0
    return {"pred_logits": logits, "pred_masks": masks}


def test_pairwise_costs_match_elementwise_definitions():
    logits = torch.randn(5, 30, dtype=torch.float64)
    targets = (torch.rand(4, 30) > 0.5).double()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for q in range(5):
        for t in range(4):
            expected_bce = bce(logits[q], targets[t])
            p = logits[q].sigmoid()
            expected_dice = 1 - (2 * (p * targets[t]).sum() + 1) / (p.sum() + targets[t].sum() + 1)
            assert torch.isclose(pairwise_mask_bce(logits, targets)[q, t], expected_bce)
            assert torch.isclose(pairwise_dice(logits, targets)[q, t], expected_dice)


def test_matcher_recovers_the_permutation():
    targets = _scene()
    permutation = [4, 0, 2]
    pred = _perfect_prediction(targets, num_queries=6, num_classes=2, permutation=permutation)
    queries, instances = hungarian_match(pred["pred_logits"], pred["pred_masks"], targets.classes, targets.masks)
    assert dict(zip(instances.tolist(), queries.tolist())) == dict(enumerate(permutation))
    assert queries.tolist() == sorted(queries.tolist())


def test_matcher_without_targets_and_with_ignored_class():
    targets = _scene()
    pred = _perfect_prediction(targets, 6, 2, [1, 2, 3])
    q, t = hungarian_match(pred["pred_logits"], pred["pred_masks"], targets.classes[:0], targets.masks[:0])
    assert q.numel() == 0 and t.numel() == 0
    ignored = targets.classes.clone()
    ignored[0] = IGNORE_CLASS
    q, t = hungarian_match(pred["pred_logits"], pred["pred_masks"], ignored, targets.masks)
    assert dict(zip(t.tolist(), q.tolist())) == {0: 1, 1: 2, 2: 3}


def test_criterion_prefers_correct_predictions_and_counts_aux_steps():
    targets = _scene()
    criterion = SetCriterion(num_classes=2)
    good = _perfect_prediction(targets, 6, 2, [4, 0, 2])
    bad = {"pred_logits": torch.zeros(6, 3), "pred_masks": torch.zeros(targets.masks.shape[1], 6)}
    good_loss, parts = criterion([dict(good, aux_outputs=[bad, good])], [targets])
    bad_loss, _ = criterion([dict(bad, aux_outputs=[bad, bad])], [targets])
    assert good_loss < bad_loss
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"} <= set(parts)
    assert parts["loss_mask"] < 1e-3 and parts["loss_mask_0"] > 0.5


def test_criterion_no_object_weight_and_gradients():
    targets = _scene()
    criterion = SetCriterion(num_classes=2)
    assert torch.equal(criterion.empty_weight, torch.tensor([1.0, 1.0, 0.1]))
    logits = torch.zeros(6, 3, requires_grad=True)
    masks = torch.zeros(targets.masks.shape[1], 6, requires_grad=True)
    loss, _ = criterion([{"pred_logits": logits, "pred_masks": masks}], [targets])
    loss.backward()
    assert logits.grad.abs().sum() > 0 and masks.grad.abs().sum() > 0
    # Only the three matched queries receive mask gradients.
    assert (masks.grad.abs().sum(0) > 0).sum() == 3
