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

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mask3d_ros.model.neighbours import (
    VoxelPairs,
    cartesian_pairs,
    masked_components,
    on_host,
    radius_pairs,
    sort_with_order,
    squared_distances,
)
from mask3d_ros.model.results import VoxelSegmentation

MASK_SCORE_EPS = 1e-6       # the official denominator guard of the mean sigmoid
FIRST_BATCH = 8             # queries split by DBSCAN before checking which of the rest can reach the top-k
SPLIT_AT_ONCE = 40_000      # fewer positive (voxel, query) entries: one split of every query costs less than rounds


def class_probabilities(pred_logits: Tensor) -> Tensor:
    """Softmax over classes with the no-object column dropped: ``[Q, K+1] -> [Q, K]``."""
    return torch.softmax(pred_logits.float(), dim=-1)[:, :-1]


def mean_sigmoid_inside(mask_logits: Tensor) -> Tensor:
    """Per column of ``[N, M]`` logits: mean sigmoid over the entries with logit > 0."""
    inside = (mask_logits > 0).float()
    return (mask_logits.sigmoid() * inside).sum(0) / (inside.sum(0) + MASK_SCORE_EPS)


def smooth_mask_logits(mask_logits: Tensor, voxel_xyz, voxel_rgb, radius: float, color_sigma: float) -> Tensor:
    """Each voxel's mask logits replaced by the colour-weighted mean over its neighbours within
    ``radius`` metres (itself included): ``smoothing_graph(...) @ mask_logits``.
    ``mask_logits [N_vox, Q]``; ``voxel_xyz [N_vox, 3]``; ``voxel_rgb [N_vox, 3]`` in 0..255."""
    return smoothing_graph(voxel_xyz, voxel_rgb, radius, color_sigma, mask_logits.device) @ mask_logits.float()


def smoothing_graph(voxel_xyz, voxel_rgb, radius: float, color_sigma: float, device=None,
                    voxel_pairs: VoxelPairs | None = None) -> Tensor:
    """The row-normalised ``[N_vox, N_vox]`` sparse CSR matrix that smooths mask logits (columns).

    A small model's masks are speckled at the voxel scale: single voxels inside an object flip to
    the neighbouring instance. One averaging step over the neighbourhood graph (voxels within
    ``radius`` metres, itself included), with weights ``exp(-|rgb_a - rgb_b|^2 / 2 sigma^2)`` (rgb in
    [0, 1]) that stop at colour edges, makes masks follow surfaces, like one mean-field step of a
    dense CRF with an appearance kernel. Built once per scene; one sparse product smooths any set of
    masks. ``voxel_xyz [N_vox, 3]``; ``voxel_rgb [N_vox, 3]`` in 0..255 (arrays or tensors);
    ``voxel_pairs``: the backbone's neighbouring voxels, which spare the radius search its grid.
    """
    size = len(voxel_xyz)
    first, second = radius_pairs(torch.as_tensor(voxel_xyz, device=device), radius, voxel_pairs)
    colour = (torch.as_tensor(voxel_rgb, device=device).float() / 255.0).T.contiguous()   # [3, N]
    weight = torch.exp(squared_distances(colour, first, second) / (-2 * color_sigma ** 2))
    every = torch.arange(size, device=device)
    rows, cols = torch.cat([first, second, every]), torch.cat([second, first, every])   # both ways, self-loops
    order = sort_with_order(rows * size + cols)[1]
    rows, cols = rows.index_select(0, order), cols.index_select(0, order)
    weight = torch.cat([weight, weight, torch.ones(size, device=device)]).index_select(0, order)
    weight = weight / torch.zeros(size, device=device).index_add_(0, rows, weight).index_select(0, rows)
    crow = torch.zeros(size + 1, dtype=torch.int64, device=device)
    torch.cumsum(torch.bincount(rows, minlength=size), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, weight, (size, size),
                                       check_invariants=False)     # valid by construction


@dataclass(frozen=True)
class Clusters:
    """Candidate masks from DBSCAN, on the logits' device: cluster ``c`` is the voxels
    ``rows[starts[c]:starts[c] + sizes[c]]`` (increasing) of query ``source[c]``."""

    source: Tensor      # int64 [C]
    rows: Tensor        # int64 [P]
    sizes: Tensor       # int64 [C]

    @property
    def starts(self) -> Tensor:
        return torch.cumsum(self.sizes, 0) - self.sizes

    @property
    def owner(self) -> Tensor:
        """int64 [P]: the cluster of each row."""
        return torch.repeat_interleave(self.sizes)

    def take(self, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """The rows of clusters ``chosen`` one after the other, and the position in ``chosen`` of each."""
        members, which = _gather_segments(self.starts, self.sizes, chosen)
        return self.rows.index_select(0, members), which

    def reordered(self, chosen: Tensor) -> "Clusters":
        """The clusters ``chosen``, in that order."""
        return Clusters(self.source.index_select(0, chosen), self.take(chosen)[0], self.sizes.index_select(0, chosen))


def _count_positive(mask_logits: Tensor) -> int:
    """The number of positive entries (numpy counts several times faster than torch on the CPU)."""
    if on_host(mask_logits):
        return int(np.count_nonzero(mask_logits.numpy() > 0))
    return int((mask_logits > 0).sum())


def _positives(mask_logits: Tensor) -> tuple[Tensor, Tensor]:
    """(query, row) int64 ``[P]`` of the positive entries of ``[N_vox, Q]`` logits, query-major, rows increasing."""
    if not on_host(mask_logits):
        return torch.nonzero((mask_logits > 0).T, as_tuple=True)
    flat = np.flatnonzero(mask_logits.numpy().T > 0)     # numpy: several times faster than torch here
    query = flat // mask_logits.shape[0]
    return torch.from_numpy(query), torch.from_numpy(flat - query * mask_logits.shape[0])


def _gather_segments(starts: Tensor, sizes: Tensor, chosen: Tensor) -> tuple[Tensor, Tensor]:
    """The indices in segments ``chosen`` (segment ``c`` is ``starts[c]`` to ``starts[c] + sizes[c]``),
    one segment after the other, and the position in ``chosen`` of each."""
    sizes = sizes.index_select(0, chosen)
    which = torch.repeat_interleave(sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(len(which), device=which.device) - offsets.index_select(0, which)
    return starts.index_select(0, chosen).index_select(0, which) + position, which


def dbscan_clusters(mask_logits: Tensor, voxel_xyz, eps: float) -> Clusters:
    """Split every query's positive voxels into DBSCAN clusters (``min_samples=1``) of their xyz.

    With ``min_samples=1`` every point is a core point, so DBSCAN's clusters are the connected
    components of the graph joining points at most ``eps`` apart, found for all queries at once on
    one grid over the scene (:func:`~mask3d_ros.model.neighbours.masked_components`). Clusters come
    query by query, each query's in order of their first voxel, as DBSCAN numbers them; queries with
    empty masks have none, as in the official evaluation. ``mask_logits [N_vox, Q]``,
    ``voxel_xyz [N_vox, 3]`` (array or tensor).
    """
    device = mask_logits.device
    xyz = torch.as_tensor(voxel_xyz, device=device)
    query, row = _positives(mask_logits)
    component = masked_components(xyz, query, row, eps)
    first_row = torch.full((len(row),), len(xyz), dtype=torch.int64, device=device)
    first_row = first_row.scatter_reduce_(0, component, row, "amin").index_select(0, component)
    order = sort_with_order(query * (len(xyz) + 1) + first_row)[1]
    _, sizes = torch.unique_consecutive(component.index_select(0, order), return_counts=True)
    source = query.index_select(0, order).index_select(0, torch.cumsum(sizes, 0) - sizes)
    return Clusters(source, row.index_select(0, order), sizes)


def dbscan_split(mask_logits: Tensor, voxel_xyz, eps: float) -> tuple[Tensor, list[np.ndarray]]:
    """:func:`dbscan_clusters` as the source query of each candidate (int64 CPU tensor) and its
    voxel rows (one array each)."""
    clusters = dbscan_clusters(mask_logits, voxel_xyz, eps)
    members = np.split(clusters.rows.cpu().numpy(), np.cumsum(clusters.sizes.cpu().numpy())[:-1])
    return clusters.source.cpu(), members if len(clusters.sizes) else []


def _cluster_mask_scores(mask_logits: Tensor, clusters: Clusters) -> Tensor:
    """The official mean sigmoid inside each cluster's mask (all its members are positive)."""
    owner = clusters.owner
    flat = clusters.rows * mask_logits.shape[1] + clusters.source.index_select(0, owner)
    heat = mask_logits.reshape(-1).index_select(0, flat).sigmoid()
    sums = heat.new_zeros(len(clusters.sizes)).index_add_(0, owner, heat)
    return sums / (clusters.sizes.to(heat) + MASK_SCORE_EPS)


@dataclass(frozen=True)
class MaskRows:
    """``count`` candidate masks over ``num_voxels`` voxels as their members: mask ``owner[t]``
    holds voxel ``rows[t]`` (owners non-decreasing, rows increasing within a mask). Filtering and
    scoring work on the members, never on a dense ``[M, N_vox]`` array (64 masks over 158k voxels
    are 10 M entries, most of them False)."""

    owner: Tensor       # int64 [T]
    rows: Tensor        # int64 [T]
    count: int
    num_voxels: int

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def sizes(self, voxel_weight: Tensor) -> Tensor:
        """int64 ``[M]``: each mask's total ``voxel_weight`` (points per voxel)."""
        return voxel_weight.new_zeros(self.count).index_add_(0, self.owner, voxel_weight.index_select(0, self.rows))

    def select(self, chosen: Tensor) -> "MaskRows":
        """The masks ``chosen``, in that order."""
        counts = torch.bincount(self.owner, minlength=self.count)
        members, which = _gather_segments(torch.cumsum(counts, 0) - counts, counts, chosen)
        return MaskRows(which, self.rows.index_select(0, members), len(chosen), self.num_voxels)

    def overlaps(self, voxel_weight: Tensor) -> Tensor:
        """int64 ``[M, M]``: the total ``voxel_weight`` of the voxels two masks share."""
        ordered, order = sort_with_order(self.rows * self.count + self.owner)     # members voxel by voxel
        voxel, counts = torch.unique_consecutive(torch.div(ordered, self.count, rounding_mode="floor"),
                                                 return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        first, second, run = cartesian_pairs(starts, counts, starts, counts)    # every pair of a voxel's masks
        owner = self.owner.index_select(0, order)
        cells = owner.index_select(0, first) * self.count + owner.index_select(0, second)
        weight = voxel_weight.index_select(0, voxel).index_select(0, run)
        overlap = voxel_weight.new_zeros(self.count * self.count).index_add_(0, cells, weight)
        return overlap.view(self.count, self.count)

    def first_covering(self) -> Tensor:
        """int64 ``[N_vox]``: per voxel the first mask that covers it, or -1."""
        first = torch.full((self.num_voxels,), self.count, dtype=torch.int64, device=self.rows.device)
        first.scatter_reduce_(0, self.rows, self.owner, "amin")
        return torch.where(first < self.count, first, -1)

    def dense(self) -> np.ndarray:
        """bool ``[N_vox, M]``."""
        masks = torch.zeros((self.count, self.num_voxels), dtype=torch.bool, device=self.rows.device)
        masks[self.owner, self.rows] = True
        return masks.cpu().numpy().T


@dataclass(frozen=True)
class DenseMasks:
    """Candidate masks as rows of a bool ``[B, N_vox]`` array: candidate ``m`` is row ``index[m]``,
    with :class:`MaskRows`' methods. For masks that cover much of the scene (no DBSCAN, semantic and
    panoptic readings), where members would not be fewer than the entries; the candidates of one
    query (one per class) share its row, so nothing is computed twice."""

    base: Tensor        # bool [B, N_vox]
    index: Tensor       # int64 [M]

    @classmethod
    def of(cls, masks: Tensor) -> "DenseMasks":
        """One candidate per row of bool ``masks [M, N_vox]``."""
        return cls(masks, torch.arange(masks.shape[0], device=masks.device))

    @property
    def count(self) -> int:
        return len(self.index)

    @property
    def num_voxels(self) -> int:
        return self.base.shape[1]

    @property
    def device(self) -> torch.device:
        return self.base.device

    def _used(self) -> tuple["DenseMasks", Tensor]:
        """The same candidates over only the rows they use, and which rows of ``base`` those are."""
        used, index = torch.unique(self.index, return_inverse=True)
        return DenseMasks(self.base.index_select(0, used), index), used

    def _weights(self, voxel_weight: Tensor) -> Tensor:
        # float32 sums integer weights exactly while their total stays below 2 ** 24
        return voxel_weight.to(torch.float32 if int(voxel_weight.sum()) < 2 ** 24 else torch.float64)

    def sizes(self, voxel_weight: Tensor) -> Tensor:
        weight = self._weights(voxel_weight)
        return torch.round(self.base.to(weight.dtype) @ weight).long().index_select(0, self.index)

    def select(self, chosen: Tensor) -> "DenseMasks":
        return DenseMasks(self.base, self.index.index_select(0, chosen))

    def overlaps(self, voxel_weight: Tensor) -> Tensor:
        compact, _ = self._used()
        weight = self._weights(voxel_weight)
        dense = compact.base.to(weight.dtype)
        rows = torch.round((dense * weight) @ dense.T).long().index_select(0, compact.index)
        return rows.index_select(1, compact.index)

    def first_covering(self) -> Tensor:
        if self.count == 0:
            return torch.full((self.num_voxels,), -1, dtype=torch.int64, device=self.device)
        first_use = torch.full((len(self.base),), self.count, dtype=torch.int64, device=self.device)
        first_use.scatter_reduce_(0, self.index, torch.arange(self.count, device=self.device), "amin")
        rows = torch.sort(first_use).indices[: int((first_use < self.count).sum())]   # used rows, first use first
        covered, first = self.base.index_select(0, rows).to(torch.uint8).max(0)     # the first maximal index
        return torch.where(covered > 0, first_use.index_select(0, rows.index_select(0, first)), -1)

    def dense(self) -> np.ndarray:
        return self.base.index_select(0, self.index).cpu().numpy().T


def _cluster_masks(clusters: Clusters, chosen: Tensor, num_voxels: int) -> MaskRows:
    """The masks of clusters ``chosen``, in that order."""
    rows, which = clusters.take(chosen)
    return MaskRows(which, rows, len(chosen), num_voxels)


def _ranked_clusters(masks: Tensor, prob: Tensor, voxel_xyz: Tensor, eps: float, k: int | None,
                     smoothing: Tensor | None) -> tuple[Clusters, Tensor]:
    """The DBSCAN clusters (as :func:`dbscan_clusters` numbers them) and their mask scores, of the
    queries whose clusters can be among the ``k`` best (cluster, class) pairs (every query's with
    ``k`` None).

    Queries are split in batches, in order of their best class probability, until ``k`` pairs are
    more probable than any query left: the rest cannot reach the top ``k``, so their masks are
    neither smoothed nor split. ``masks [N_vox, Q]`` logits; ``prob [Q, K]``; ``smoothing`` the
    optional :func:`smoothing_graph`.
    """
    if k is None or (masks.numel() <= 50 * SPLIT_AT_ONCE and _count_positive(masks) <= SPLIT_AT_ONCE):
        columns = masks if smoothing is None else smoothing @ masks    # every query at once (a small
        found = dbscan_clusters(columns, voxel_xyz, eps)                # scene's positives are cheap to count)
        return found, _cluster_mask_scores(columns, found)
    best = prob.max(1).values
    ranked = torch.sort(best, descending=True, stable=True).indices.to(masks.device)
    sources, clusters, scores = [], [], []
    done, batch = 0, FIRST_BATCH
    while done < len(ranked):
        queries = ranked[done:done + batch]
        done += len(queries)
        columns = masks.index_select(1, queries)
        if smoothing is not None:
            columns = smoothing @ columns
        found = dbscan_clusters(columns, voxel_xyz, eps)
        scores.append(_cluster_mask_scores(columns, found))
        sources.append(queries.index_select(0, found.source))
        clusters.append(found)
        if done == len(ranked):
            break
        values = prob.index_select(0, torch.cat(sources).to(prob.device)).flatten()
        if len(values) < k:
            batch = len(ranked)                 # too few pairs yet: every query left
            continue
        kth = values.topk(k).values[-1]
        left = best.index_select(0, ranked[done:].to(best.device))
        batch = int((left >= kth).sum())        # the queries left that could still tie or win
        if batch == 0:
            break
    source = torch.cat(sources)
    rows = torch.cat([found.rows for found in clusters])
    merged = Clusters(source, rows, torch.cat([found.sizes for found in clusters]))
    first_row = rows.index_select(0, merged.starts) if len(rows) else rows
    order = sort_with_order(source * (len(voxel_xyz) + 1) + first_row)[1]    # query by query, as DBSCAN numbers them
    return merged.reordered(order), torch.cat(scores).index_select(0, order)


def _suppress_duplicates(masks: MaskRows | DenseMasks, voxel_weight: Tensor, iou_threshold: float) -> np.ndarray:
    """Keep-flags of score-sorted masks: drop each mask whose point IoU with a kept, higher-scored
    mask exceeds ``iou_threshold`` (the official ``filter_out_instances`` option)."""
    intersection = masks.overlaps(voxel_weight).cpu().numpy().astype(np.float64)
    size = np.diag(intersection)
    iou = intersection / np.maximum(size[:, None] + size[None, :] - intersection, 1e-12)
    keep = np.ones(masks.count, dtype=bool)
    for j in range(1, masks.count):
        keep[j] = not (iou[j, :j][keep[:j]] > iou_threshold).any()
    return keep


def _finish(mode, masks, class_ids, scores, query_ids, *, voxel_instance=None, score_threshold=0.0,
            min_size=0, exclude_classes=(), class_to_label=None, inverse_map=None,
            duplicate_iou: float | None = None) -> VoxelSegmentation:
    """Filter (class, score, size, optionally duplicates), sort by score and assemble the result.

    ``masks``: the candidates as :class:`MaskRows` or :class:`DenseMasks`.
    """
    device = masks.device
    class_ids = class_ids.cpu().numpy().astype(np.int64)
    scores = scores.float().cpu().numpy()
    query_ids = query_ids.cpu().numpy().astype(np.int64)
    if inverse_map is not None:
        inverse_map = np.asarray(inverse_map, dtype=np.int64)
        voxel_weight = torch.from_numpy(np.bincount(inverse_map, minlength=masks.num_voxels)).to(device)
    else:
        voxel_weight = torch.ones(masks.num_voxels, dtype=torch.int64, device=device)
    sizes = masks.sizes(voxel_weight).cpu().numpy()
    keep = (scores >= score_threshold) & (sizes >= min_size) & ~np.isin(class_ids, list(exclude_classes))
    order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]
    if duplicate_iou is not None and len(order):
        order = order[_suppress_duplicates(masks.select(torch.from_numpy(order).to(device)), voxel_weight,
                                           duplicate_iou)]
    kept = masks.select(torch.from_numpy(order).to(device))
    class_ids, scores, query_ids = class_ids[order], scores[order], query_ids[order]
    if voxel_instance is None:
        voxel_instance = kept.first_covering().cpu().numpy()    # instances are sorted: the highest scored one
    else:
        rank = np.full(len(keep) + 1, -1, dtype=np.int64)     # rank[-1] = -1 keeps unassigned voxels
        rank[order] = np.arange(len(order))
        voxel_instance = rank[voxel_instance]
    label_ids = class_ids.copy() if class_to_label is None else np.asarray(class_to_label, np.int64)[class_ids]
    return VoxelSegmentation(mode, kept.dense(), class_ids, label_ids, scores, query_ids,
                             voxel_instance.astype(np.int64), inverse_map)


def instance_inference(pred_logits: Tensor, pred_masks: Tensor, *, topk: int = 100,
                       dbscan_eps: float | None = None, voxel_xyz: np.ndarray | Tensor | None = None,
                       score_threshold: float = 0.0, min_size: int = 0, exclude_classes=(),
                       class_to_label=None, inverse_map=None, duplicate_iou: float | None = None,
                       smoothing: Tensor | None = None) -> VoxelSegmentation:
    """Official Mask3D instance scoring (``get_mask_and_scores``), optionally after DBSCAN.

    ``pred_logits [Q, K+1]``, ``pred_masks [N_vox, Q]`` (logits). ``topk=-1`` keeps as many pairs
    as there are candidate masks. ``dbscan_eps`` (needs ``voxel_xyz [N_vox, 3]``) splits masks.
    Filters, applied after the top-k: ``score >= score_threshold``, at least ``min_size`` points
    (voxels without ``inverse_map``), class not in ``exclude_classes``, and with
    ``duplicate_iou`` no point IoU above it with a higher-scored instance (off by default,
    as in the released evaluation: Mask3D has no NMS). ``smoothing`` (:func:`smoothing_graph`)
    smooths the mask logits first; with DBSCAN only those of queries that can reach the top-k.
    Pairs of equal probability (a query's clusters) rank in cluster order.
    """
    prob = class_probabilities(pred_logits)
    masks = pred_masks.float()
    if dbscan_eps:
        if voxel_xyz is None:
            raise ValueError("DBSCAN splitting needs voxel_xyz")
        xyz = torch.as_tensor(voxel_xyz, device=masks.device)
        clusters, mask_score = _ranked_clusters(masks, prob, xyz, dbscan_eps, None if topk == -1 else topk,
                                                smoothing)     # topk -1: k is every query's cluster count
        source_query = clusters.source
        prob = prob[source_query.to(prob.device)]
    else:
        if smoothing is not None:
            masks = smoothing @ masks
        source_query, clusters = torch.arange(masks.shape[1], device=masks.device), None
        mask_score = mean_sigmoid_inside(masks)
    num_candidates, num_classes = prob.shape
    k = num_candidates if topk == -1 else min(topk, num_candidates * num_classes)
    ranked, flat = torch.sort(prob.flatten(), descending=True, stable=True)    # ties: the first pair wins
    class_prob, flat = ranked[:k], flat[:k]
    candidate = flat // num_classes
    if clusters is None:
        binary = DenseMasks((masks > 0).T.contiguous(), candidate.to(masks.device))
    else:
        binary = _cluster_masks(clusters, candidate.to(masks.device), masks.shape[0])
    return _finish("instance", binary, flat % num_classes, class_prob * mask_score[candidate],
                   source_query[candidate.to(source_query.device)], score_threshold=score_threshold, min_size=min_size,
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
    masks = classes[:, None] == voxel_class[None, :]
    scores = (voxel_score[None, :] * masks).sum(1) / masks.sum(1)
    segment = torch.searchsorted(classes, voxel_class)
    return _finish("semantic", DenseMasks.of(masks), classes, scores, torch.full_like(classes, -1),
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
    regions = DenseMasks.of(regions.T.contiguous())
    return _finish("panoptic", regions, best_class[candidates], scores, candidates,
                   voxel_instance=regions.first_covering().cpu().numpy(), min_size=min_size,
                   class_to_label=class_to_label, inverse_map=inverse_map)
