"""From Mask3D's raw output (per-query class logits, per-voxel mask logits) to labelled segments.

Three readings of the same output, as in Mask2Former:

* ``instance_inference`` — the official Mask3D evaluation: optional DBSCAN splitting of each
  query's mask, then the top-k (query, class) pairs by class probability, each scored
  ``class prob x mean sigmoid inside the mask``. Masks may overlap; there is no NMS.
* ``semantic_inference`` — each voxel takes ``argmax_c sum_i p_i(c) sigmoid(m_i)``.
* ``panoptic_inference`` — each voxel goes to the query maximising ``p_i(c_i) sigmoid(m_i)``,
  ``c_i`` its most likely class, so the instances do not overlap.

``smooth_mask_logits`` optionally runs before any of them (not part of the official evaluation).

All three return a :class:`~mask3d_ros.model.results.VoxelSegmentation`: instance masks and
per-voxel assignments, with per-point views through the voxelization's ``inverse_map``. Class ids
are the model's class indices (0..K-1, no-object dropped); ``label_ids`` are the dataset ids after
the optional remap.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch import Tensor

from mask3d_ros.model.results import VoxelSegmentation

MASK_SCORE_EPS = 1e-6       # the official denominator guard of the mean sigmoid


def class_probabilities(pred_logits: Tensor) -> Tensor:
    """Softmax over classes with the no-object column dropped: ``[Q, K+1] -> [Q, K]``."""
    return torch.softmax(pred_logits.float(), dim=-1)[:, :-1]


def mean_sigmoid_inside(mask_logits: Tensor) -> Tensor:
    """Per column of ``[N, M]`` logits: mean sigmoid over the entries with logit > 0."""
    inside = (mask_logits > 0).float()
    return (mask_logits.sigmoid() * inside).sum(0) / (inside.sum(0) + MASK_SCORE_EPS)


def smooth_mask_logits(mask_logits: Tensor, voxel_xyz: np.ndarray, voxel_rgb: np.ndarray, radius: float,
                       color_sigma: float) -> Tensor:
    """Each voxel's mask logits replaced by the colour-weighted mean over its neighbours within
    ``radius`` metres (itself included).

    A small model's masks are speckled at the voxel scale: single voxels inside an object flip to
    the neighbouring instance. One averaging step over the neighbourhood graph, with weights
    ``exp(-|rgb_a - rgb_b|^2 / 2 sigma^2)`` (rgb in [0, 1]) that stop at colour edges, makes masks
    follow surfaces, like one mean-field step of a dense CRF with an appearance kernel.
    ``mask_logits [N_vox, Q]``; ``voxel_rgb [N_vox, 3]`` in 0..255.
    """
    pairs = cKDTree(voxel_xyz).query_pairs(radius, output_type="ndarray")
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(voxel_xyz))])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(voxel_xyz))])
    colour = np.asarray(voxel_rgb, np.float32) / 255.0
    weight = np.exp(-((colour[rows] - colour[cols]) ** 2).sum(1) / (2 * color_sigma ** 2)).astype(np.float32)
    weight /= np.bincount(rows, weight, minlength=len(voxel_xyz))[rows]
    device = mask_logits.device
    graph = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])).to(device),
                                    torch.from_numpy(weight).to(device), (len(voxel_xyz),) * 2,
                                    check_invariants=False)      # indices in range by construction
    return torch.sparse.mm(graph, mask_logits.float())


def dbscan_split(mask_logits: Tensor, voxel_xyz: np.ndarray, eps: float) -> tuple[Tensor, list[np.ndarray]]:
    """Split every query's positive voxels into DBSCAN clusters (``min_samples=1``) of their xyz.

    With ``min_samples=1`` every point is a core point, so DBSCAN's clusters are the connected
    components of the graph joining points at most ``eps`` apart; a KD-tree and scipy's
    ``connected_components`` find them, numbered in order of their first point as DBSCAN does.
    Each cluster becomes a candidate mask that keeps its query's class probabilities and logits;
    queries with empty masks are dropped, as in the official evaluation. Returns the source query
    of each candidate and its voxel rows.
    """
    positive = (mask_logits > 0).cpu().numpy()
    sources, members = [], []
    for query in range(positive.shape[1]):
        rows = np.flatnonzero(positive[:, query])
        if rows.size == 0:
            continue
        pairs = cKDTree(voxel_xyz[rows]).query_pairs(eps, output_type="ndarray")
        graph = coo_matrix((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), shape=(rows.size,) * 2)
        num_clusters, clusters = connected_components(graph, directed=False)
        order = np.argsort(clusters, kind="stable")
        for cluster_rows in np.split(rows[order], np.cumsum(np.bincount(clusters, minlength=num_clusters))[:-1]):
            sources.append(query)
            members.append(cluster_rows)
    return torch.tensor(sources, dtype=torch.int64), members


def _cluster_mask_scores(mask_logits: Tensor, source_query: Tensor, members: list[np.ndarray]) -> Tensor:
    """The official mean sigmoid inside each cluster's mask (all its members are positive)."""
    sizes = torch.tensor([len(rows) for rows in members], dtype=torch.int64)
    if not members:
        return mask_logits.new_zeros(0)
    owner = torch.repeat_interleave(torch.arange(len(members)), sizes)
    rows = torch.from_numpy(np.concatenate(members))
    heat = mask_logits[rows.to(mask_logits.device), source_query[owner].to(mask_logits.device)].sigmoid()
    sums = heat.new_zeros(len(members)).index_add_(0, owner.to(heat.device), heat)
    return sums / (sizes.to(heat) + MASK_SCORE_EPS)


def _first_covering(masks: np.ndarray) -> np.ndarray:
    """Per row of a bool ``[N, M]`` array: the first column that is True, or -1."""
    if masks.shape[1] == 0:
        return np.full(masks.shape[0], -1, dtype=np.int64)
    return np.where(masks.any(1), masks.argmax(1), -1)


def _suppress_duplicates(masks: np.ndarray, voxel_weight: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Keep-flags of score-sorted masks [N, M]: drop each mask whose point IoU with a kept,
    higher-scored mask exceeds ``iou_threshold`` (the official ``filter_out_instances`` option)."""
    weighted = masks.astype(np.float64) * voxel_weight[:, None]
    intersection = masks.T.astype(np.float64) @ weighted
    size = np.diag(intersection)
    iou = intersection / np.maximum(size[:, None] + size[None, :] - intersection, 1e-12)
    keep = np.ones(masks.shape[1], dtype=bool)
    for j in range(1, masks.shape[1]):
        keep[j] = not (iou[j, :j][keep[:j]] > iou_threshold).any()
    return keep


def _finish(mode, masks, class_ids, scores, query_ids, *, voxel_instance=None, score_threshold=0.0,
            min_size=0, exclude_classes=(), class_to_label=None, inverse_map=None,
            duplicate_iou: float | None = None) -> VoxelSegmentation:
    """Filter (class, score, size, optionally duplicates), sort by score and assemble the result."""
    masks = masks.cpu().numpy().astype(bool)
    class_ids = class_ids.cpu().numpy().astype(np.int64)
    scores = scores.float().cpu().numpy()
    query_ids = query_ids.cpu().numpy().astype(np.int64)
    if inverse_map is not None:
        inverse_map = np.asarray(inverse_map, dtype=np.int64)
        voxel_weight = np.bincount(inverse_map, minlength=masks.shape[0])
    else:
        voxel_weight = np.ones(masks.shape[0], dtype=np.int64)
    sizes = voxel_weight @ masks if masks.size else np.zeros(masks.shape[1], dtype=np.int64)
    keep = (scores >= score_threshold) & (sizes >= min_size) & ~np.isin(class_ids, list(exclude_classes))
    order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]
    if duplicate_iou is not None and len(order):
        order = order[_suppress_duplicates(masks[:, order], voxel_weight, duplicate_iou)]
    masks, class_ids, scores, query_ids = masks[:, order], class_ids[order], scores[order], query_ids[order]
    if voxel_instance is None:
        voxel_instance = _first_covering(masks)     # instances are sorted: the highest scored one
    else:
        rank = np.full(len(keep) + 1, -1, dtype=np.int64)     # rank[-1] = -1 keeps unassigned voxels
        rank[order] = np.arange(len(order))
        voxel_instance = rank[voxel_instance]
    label_ids = class_ids.copy() if class_to_label is None else np.asarray(class_to_label, np.int64)[class_ids]
    return VoxelSegmentation(mode, masks, class_ids, label_ids, scores, query_ids,
                        voxel_instance.astype(np.int64), inverse_map)


def instance_inference(pred_logits: Tensor, pred_masks: Tensor, *, topk: int = 100,
                       dbscan_eps: float | None = None, voxel_xyz: np.ndarray | None = None,
                       score_threshold: float = 0.0, min_size: int = 0, exclude_classes=(),
                       class_to_label=None, inverse_map=None, duplicate_iou: float | None = None) -> VoxelSegmentation:
    """Official Mask3D instance scoring (``get_mask_and_scores``), optionally after DBSCAN.

    ``pred_logits [Q, K+1]``, ``pred_masks [N_vox, Q]`` (logits). ``topk=-1`` keeps as many pairs
    as there are candidate masks. ``dbscan_eps`` (needs ``voxel_xyz [N_vox, 3]``) splits masks.
    Filters, applied after the top-k: ``score >= score_threshold``, at least ``min_size`` points
    (voxels without ``inverse_map``), class not in ``exclude_classes``, and with
    ``duplicate_iou`` no point IoU above it with a higher-scored instance (off by default,
    as in the released evaluation: Mask3D has no NMS).
    """
    prob = class_probabilities(pred_logits)
    masks = pred_masks.float()
    if dbscan_eps:
        if voxel_xyz is None:
            raise ValueError("DBSCAN splitting needs voxel_xyz")
        source_query, members = dbscan_split(masks, np.asarray(voxel_xyz), dbscan_eps)
        mask_score = _cluster_mask_scores(masks, source_query, members)
        prob = prob[source_query.to(prob.device)]
    else:
        source_query, members = torch.arange(masks.shape[1]), None
        mask_score = mean_sigmoid_inside(masks)
    num_candidates, num_classes = prob.shape
    k = num_candidates if topk == -1 else min(topk, num_candidates * num_classes)
    class_prob, flat = prob.flatten().topk(k, sorted=True)
    candidate = flat // num_classes
    if members is None:
        binary = masks[:, candidate] > 0
    else:
        binary = torch.zeros((masks.shape[0], k), dtype=torch.bool)
        for column, chosen in enumerate(candidate.tolist()):
            binary[torch.from_numpy(members[chosen]), column] = True
    return _finish("instance", binary, flat % num_classes, class_prob * mask_score[candidate],
                   source_query[candidate.cpu()], score_threshold=score_threshold, min_size=min_size,
                   exclude_classes=exclude_classes, class_to_label=class_to_label, inverse_map=inverse_map,
                   duplicate_iou=duplicate_iou)


def semantic_inference(pred_logits: Tensor, pred_masks: Tensor, *, class_to_label=None,
                       inverse_map=None) -> VoxelSegmentation:
    """Per-voxel class ``argmax_c sum_i p_i(c) sigmoid(m_i)``; one segment per predicted class.

    A voxel's score is its winning class's share of the summed evidence (in [0, 1]); a segment's
    score is the mean over its voxels.
    """
    evidence = pred_masks.float().sigmoid() @ class_probabilities(pred_logits)          # [N, K]
    voxel_score, voxel_class = (evidence / evidence.sum(1, keepdim=True).clamp_min(1e-12)).max(1)
    classes = torch.unique(voxel_class)
    masks = voxel_class[:, None] == classes[None, :]
    scores = (voxel_score[:, None] * masks).sum(0) / masks.sum(0)
    segment = torch.searchsorted(classes, voxel_class)
    return _finish("semantic", masks, classes, scores, torch.full_like(classes, -1),
                   voxel_instance=segment.cpu().numpy(), class_to_label=class_to_label, inverse_map=inverse_map)


def panoptic_inference(pred_logits: Tensor, pred_masks: Tensor, *, score_threshold: float = 0.0,
                       overlap_threshold: float = 0.8, min_size: int = 0, class_to_label=None,
                       inverse_map=None) -> VoxelSegmentation:
    """Non-overlapping instances (Mask2Former's panoptic rule).

    Queries whose most likely class (no-object included) is a real class with probability above
    ``score_threshold`` compete; each voxel goes to ``argmax_i p_i(c_i) sigmoid(m_i)`` if that
    query's own mask covers it (sigmoid >= 0.5). A query keeps its region only if the region is at
    least ``overlap_threshold`` of its own mask and at least ``min_size`` points (voxels without
    ``inverse_map``). Score = ``p_i(c_i) x`` mean sigmoid over the region.
    """
    prob_all = torch.softmax(pred_logits.float(), dim=-1)
    best_prob, best_class = prob_all.max(1)
    no_object = pred_logits.shape[1] - 1
    candidates = torch.nonzero((best_class != no_object) & (best_prob > score_threshold))[:, 0]
    heat = pred_masks.float()[:, candidates].sigmoid()
    num_voxels = heat.shape[0]
    if candidates.numel():
        winner = (best_prob[candidates] * heat).argmax(1)
        won = torch.zeros_like(heat, dtype=torch.bool)
        won[torch.arange(num_voxels, device=heat.device), winner] = True
        own = heat >= 0.5
        regions = won & own
    else:
        regions = torch.zeros((num_voxels, 0), dtype=torch.bool, device=heat.device)
        own = regions
    region_size = regions.sum(0)
    keep = (region_size > 0) & (region_size >= overlap_threshold * own.sum(0))
    regions, candidates, heat = regions[:, keep], candidates[keep], heat[:, keep]
    scores = best_prob[candidates] * (heat * regions).sum(0) / regions.sum(0)
    return _finish("panoptic", regions, best_class[candidates], scores, candidates,
                   voxel_instance=_first_covering(regions.cpu().numpy()), min_size=min_size,
                   class_to_label=class_to_label, inverse_map=inverse_map)
