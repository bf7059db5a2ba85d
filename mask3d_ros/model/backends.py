"""Optional MinkowskiEngine backend: the same Res16UNet built from ME layers, same state_dict.

Used to cross-check the pure-PyTorch engine and to compare speed. ME 0.5.4 is a CPU/CUDA C++
extension built from source (see `INSTALL_HINT`); it predates Python 3.10, so the
`collections.Sequence` alias it imports is restored first.
"""
from __future__ import annotations

import collections
import collections.abc
import warnings

import torch

from mask3d_ros.model.layers import TORCH_KIT, LayerKit
from mask3d_ros.model.sparse import CoordinateManager, SparseTensor

INSTALL_HINT = (
    "apt-get install -y libopenblas-dev && pip install ninja && "
    "SETUPTOOLS_USE_DISTUTILS=stdlib pip install --no-build-isolation minkowskiengine==0.5.4"
)


def import_minkowski():
    """Import MinkowskiEngine, or raise ImportError naming the install command."""
    if not hasattr(collections, "Sequence"):  # ME does `from collections import Sequence`
        collections.Sequence = collections.abc.Sequence
    try:
        with warnings.catch_warnings():  # "compiled with CPU_ONLY flag" on every CPU build
            warnings.simplefilter("ignore", UserWarning)
            import MinkowskiEngine  # noqa: PLC0415 - the optional backend
    except ImportError as error:
        raise ImportError(f"the 'minkowski' backend needs MinkowskiEngine 0.5.4; install it with:"
                          f" {INSTALL_HINT}") from error
    return MinkowskiEngine


def minkowski_version() -> str | None:
    """MinkowskiEngine's version when it imports, else None."""
    try:
        return str(getattr(import_minkowski(), "__version__", "?"))
    except ImportError:
        return None


def minkowski_kit() -> LayerKit:
    ME = import_minkowski()

    def conv(in_channels, out_channels, kernel_size, stride=1, bias=False):
        return ME.MinkowskiConvolution(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                       bias=bias, dimension=3)

    def conv_transpose(in_channels, out_channels, kernel_size=2, stride=2, bias=False):
        return ME.MinkowskiConvolutionTranspose(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                                bias=bias, dimension=3)

    def batch_norm(channels, momentum=0.1):
        return ME.MinkowskiBatchNorm(channels, momentum=momentum)

    return LayerKit(conv=conv, conv_transpose=conv_transpose, batch_norm=batch_norm,
                    relu=ME.MinkowskiFunctional.relu, cat=lambda tensors: ME.cat(*tensors))


def to_minkowski(x: SparseTensor):
    """The stride-1 `SparseTensor` as an ME tensor of batch 0 (same row order).

    Its coordinate manager gets torch's thread count: ME otherwise resets the shared OpenMP pool
    to OMP_NUM_THREADS or the CPU count.
    """
    ME = import_minkowski()
    batch = torch.zeros_like(x.coords[:, :1])
    manager = ME.CoordinateManager(D=3, num_threads=torch.get_num_threads())
    return ME.SparseTensor(x.feats, coordinates=torch.cat([batch, x.coords], dim=1).int(), coordinate_manager=manager)


def from_minkowski(tensor, manager: CoordinateManager) -> SparseTensor:
    """An ME tensor's features reordered onto `manager`'s rows of the same tensor stride."""
    stride = tensor.tensor_stride[0]
    rows = manager.rows(tensor.C[:, 1:].long(), stride)
    feats = tensor.F.new_empty(tensor.F.shape).index_copy_(0, rows, tensor.F)
    return SparseTensor(feats, stride=stride, manager=manager)


def layer_kit(backend: str) -> LayerKit:
    """The kit of ``backend``: "torch" (the default engine) or "minkowski"."""
    if backend == "torch":
        return TORCH_KIT
    if backend == "minkowski":
        return minkowski_kit()
    raise ValueError(f"unknown sparse backend {backend!r} (expected 'torch' or 'minkowski')")
