"""Instance, semantic and panoptic readings of hand-built decoder outputs."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from mask3d_ros.data.datasets import load_mosd
from mask3d_ros.model import neighbours, postprocess
from mask3d_ros.model.files import bundled_checkpoint
from mask3d_ros.model.neighbours import VoxelPairs, cartesian_pairs, radius_pairs
from mask3d_ros.model.postprocess import (
    DenseMasks,
    MaskRows,
    class_probabilities,
    dbscan_clusters,
    dbscan_split,
    instance_inference,
    panoptic_inference,
    semantic_inference,
    smooth_mask_logits,
    smoothing_graph,
)
from mask3d_ros.model.segmenter import Segmenter
from mask3d_ros.model.sparse import CoordinateManager
from mask3d_ros.model.voxel import voxel_mean, voxelize


def logits_for(probabilities) -> torch.Tensor:
    """Class logits whose softmax is exactly the given rows (last column = no object)."""
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


# three queries, two classes + no-object; six voxels
PROBS = [[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.05, 0.05, 0.9]]
MASKS = torch.tensor([
    [2.0, -1.0, 1.0],
    [1.0, -1.0, 1.0],
    [-1.0, 3.0, 1.0],
    [-1.0, 0.5, -1.0],
    [-1.0, -1.0, -1.0],
    [0.5, -2.0, -1.0],
])


def mean_sigmoid(column: torch.Tensor) -> float:
    inside = column > 0
    return float(column[inside].sigmoid().sum() / (inside.sum() + 1e-6))


def test_instance_scores_follow_the_official_formula():
    result = instance_inference(logits_for(PROBS), MASKS, topk=4)
    prob = torch.softmax(logits_for(PROBS), -1)[:, :-1]
    expected = sorted(((float(prob[q, c]) * mean_sigmoid(MASKS[:, q]), q, c)
                       for q in range(3) for c in range(2)), reverse=True)
    # top-4 by class probability: (1,1) .7, (0,0) .6, (0,1) .3, (1,0) .1 -- then sorted by score
    chosen = [e for e in expected if (e[1], e[2]) in {(1, 1), (0, 0), (0, 1), (1, 0)}]
    assert list(zip(result.query_ids, result.class_ids)) == [(q, c) for _, q, c in chosen]
    np.testing.assert_allclose(result.scores, [s for s, _, _ in chosen], rtol=1e-6)
    np.testing.assert_array_equal(result.masks[:, 0], (MASKS[:, result.query_ids[0]] > 0).numpy())


def test_instance_topk_minus_one_keeps_as_many_pairs_as_queries_and_large_topk_clamps():
    assert instance_inference(logits_for(PROBS), MASKS, topk=-1).num_instances == 3
    assert instance_inference(logits_for(PROBS), MASKS, topk=1000).num_instances == 6


def test_voxel_and_point_views_take_the_highest_scored_instance():
    inverse_map = np.array([0, 0, 1, 2, 3, 4, 5, 5, 5])
    result = instance_inference(logits_for(PROBS), MASKS, topk=2, class_to_label=np.array([10, 20]),
                                inverse_map=inverse_map)
    first = result.masks[:, 0]
    assert (result.voxel_instance[first] == 0).all()
    assert (result.voxel_instance[~result.masks.any(1)] == -1).all()
    np.testing.assert_array_equal(result.point_instance, result.voxel_instance[inverse_map])
    np.testing.assert_array_equal(result.label_ids, result.class_ids * 10 + 10)
    assert set(result.point_label[result.point_instance >= 0]) <= {10, 20}
    assert result.point_masks().shape == (len(inverse_map), result.num_instances)


def test_filters_score_size_and_class():
    inverse_map = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5])        # voxel 0 holds four points
    full = instance_inference(logits_for(PROBS), MASKS, topk=6, inverse_map=inverse_map)
    threshold = float(np.median(full.scores))
    assert (instance_inference(logits_for(PROBS), MASKS, topk=6, score_threshold=threshold).scores >= threshold).all()
    sized = instance_inference(logits_for(PROBS), MASKS, topk=6, min_size=6, inverse_map=inverse_map)
    assert (sized.point_masks().sum(0) >= 6).all() and 0 < sized.num_instances < full.num_instances
    assert 1 not in instance_inference(logits_for(PROBS), MASKS, topk=6, exclude_classes=(1,)).class_ids


def test_dbscan_splits_a_mask_into_clusters_with_the_query_class():
    xyz = np.array([[0, 0, 0], [0.1, 0, 0], [5, 0, 0], [5.1, 0, 0], [9, 9, 9]], np.float32)
    masks = torch.tensor([[1.0, -1], [2.0, -1], [3.0, -1], [4.0, -1], [-1.0, -1]])
    probs = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]
    result = instance_inference(logits_for(probs), masks, topk=-1, dbscan_eps=0.5, voxel_xyz=xyz)
    # query 1 has an empty mask and is dropped; query 0 becomes two candidates
    assert result.num_instances == 2 and (result.query_ids == 0).all() and (result.class_ids == 0).all()
    got = {tuple(np.flatnonzero(result.masks[:, j])): result.scores[j] for j in range(2)}
    p = float(torch.softmax(logits_for(probs), -1)[0, 0])
    assert got.keys() == {(0, 1), (2, 3)}
    np.testing.assert_allclose(got[(2, 3)], p * (torch.tensor([3.0, 4.0]).sigmoid().sum() / (2 + 1e-6)), rtol=1e-6)
    # a large radius keeps each mask whole
    whole = instance_inference(logits_for(probs), masks, topk=-1, dbscan_eps=10.0, voxel_xyz=xyz)
    assert whole.num_instances == 1 and whole.masks[:, 0].sum() == 4
    with pytest.raises(ValueError, match="voxel_xyz"):
        instance_inference(logits_for(probs), masks, dbscan_eps=0.5)


def dbscan_min_samples_1(xyz: np.ndarray, eps: float) -> np.ndarray:
    """DBSCAN with min_samples=1 by its definition: clusters grow from the first unlabelled point
    through every point within eps (inclusive) of a member, numbered in order of their first point."""
    near = np.linalg.norm(xyz[:, None] - xyz[None], axis=2) <= eps
    labels = np.full(len(xyz), -1)
    for seed in range(len(xyz)):
        if labels[seed] >= 0:
            continue
        labels[seed], frontier = labels.max() + 1, [seed]
        while frontier:
            grown = np.flatnonzero(near[frontier].any(0) & (labels < 0))
            labels[grown], frontier = labels[seed], list(grown)
    return labels


def test_dbscan_split_matches_dbscan_by_definition():
    rng = np.random.default_rng(4)
    xyz = np.concatenate([rng.normal(centre, 0.05, (40, 3)) for centre in rng.uniform(0, 1, (6, 3))])
    masks = torch.from_numpy(rng.normal(0.3, 1.0, (len(xyz), 5))).float()
    for eps in (0.02, 0.06, 0.15):
        sources, members = dbscan_split(masks, xyz, eps)
        expected_sources, expected_members = [], []
        for query in range(masks.shape[1]):
            rows = np.flatnonzero(masks[:, query].numpy() > 0)
            labels = dbscan_min_samples_1(xyz[rows], eps)
            expected_sources += [query] * (labels.max() + 1)
            expected_members += [rows[labels == label] for label in range(labels.max() + 1)]
        assert sources.tolist() == expected_sources
        assert len(members) == len(expected_members) and all(map(np.array_equal, members, expected_members))
    # points exactly eps apart are neighbours (DBSCAN's <=)
    line = np.array([[0, 0, 0], [0.5, 0, 0], [1.0, 0, 0]], np.float64)
    assert len(dbscan_split(torch.ones(3, 1), line, 0.5)[1]) == 1


def test_semantic_takes_the_argmax_of_summed_evidence():
    result = semantic_inference(logits_for(PROBS), MASKS)
    prob = torch.softmax(logits_for(PROBS), -1)[:, :-1]
    expected = (MASKS.sigmoid() @ prob).argmax(1).numpy()
    np.testing.assert_array_equal(result.voxel_class, expected)
    assert (result.masks.sum(1) == 1).all()             # every voxel in exactly one segment
    assert ((result.scores > 0) & (result.scores <= 1)).all()


def test_panoptic_instances_do_not_overlap_and_skip_no_object_queries():
    result = panoptic_inference(logits_for(PROBS), MASKS, overlap_threshold=0.0)
    assert (result.masks.sum(1) <= 1).all()
    assert 2 not in result.query_ids                      # query 2's best class is "no object"
    prob = torch.softmax(logits_for(PROBS), -1)
    for j, q in enumerate(result.query_ids):
        for v in np.flatnonzero(result.masks[:, j]):
            others = [float(prob[o, :-1].max() * MASKS[v, o].sigmoid()) for o in (0, 1)]
            assert others[q] == max(others) and MASKS[v, q] >= 0
    assert (result.voxel_instance[result.masks.any(1)] >= 0).all()


def test_panoptic_drops_mostly_covered_queries_and_handles_nothing_left():
    result = panoptic_inference(logits_for(PROBS), MASKS, overlap_threshold=0.8)
    masks_by_query = {q: result.masks[:, j].sum() for j, q in enumerate(result.query_ids)}
    for q, size in masks_by_query.items():
        assert size >= 0.8 * (MASKS[:, q] >= 0).sum()
    empty = panoptic_inference(logits_for([[0.1, 0.1, 0.8]]), MASKS[:, :1])
    assert empty.num_instances == 0 and (empty.voxel_instance == -1).all()


def test_duplicate_suppression_keeps_the_best_of_overlapping_masks():
    """Optional (off by default, as officially): masks overlapping a higher-scored one are dropped."""
    logits = torch.tensor([[4.0, -4.0], [3.0, -4.0], [2.0, -4.0]])      # 3 queries, 1 class + no-object
    masks = torch.full((10, 3), -5.0)
    masks[:6, 0] = 5.0          # query 0: voxels 0-5
    masks[:5, 1] = 5.0          # query 1: voxels 0-4 (IoU 5/6 with query 0)
    masks[6:, 2] = 5.0          # query 2: voxels 6-9 (disjoint)
    everything = instance_inference(logits, masks, topk=3)
    assert sorted(everything.query_ids.tolist()) == [0, 1, 2]
    deduplicated = instance_inference(logits, masks, topk=3, duplicate_iou=0.5)
    assert deduplicated.query_ids.tolist() == [0, 2]
    assert instance_inference(logits, masks, topk=3, duplicate_iou=0.9).num_instances == 3


def test_smoothing_fills_speckles_but_stops_at_colour_edges():
    """A 1 cm grid: a red and a blue half, the query's mask covers the red half except for two
    speckled voxels; smoothing over 2.5 cm restores them and does not leak into the blue half."""
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(10), indexing="ij"), -1).reshape(-1, 2) * 0.01
    xyz = np.c_[grid, np.zeros(len(grid))]
    red = grid[:, 0] < 0.095
    rgb = np.where(red[:, None], [200, 30, 30], [30, 30, 200]).astype(np.uint8)
    logits = torch.from_numpy(np.where(red, 4.0, -4.0)[:, None].astype(np.float32))
    speckles = np.flatnonzero(red)[[23, 57]]
    logits[speckles] = -4.0
    smoothed = smooth_mask_logits(logits, xyz, rgb, radius=0.025, color_sigma=0.1)
    assert smoothed.shape == logits.shape
    assert (smoothed[red] > 0).all()                          # speckles filled
    assert (smoothed[~red] < 0).all()                         # nothing crossed the colour edge
    plain = smooth_mask_logits(logits, xyz, np.zeros_like(rgb), radius=0.025, color_sigma=0.1)
    edge = ~red & (grid[:, 0] < 0.105)
    assert (plain[edge] > smoothed[edge] + 1).all()           # without colour, the edge blurs
    lone = smooth_mask_logits(logits, xyz, rgb, radius=0.001, color_sigma=0.1)
    assert torch.equal(lone, logits)                          # no neighbours: unchanged


# --- the per-mask KD-tree implementation this module replaced, kept as the reference --------------


def reference_smooth(mask_logits, voxel_xyz, voxel_rgb, radius, color_sigma):
    """Smoothing as it was: a scipy KD-tree, weights in numpy, a COO sparse product."""
    pairs = cKDTree(voxel_xyz).query_pairs(radius, output_type="ndarray")
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(len(voxel_xyz))])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(len(voxel_xyz))])
    colour = np.asarray(voxel_rgb, np.float32) / 255.0
    weight = np.exp(-((colour[rows] - colour[cols]) ** 2).sum(1) / (2 * color_sigma ** 2)).astype(np.float32)
    weight /= np.bincount(rows, weight, minlength=len(voxel_xyz))[rows]
    graph = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(weight),
                                    (len(voxel_xyz),) * 2, check_invariants=False)
    return torch.sparse.mm(graph, mask_logits.float())


def reference_dbscan(mask_logits, voxel_xyz, eps):
    """The DBSCAN split as it was: one KD-tree and scipy connected components per query."""
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
    return sources, members


def assert_same_split(mask_logits, xyz, eps):
    sources, members = dbscan_split(mask_logits, xyz, eps)
    expected_sources, expected_members = reference_dbscan(mask_logits, xyz, eps)
    assert sources.tolist() == expected_sources
    assert len(members) == len(expected_members) and all(map(np.array_equal, members, expected_members))


def random_scene(seed: int, blobs: int = 8, per_blob: int = 300, queries: int = 6):
    """Clustered float32 points (blobs of a few cm to tens of cm) and speckled masks over them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, (blobs, 3))
    xyz = np.concatenate([rng.normal(c, rng.uniform(0.01, 0.2), (per_blob, 3)) for c in centres]).astype(np.float32)
    masks = torch.from_numpy(rng.normal(-0.5, 1.0, (len(xyz), queries)).astype(np.float32))
    return xyz, masks


def kd_tree_pairs(xyz: np.ndarray, radius: float) -> set:
    return set(map(tuple, np.sort(cKDTree(xyz).query_pairs(radius, output_type="ndarray"), 1).tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_the_grid_matches_the_kd_tree_on_random_scenes(seed):
    xyz, masks = random_scene(seed)
    for eps in (0.01, 0.05, 0.12, 0.4):
        assert_same_split(masks, xyz, eps)
    for radius in (0.01, 0.03, 0.1):
        first, second = radius_pairs(torch.from_numpy(xyz), radius)
        assert set(zip(first.tolist(), second.tolist())) == kd_tree_pairs(xyz, radius)
    rgb = np.random.default_rng(seed).integers(0, 256, xyz.shape).astype(np.uint8)
    torch.testing.assert_close(smooth_mask_logits(masks, xyz, rgb, 0.03, 0.1),
                               reference_smooth(masks, xyz, rgb, 0.03, 0.1), rtol=1e-5, atol=1e-5)


def voxel_pairs_of(xyz: np.ndarray, voxel_size: float, kernel_size: int = 5) -> tuple[np.ndarray, VoxelPairs]:
    """One representative point per voxel and the pairs of a stride-1 kernel map over the voxels."""
    coords, first, _ = voxelize(xyz, voxel_size)
    kernel_map = CoordinateManager(torch.from_numpy(coords)).kernel_map(kernel_size, 1)
    return xyz[first], VoxelPairs(*kernel_map.unordered_pairs(), torch.from_numpy(coords), voxel_size,
                                  kernel_size // 2)


@pytest.mark.parametrize("seed", range(3))
def test_radius_pairs_among_the_backbones_voxel_pairs_are_the_kd_trees(seed):
    """Candidates from a 5x5x5 kernel map (reach 2 voxels) give every pair within 2 voxel sizes,
    including the pair whose float32 quotients put it 3 voxels apart though it is within the radius."""
    rng = np.random.default_rng(seed)
    voxel = 0.015
    edge = np.float32(voxel)   # 0.014999999 / 0.015 rounds to just below 1: voxel 0
    across = np.float32(0.044999998)   # its quotient rounds up to 3.0: voxel 3, yet 0.02999999933 from `edge`
    xyz = np.concatenate([rng.uniform(-0.4, 0.4, (3000, 3)), [[np.nextafter(edge, 0), 0.5, 0.5], [across, 0.5, 0.5]]])
    xyz = xyz.astype(np.float32)
    points, voxels = voxel_pairs_of(xyz, voxel)
    assert np.floor(points[-2:, 0] / np.float32(voxel)).tolist() == [0, 3]
    first, second = radius_pairs(torch.from_numpy(points), 2 * voxel, voxels)
    found = set(zip(first.tolist(), second.tolist()))
    assert found == kd_tree_pairs(points, 2 * voxel)
    assert (len(points) - 2, len(points) - 1) in found
    assert (first < second).all()


def test_voxel_pairs_that_cannot_hold_every_pair_are_not_used(monkeypatch):
    """A radius beyond the pairs' reach, or coordinates that are not the points' voxels: grid search."""
    xyz = np.random.default_rng(5).uniform(-0.3, 0.3, (2000, 3)).astype(np.float32)
    points, voxels = voxel_pairs_of(xyz, 0.015, kernel_size=3)
    searched = []
    monkeypatch.setattr(neighbours, "cartesian_pairs", lambda *a: searched.append(1) or cartesian_pairs(*a))
    for radius, pairs in ((0.015, voxels), (0.03, voxels), (0.015, replace(voxels, coords=voxels.coords + 1))):
        searched.clear()
        first, second = radius_pairs(torch.from_numpy(points), radius, pairs)
        assert set(zip(first.tolist(), second.tolist())) == kd_tree_pairs(points, radius)
        assert bool(searched) == (pairs is not voxels or radius > 0.015), "grid search only when needed"


@pytest.mark.parametrize("table", [True, False], ids=["table", "search"])
def test_cell_lookups_by_table_and_by_search_find_the_same_neighbours(table, monkeypatch):
    """Small scenes look cells up in a dense table, large ones by binary search: both must give the
    KD-tree's pairs and DBSCAN's split, on the host libraries and on the torch code a GPU runs."""
    monkeypatch.setattr(neighbours, "DENSE_TABLE_MIN", 2 ** 40 if table else 0)
    monkeypatch.setattr(neighbours, "DENSE_TABLE_PER_KEY", 0)
    xyz, masks = random_scene(7, blobs=4, per_blob=200)
    expected = kd_tree_pairs(xyz, 0.04)
    for host in (True, False):
        monkeypatch.setattr(neighbours, "HOST_LIBRARIES", host)
        assert set(zip(*map(torch.Tensor.tolist, radius_pairs(torch.from_numpy(xyz), 0.04)))) == expected
        assert_same_split(masks, xyz, 0.05)


def test_pairs_exactly_eps_apart_and_far_from_the_origin_are_decided_as_the_kd_tree_decides():
    """Points on a 1 cm lattice far from the origin: many pairs sit on the radius in float32."""
    lattice = np.stack(np.meshgrid(*[np.arange(12)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.01
    xyz = (lattice + np.array([1000.0, -250.0, 3.0])).astype(np.float32)
    masks = torch.from_numpy(np.random.default_rng(0).normal(0.5, 1.0, (len(xyz), 3)).astype(np.float32))
    for eps in (0.01, 0.02, 0.03):
        assert_same_split(masks, xyz, eps)


def test_wall_sized_masks_split_as_before():
    """Two 3 x 2 m walls at 1.5 cm, 10 cm apart, one mask over both, one over half, one speckled."""
    u, v = np.meshgrid(np.arange(0, 3, 0.015), np.arange(0, 2, 0.015), indexing="ij")
    wall = np.stack([u.ravel(), v.ravel(), np.zeros(u.size)], 1)
    xyz = np.concatenate([wall, wall + [0, 0, 0.1]]).astype(np.float32)
    rng = np.random.default_rng(1)
    masks = torch.full((len(xyz), 3), -1.0)
    masks[:, 0] = 1.0
    masks[: len(wall) // 2, 1] = 1.0
    masks[:, 2] = torch.from_numpy(rng.normal(0, 1, len(xyz)).astype(np.float32))
    for eps in (0.05, 0.12):
        assert_same_split(masks, xyz, eps)


def test_the_post_stage_matches_the_reference_on_a_real_frame(mosd_dir):
    scene = load_mosd(mosd_dir / "val" / "test55.pcd")
    segmenter = Segmenter(None, bundled_checkpoint(), device="cpu")
    result, raw = segmenter.segment(scene.xyz, scene.rgb, return_raw=True)
    preset = segmenter.preset
    xyz = scene.xyz.astype(np.float32)[raw["unique_map"]]
    logits, masks = torch.from_numpy(raw["pred_logits"]), torch.from_numpy(raw["pred_masks"])
    rgb = voxel_mean(scene.rgb, raw["inverse_map"], len(xyz))
    expected = reference_smooth(masks, xyz, rgb, preset.smooth_radius, preset.smooth_color_sigma)
    smoothed = smooth_mask_logits(masks, xyz, rgb, preset.smooth_radius, preset.smooth_color_sigma)
    torch.testing.assert_close(smoothed, expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(smoothed > 0, expected > 0)
    assert_same_split(expected, xyz, preset.dbscan_eps)
    common = dict(topk=preset.topk, dbscan_eps=preset.dbscan_eps, voxel_xyz=xyz, inverse_map=raw["inverse_map"],
                  duplicate_iou=preset.duplicate_iou, exclude_classes=preset.exclude_classes)
    ours = instance_inference(logits, smoothed, **common)
    np.testing.assert_array_equal(result.masks, ours.masks)        # smoothed per batch of queries in the Segmenter
    np.testing.assert_allclose(result.scores, ours.scores, rtol=1e-6)
    reference = instance_inference(logits, expected, **common)
    np.testing.assert_array_equal(ours.masks, reference.masks)
    torch.testing.assert_close(torch.from_numpy(ours.scores), torch.from_numpy(reference.scores))


def every_query_split(logits, masks, xyz, eps, topk):
    """The top-k (cluster, class) pairs with every query split first: masks as rows, scores."""
    clusters = dbscan_clusters(masks, xyz, eps)
    prob = class_probabilities(logits)[clusters.source]
    ranked, flat = torch.sort(prob.flatten(), descending=True, stable=True)
    chosen = flat[:topk] // prob.shape[1]
    members = np.split(clusters.rows.numpy(), np.cumsum(clusters.sizes.numpy())[:-1])
    rows = [members[c] for c in chosen.tolist()]
    heat = [masks[r, clusters.source[c]].sigmoid().sum() / (len(r) + 1e-6) for r, c in zip(rows, chosen.tolist())]
    return rows, ranked[:topk] * torch.stack(heat)


@pytest.mark.parametrize("seed", range(6))
def test_only_queries_that_can_reach_the_top_k_are_split(seed, monkeypatch):
    """Splitting queries in order of their best class until the rest cannot reach the top-k gives
    the top-k of splitting them all, ties included (a query's clusters share its probabilities)."""
    rng = np.random.default_rng(seed)
    xyz, speckled = random_scene(seed, queries=40)
    blob = np.arange(len(xyz)) // 300
    compact = torch.from_numpy(np.where(blob[:, None] == np.arange(40) % 8, 1.0, -1.0).astype(np.float32))
    logits = torch.from_numpy(rng.normal(0, 2, (40, 4)).astype(np.float32))
    split_queries = []
    monkeypatch.setattr(postprocess, "dbscan_clusters",
                        lambda m, *a: split_queries.append(m.shape[1]) or dbscan_clusters(m, *a))
    instance_inference(logits, compact, topk=5, dbscan_eps=0.4, voxel_xyz=xyz)
    assert split_queries == [40]                    # a small scene: every query in one split
    monkeypatch.setattr(postprocess, "SPLIT_AT_ONCE", 0)
    for masks, eps in ((speckled, 0.05), (compact, 0.4)):
        for topk in (1, 5, 20, 60, 200):
            split_queries.clear()
            result = instance_inference(logits, masks, topk=topk, dbscan_eps=eps, voxel_xyz=xyz)
            rows, scores = every_query_split(logits, masks, xyz, eps, topk)
            order = torch.sort(scores, descending=True, stable=True).indices.tolist()
            assert [tuple(np.flatnonzero(result.masks[:, j])) for j in range(result.num_instances)] == \
                [tuple(rows[j]) for j in order]
            np.testing.assert_allclose(result.scores, scores[order].numpy(), rtol=1e-5)
            assert split_queries[0] == 8
            if masks is compact and topk == 5:      # 8 queries give 24 pairs, 5 of them above every query left
                assert split_queries == [8]
            if masks is compact and topk == 200:    # more pairs wanted than 8 queries give: every query
                assert sum(split_queries) == 40
    # topk -1 keeps as many pairs as there are clusters, so every query is split however many the first give
    result = instance_inference(logits, speckled, topk=-1, dbscan_eps=0.05, voxel_xyz=xyz)
    rows, scores = every_query_split(logits, speckled, xyz, 0.05, len(dbscan_clusters(speckled, xyz, 0.05).sizes))
    assert result.num_instances == len(rows)


def test_smoothing_inside_the_instance_reading_equals_smoothing_first():
    xyz, masks = random_scene(7, queries=24)
    rgb = np.random.default_rng(7).integers(0, 256, xyz.shape).astype(np.uint8)
    logits = torch.from_numpy(np.random.default_rng(8).normal(0, 2, (24, 3)).astype(np.float32))
    graph = smoothing_graph(xyz, rgb, 0.03, 0.1)
    inside = instance_inference(logits, masks, topk=10, dbscan_eps=0.05, voxel_xyz=xyz, smoothing=graph)
    first = instance_inference(logits, smooth_mask_logits(masks, xyz, rgb, 0.03, 0.1), topk=10, dbscan_eps=0.05,
                               voxel_xyz=xyz)
    np.testing.assert_array_equal(inside.masks, first.masks)
    np.testing.assert_allclose(inside.scores, first.scores, rtol=1e-6)


def test_dense_and_member_masks_agree():
    """Candidates as dense rows (shared by the classes of one query) and as member lists give the
    same sizes, overlaps, first covering mask and dense result, before and after a selection."""
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.random((6, 500)) < 0.3)
    index = torch.tensor([4, 0, 4, 2, 5, 0, 1])
    dense = DenseMasks(base, index)
    owner, rows = torch.nonzero(base.index_select(0, index), as_tuple=True)
    members = MaskRows(owner, rows, len(index), base.shape[1])
    weight = torch.from_numpy(rng.integers(1, 5, base.shape[1]))
    for chosen in (torch.arange(len(index)), torch.tensor([3, 1, 6, 2])):
        a, b = dense.select(chosen), members.select(chosen)
        assert torch.equal(a.sizes(weight), b.sizes(weight))
        assert torch.equal(a.overlaps(weight), b.overlaps(weight))
        assert torch.equal(a.first_covering(), b.first_covering())
        np.testing.assert_array_equal(a.dense(), b.dense())


def test_the_torch_code_a_gpu_runs_gives_the_same_result_on_the_cpu(monkeypatch):
    """On the CPU numpy and scipy do the sorting, lookups and components; the torch code that runs on
    a GPU (hooking and pointer jumping, torch sorts and searches) must give the same split."""
    xyz, masks = random_scene(5, queries=12)
    rgb = np.random.default_rng(5).integers(0, 256, xyz.shape).astype(np.uint8)
    logits = torch.from_numpy(np.random.default_rng(6).normal(0, 2, (12, 3)).astype(np.float32))
    results = []
    for host in (True, False):
        monkeypatch.setattr(neighbours, "HOST_LIBRARIES", host)
        graph = smoothing_graph(xyz, rgb, 0.03, 0.1)
        results.append(instance_inference(logits, masks, topk=20, dbscan_eps=0.05, voxel_xyz=xyz,
                                          smoothing=graph, duplicate_iou=0.5))
        assert sorted(zip(*map(torch.Tensor.tolist, radius_pairs(torch.from_numpy(xyz), 0.05)))) == \
            sorted(kd_tree_pairs(xyz, 0.05))
    np.testing.assert_array_equal(results[0].masks, results[1].masks)
    np.testing.assert_allclose(results[0].scores, results[1].scores, rtol=1e-5)
