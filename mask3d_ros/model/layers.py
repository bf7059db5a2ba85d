"""The layer kit: one sparse backend's constructors behind MinkowskiEngine's signatures.

Models are built from a kit, so the same module tree (and state_dict) runs on the pure-PyTorch
engine of ``mask3d_ros.model.sparse`` or on MinkowskiEngine (``mask3d_ros.model.backends``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from mask3d_ros.model import sparse


@dataclass(frozen=True)
class LayerKit:
    """Constructors and functions of one sparse backend, with MinkowskiEngine's signatures."""

    conv: Callable[..., nn.Module]  # (in, out, kernel_size, stride=1, bias=False)
    conv_transpose: Callable[..., nn.Module]  # (in, out, kernel_size=2, stride=2, bias=False)
    batch_norm: Callable[..., nn.Module]  # (channels, momentum=...)
    relu: Callable
    cat: Callable  # (list of tensors on the same rows) -> channel concatenation in that order


TORCH_KIT = LayerKit(
    conv=sparse.SparseConv,
    conv_transpose=sparse.SparseConvTranspose,
    batch_norm=sparse.SparseBatchNorm,
    relu=sparse.relu,
    cat=sparse.cat,
)
