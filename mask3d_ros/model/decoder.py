"""Mask3D: sparse UNet backbone + masked-attention transformer decoder (Schult et al. 2023).

Queries start at zero and get their positions from furthest point sampling of the voxels. Each
refinement step first predicts classes and full-resolution masks from the current queries
(the "mask module"), pools the mask logits to one backbone level, blocks every key whose pooled
mask logit is negative, and refines the queries by masked cross-attention to that level,
self-attention and an FFN. The per-level layers are shared across the decoder passes.

Parameter names and shapes equal the official checkpoints with the ``model.`` prefix removed,
so released weights load with ``load_state_dict(strict=True)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mask3d_ros.model import backbone as backbone_module
from mask3d_ros.model.backends import from_minkowski, to_minkowski
from mask3d_ros.model.fps import furthest_point_sample
from mask3d_ros.model.position_encoding import FourierPositionEncoding, level_encoding
from mask3d_ros.model.sparse import SparseTensor


class DegenerateSceneError(ValueError):
    """The scene is too small for the model (no voxels, or a level with a single voxel)."""


@dataclass(frozen=True)
class Mask3DConfig:
    """Architecture of one Mask3D model; the defaults are the released ScanNet200 model."""

    num_classes: int = 201          # classes + 1; the last logit is "no object"
    num_labels: int = 200           # width of backbone.final (stored, never used in forward)
    backbone: str = "Res16UNet34C"
    in_channels: int = 3            # normalised RGB
    hidden_dim: int = 128
    num_heads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.0
    num_queries: int = 100          # not a weight: any count works with any checkpoint
    num_decoders: int = 3
    shared_decoder: bool = True
    hlevels: tuple[int, ...] = (0, 1, 2, 3)   # backbone levels attended, 0 = coarsest
    gauss_scale: float = 1.0
    backbone_width: float = 1.0     # channel scale, only for the compact Res16UNet14A
    # Normalise with each scene's own statistics at inference too. Models trained one scene per
    # step (this project's) learn per-scene normalisation, which population statistics do not
    # reproduce; the released models (batches of 5 scenes) use their running statistics.
    per_scene_norm: bool = False


class PointwiseConv(nn.Module):
    """MinkowskiEngine 1x1x1 convolution: ``feats @ kernel + bias`` with ME's parameter layout."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(1, out_channels))
        nn.init.kaiming_uniform_(self.kernel.T, a=5 ** 0.5)

    def forward(self, feats: Tensor) -> Tensor:
        return feats.mm(self.kernel) + self.bias


class QueryProjection(nn.Module):
    """3DETR ``GenericMLP`` as Mask3D configures it: two 1x1 Conv1d, each followed by ReLU."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.ReLU(), nn.Conv1d(dim, dim, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """``[B, dim, Q] -> [B, dim, Q]``."""
        return self.layers(x)


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class CrossAttentionLayer(nn.Module):
    """Post-norm masked cross-attention; keys carry the point encoding, values do not.

    The memory's key and value projections depend only on the backbone level, so
    :meth:`project_memory` computes them once per scene and every decoder pass reuses them; the
    attention is ``nn.MultiheadAttention``'s (sequence-first, no weights returned) op for op.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def _heads(self, x: Tensor) -> Tensor:
        """``[L, 1, C] -> [1, heads, L, C / heads]``."""
        heads = self.multihead_attn.num_heads
        return x.view(x.shape[0], heads, x.shape[2] // heads).transpose(0, 1)[None]

    def project_memory(self, memory: Tensor, key_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[1, heads, N, C / heads]`` of ``[N, 1, C]`` memory and its point encoding."""
        attn = self.multihead_attn
        _, w_k, w_v = attn.in_proj_weight.chunk(3)
        _, b_k, b_v = attn.in_proj_bias.chunk(3)
        return self._heads(F.linear(memory + key_pos, w_k, b_k)), self._heads(F.linear(memory, w_v, b_v))

    def forward(self, queries: Tensor, keys_values: tuple[Tensor, Tensor], blocked: Tensor,
                query_pos: Tensor) -> Tensor:
        """Sequence-first ``[Q, 1, C]`` queries, :meth:`project_memory`'s keys and values,
        ``blocked [Q, N]`` (True = masked)."""
        attn = self.multihead_attn
        w_q, _, _ = attn.in_proj_weight.chunk(3)
        b_q, _, _ = attn.in_proj_bias.chunk(3)
        q = self._heads(F.linear(queries + query_pos, w_q, b_q))
        bias = torch.zeros_like(blocked, dtype=q.dtype).masked_fill_(blocked, float("-inf"))
        attended = F.scaled_dot_product_attention(q, *keys_values, bias[None, None],
                                                  attn.dropout if self.training else 0.0)
        attended = attended.permute(2, 0, 1, 3).contiguous().view(queries.shape[0], queries.shape[2])
        attended = F.linear(attended, attn.out_proj.weight, attn.out_proj.bias).view(queries.shape)
        return self.norm(queries + self.dropout(attended))


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention among the queries."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, queries: Tensor, query_pos: Tensor) -> Tensor:
        query_key = queries + query_pos
        attended = self.self_attn(query_key, query_key, queries, need_weights=False)[0]
        return self.norm(queries + self.dropout(attended))


class FFNLayer(nn.Module):
    """Post-norm two-layer ReLU MLP with a residual."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, queries: Tensor) -> Tensor:
        update = self.linear2(self.dropout(torch.relu(self.linear1(queries))))
        return self.norm(queries + self.dropout(update))


def scatter_mean(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Row means of ``values`` grouped by ``index`` (``[N, C] -> [size, C]``; empty groups are 0)."""
    sums = values.new_zeros((size, values.shape[1])).index_add_(0, index, values)
    counts = torch.bincount(index, minlength=size).clamp_(min=1).to(values.dtype)
    return sums / counts[:, None]


BACKBONES = ("Res16UNet34C", "Res16UNet18B", "Res16UNet14A")


def build_backbone(config: Mask3DConfig, backend: str = "torch") -> nn.Module:
    """The sparse UNet named by ``config.backbone`` on ``backend`` (torch or minkowski); it reports
    its ``feature_channels``."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; known: {', '.join(BACKBONES)}")
    make = getattr(backbone_module, config.backbone)
    if config.backbone_width == 1.0:
        return make(config.in_channels, config.num_labels, backend=backend)
    if config.backbone != "Res16UNet14A":
        raise ValueError(f"backbone_width applies to Res16UNet14A only, not {config.backbone}")
    return make(config.in_channels, config.num_labels, width=config.backbone_width, backend=backend)


Pool = Callable[[Tensor, int], Tensor]   # (values on stride-s rows, s) -> values on stride-2s rows


class Mask3D(nn.Module):
    """Backbone + decoder. ``forward`` takes one voxelized cloud; ``decode`` takes backbone maps.

    ``backend`` is the backbone's sparse engine: ``torch`` (this package's) or ``minkowski``
    (MinkowskiEngine, optional); both have the same state_dict, and the decoder always works on
    this package's coordinate manager (pooling of the attention masks)."""

    def __init__(self, config: Mask3DConfig = Mask3DConfig(), backend: str = "torch"):
        super().__init__()
        self.config = config
        self.backend = backend
        dim = config.hidden_dim
        num_layer_sets = 1 if config.shared_decoder else config.num_decoders
        # Registration order = the official state_dict order.
        self.backbone = build_backbone(config, backend)
        sizes = self.backbone.feature_channels
        self.mask_features_head = PointwiseConv(sizes[-1], dim)
        self.query_projection = QueryProjection(dim)
        self.mask_embed_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.class_embed_head = nn.Linear(dim, config.num_classes)
        self.pos_enc = FourierPositionEncoding(dim, gauss_scale=config.gauss_scale)

        def per_level(make: Callable[[int], nn.Module]) -> nn.ModuleList:
            return nn.ModuleList(
                nn.ModuleList(make(level) for level in config.hlevels) for _ in range(num_layer_sets))

        heads, drop = config.num_heads, config.dropout
        self.cross_attention = per_level(lambda _: CrossAttentionLayer(dim, heads, drop))
        self.self_attention = per_level(lambda _: SelfAttentionLayer(dim, heads, drop))
        self.ffn_attention = per_level(lambda _: FFNLayer(dim, config.dim_feedforward, drop))
        self.lin_squeeze = per_level(lambda level: nn.Linear(sizes[level], dim))
        self.decoder_norm = nn.LayerNorm(dim)

    def train(self, mode: bool = True) -> "Mask3D":
        """As ``nn.Module.train``; with ``per_scene_norm`` the batch norms keep using the current
        scene's statistics in eval mode, leaving their stored running statistics untouched."""
        super().train(mode)
        for norm in self.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                scene_statistics = self.config.per_scene_norm and not mode
                if scene_statistics and not hasattr(norm, "_training_momentum"):
                    norm._training_momentum = norm.momentum
                    norm.momentum = 0.0          # running statistics stay as trained
                elif not scene_statistics and hasattr(norm, "_training_momentum"):
                    norm.momentum = norm.__dict__.pop("_training_momentum")
                norm.training = mode or scene_statistics
        return self

    def forward(self, voxel_coords: Tensor, features: Tensor, raw_xyz: Tensor, **decode_options) -> dict:
        """Run one cloud: ``voxel_coords [N, 3]`` int (stride-1 voxels), ``features [N, in_channels]``,
        ``raw_xyz [N, 3]`` (each voxel's representative point, metres). See :meth:`decode`."""
        levels = self.backbone_levels(voxel_coords, features)
        out = self.decode([level.feats for level in levels], levels[-1].manager.avg_pool, voxel_coords,
                          raw_xyz, **decode_options)
        out["backbone_features"] = levels
        return out

    def backbone_levels(self, voxel_coords: Tensor, features: Tensor) -> list:
        """The backbone's decoder-facing sparse maps, coarse (stride 16) to fine (stride 1)."""
        if voxel_coords.shape[0] == 0:
            raise DegenerateSceneError("the cloud has no voxels")
        x = SparseTensor(features, coords=voxel_coords)
        if self.backend == "minkowski":
            _, levels = self.backbone(to_minkowski(x))
            return [from_minkowski(level, x.manager) for level in levels]
        _, levels = self.backbone(x)
        return levels

    def decode(self, level_feats: Sequence[Tensor], pool: Pool, voxel_coords: Tensor, raw_xyz: Tensor, *,
               point2segment: Tensor | None = None, fps_idx: Tensor | None = None,
               attn_logits: Sequence[Tensor] | None = None, aux_masks: bool = True, debug: bool = False) -> dict:
        """Decoder on backbone maps ``level_feats`` (coarse to fine, the finest at stride 1).

        ``pool`` is the backbone's 2x2x2 average pooling between the rows of consecutive strides.
        ``point2segment [N]`` switches to segment-pooled mask features (``train_on_segments``).
        ``fps_idx`` replaces the query sampling and ``attn_logits`` (one ``[N_level, Q]`` tensor per
        step, rows in this model's level order) replace the predicted attention masks, so tests can
        isolate the rest. ``aux_masks=False`` leaves the full-resolution masks out of ``aux_outputs``
        (inference needs only their class logits). ``debug`` adds the intermediate tensors.

        The attention masks are the mask logits average-pooled to the attended level; pooling is
        linear, so they are computed as pooled mask features times the mask embeddings, at the
        level's resolution (the official model pools full-resolution logits: equal up to rounding).

        Returns ``pred_logits [Q, K+1]``, ``pred_masks [N, Q]`` (voxel logits), ``aux_outputs``
        (one dict per refinement step, predicted before that step), ``fps_idx``, ``sampled_coords``,
        and ``pred_segment_masks [S, Q]`` with segments.
        """
        cfg = self.config
        num_levels = len(level_feats)
        num_voxels = voxel_coords.shape[0]
        if num_voxels == 0:
            raise DegenerateSceneError("the cloud has no voxels")
        for level in cfg.hlevels:
            if level_feats[level].shape[0] == 1:
                raise DegenerateSceneError(
                    f"backbone level {level} (stride {2 ** (num_levels - 1 - level)}) has a single voxel; "
                    "cross-attention to one key is undefined in Mask3D (the official model raises too)")

        level_xyz = self._level_coordinates(raw_xyz, pool, num_levels)
        level_pe = [level_encoding(self.pos_enc, xyz)[:, None] for xyz in level_xyz]

        if fps_idx is None:
            fps_idx = furthest_point_sample(voxel_coords, min(cfg.num_queries, num_voxels))
        fps_idx = fps_idx.to(device=raw_xyz.device, dtype=torch.int64)
        sampled_coords = raw_xyz[fps_idx]
        query_pe = self.pos_enc(sampled_coords, raw_xyz.min(0).values, raw_xyz.max(0).values)
        query_pos = self.query_projection(query_pe.T[None].to(self.class_embed_head.weight.dtype))
        query_pos = query_pos.permute(2, 0, 1)                 # [Q, 1, C], sequence first
        queries = torch.zeros_like(query_pos)

        mask_features = self.mask_features_head(level_feats[-1])
        segment_features = None
        if point2segment is not None:
            num_segments = int(point2segment.max()) + 1
            segment_features = scatter_mean(mask_features, point2segment, num_segments)
        level_mask_features = self._level_mask_features(mask_features, segment_features, point2segment, pool,
                                                        num_levels)

        aux_outputs, step_attn_logits = [], []
        keys_values = {}    # (layer set, level): the memory's keys and values, shared by the decoder passes
        for decoder_pass in range(cfg.num_decoders):
            layer_set = 0 if cfg.shared_decoder else decoder_pass
            for i, level in enumerate(cfg.hlevels):
                step = len(aux_outputs)
                prediction, mask_embed = self._predict(queries, mask_features, segment_features, point2segment,
                                                       masks=aux_masks)
                if attn_logits is None:
                    pooled = (level_mask_features[level] @ mask_embed.T.float()).detach()
                else:
                    pooled = attn_logits[step].to(device=mask_embed.device, dtype=torch.float32)
                step_attn_logits.append(pooled)
                blocked = pooled.sigmoid() < 0.5                  # [N_level, Q]
                blocked[:, blocked.all(0)] = False                # a fully blocked query sees every key
                cross_attention = self.cross_attention[layer_set][i]
                if (layer_set, i) not in keys_values:
                    memory = self.lin_squeeze[layer_set][i](level_feats[level][:, None])
                    keys_values[layer_set, i] = cross_attention.project_memory(memory, level_pe[level].to(memory.dtype))
                queries = cross_attention(queries, keys_values[layer_set, i], blocked.T, query_pos)
                queries = self.self_attention[layer_set][i](queries, query_pos)
                queries = self.ffn_attention[layer_set][i](queries)
                aux_outputs.append(prediction)

        out = self._predict(queries, mask_features, segment_features, point2segment)[0]
        out.update(aux_outputs=aux_outputs, fps_idx=fps_idx, sampled_coords=sampled_coords)
        if debug:
            out.update(level_xyz=level_xyz, query_pe=query_pe, query_pos=query_pos[:, 0],
                       mask_features=mask_features, attn_logits=step_attn_logits)
        return out

    def _predict(self, queries: Tensor, mask_features: Tensor, segment_features: Tensor | None,
                 point2segment: Tensor | None, masks: bool = True) -> tuple[dict, Tensor]:
        """The mask module: class logits and (with ``masks``) voxel mask logits of the current
        queries, and the mask embeddings ``[Q, C]``."""
        normed = self.decoder_norm(queries.transpose(0, 1))        # [1, Q, C]
        mask_embed = self.mask_embed_head(normed)[0]
        prediction = {"pred_logits": self.class_embed_head(normed)[0]}
        if not masks:
            return prediction, mask_embed
        if segment_features is None:
            prediction["pred_masks"] = mask_features @ mask_embed.T
        else:
            segment_masks = segment_features @ mask_embed.T
            prediction["pred_segment_masks"] = segment_masks
            prediction["pred_masks"] = segment_masks[point2segment]
        return prediction, mask_embed

    @staticmethod
    def _level_mask_features(mask_features: Tensor, segment_features: Tensor | None, point2segment: Tensor | None,
                             pool: Pool, num_levels: int) -> list[Tensor]:
        """The voxels' mask features average-pooled to every level, coarse first: times the mask
        embeddings they give the pooled mask logits (float32, as the official pooling of half-precision
        logits). With segments, each voxel carries its segment's."""
        pooled = [(mask_features if segment_features is None else segment_features[point2segment]).float()]
        for s in range(num_levels - 1):
            pooled.append(pool(pooled[-1], 2 ** s))
        return pooled[::-1]

    def _level_coordinates(self, raw_xyz: Tensor, pool: Pool, num_levels: int) -> list[Tensor]:
        """Each level's point positions: repeated average pooling of the voxels' xyz (coarse first)."""
        with torch.no_grad():
            xyz = [raw_xyz.float()]
            for s in range(num_levels - 1):
                xyz.append(pool(xyz[-1], 2 ** s))
        return xyz[::-1]
