"""Fourier positional encoding of 3D points (Mask3D's ``PositionEmbeddingCoordsSine``, fourier).

Points are first normalised per axis to [0, 1] by a caller-given range (Mask3D uses each level's
own min/max), scaled by 2π and projected by the random matrix ``gauss_B [3, dim/2]``. The matrix
is drawn once per training run and stored in the checkpoint (``pos_enc.gauss_B``), so it is a
buffer that must be loaded, never re-drawn at inference.

Deviation from the official code: an axis with zero extent (``hi == lo``) divides by zero there
and yields NaN; here the extent is replaced by 1 on such axes, which maps every point to 0 on that
axis. All non-degenerate ranges give bit-identical results.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class FourierPositionEncoding(nn.Module):
    """``forward(xyz [N, 3], lo [3], hi [3]) -> [N, dim]`` laid out as ``[sin | cos]``."""

    def __init__(self, dim: int = 128, in_dim: int = 3, gauss_scale: float = 1.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"positional encoding dim must be even, got {dim}")
        self.register_buffer("gauss_B", torch.randn(in_dim, dim // 2) * gauss_scale)

    def forward(self, xyz: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        with torch.autocast(xyz.device.type, enabled=False):
            xyz, lo, hi = xyz.float(), lo.float(), hi.float()
            extent = hi - lo
            extent = torch.where(extent > 0, extent, torch.ones_like(extent))
            unit = (xyz - lo) / extent
            projected = torch.mm(unit * (2 * math.pi), self.gauss_B.float())
            return torch.cat([projected.sin(), projected.cos()], dim=1)


def level_encoding(pos_enc: FourierPositionEncoding, xyz: torch.Tensor) -> torch.Tensor:
    """Encoding of one level's points, normalised by that level's own min/max."""
    return pos_enc(xyz, xyz.min(0).values, xyz.max(0).values)
