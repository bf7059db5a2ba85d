"""Point colours and intensities from numpy point records, in the PCL/ROS conventions.

Packed ``rgb``/``rgba`` is 0xAARRGGBB stored as float32 or uint32; separate channels may be named
r/g/b or red/green/blue. Shared by the PointCloud2 codec (``mask3d_ros.ros.cloud``) and the point
file readers, so the offline tools decode colour without ROS.
"""
from __future__ import annotations

import numpy as np

PACKED_COLOUR_FIELDS = ("rgb", "rgba")
CHANNEL_COLOUR_FIELDS = (("r", "g", "b"), ("red", "green", "blue"))


def _uint32_bits(values: np.ndarray) -> np.ndarray:
    """Reinterpret packed colours as uint32 without arithmetic (NaN payloads stay intact)."""
    if values.dtype.itemsize != 4 or values.dtype.kind not in "fiu":
        raise ValueError(f"packed colours must be float32, uint32 or int32, got {values.dtype}")
    return values.view(np.dtype(np.uint32).newbyteorder(values.dtype.byteorder))


def unpack_rgb(values) -> np.ndarray:
    """(..., 3) uint8 r, g, b from packed ``rgb``/``rgba`` values (0xAARRGGBB, float32 or uint32)."""
    packed = _uint32_bits(np.asarray(values))
    rgb = np.empty(packed.shape + (3,), np.uint8)
    rgb[..., 0] = packed >> 16  # the uint8 store keeps the low byte
    rgb[..., 1] = packed >> 8
    rgb[..., 2] = packed
    return rgb


def pack_rgb(rgb, dtype=np.float32) -> np.ndarray:
    """Packed 0xAARRGGBB colours from (..., 3) or (..., 4) integers in 0..255; alpha defaults to 0.

    ``dtype`` float32 gives the PCL/RViz ``rgb`` convention (the same bits, reinterpreted).
    """
    channels = np.asarray(rgb)
    if channels.shape[-1:] not in ((3,), (4,)) or channels.dtype.kind not in "iu":
        raise ValueError(f"pack_rgb needs (..., 3) or (..., 4) integers, got {channels.dtype} {channels.shape}")
    if channels.size and (channels.min() < 0 or channels.max() > 255):
        raise ValueError("colour channels must lie in 0..255")
    channels = channels.astype(np.uint32)
    packed = (channels[..., 0] << 16) | (channels[..., 1] << 8) | channels[..., 2]
    if channels.shape[-1] == 4:
        packed |= channels[..., 3] << 24
    target = np.dtype(dtype)
    if target not in (np.dtype(np.float32), np.dtype(np.uint32)):
        raise ValueError(f"pack_rgb packs into float32 or uint32, not {target}")
    return packed.view(target)


def _channel_as_uint8(values: np.ndarray) -> np.ndarray:
    """One colour channel to uint8: floats in [0, 1] are scaled, wider unsigned ints rescaled."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "f":
        finite = np.nan_to_num(values.astype(np.float64), nan=0.0)
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.rint(finite * scale), 0, 255).astype(np.uint8)
    if values.dtype.kind == "u":
        return (values.astype(np.float64) * (255.0 / np.iinfo(values.dtype).max)).round().astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def take_field(points: np.ndarray, name: str, keep) -> np.ndarray:
    """``points[name]``, of the points selected by ``keep`` (None: all)."""
    values = points[name]
    return values if keep is None else values[keep]


def colors_from_points(points: np.ndarray, keep=None) -> np.ndarray | None:
    """(..., 3) uint8 colours from packed ``rgb``/``rgba`` or r/g/b (red/green/blue) fields.

    ``keep`` (boolean mask or indices) selects points before conversion, which is cheaper than
    ``points[keep]`` on wide records. Returns None when the points carry no colour.
    """
    names = points.dtype.names
    for name in PACKED_COLOUR_FIELDS:
        if name in names:
            return unpack_rgb(take_field(points, name, keep))
    for channel_names in CHANNEL_COLOUR_FIELDS:
        if all(name in names for name in channel_names):
            return np.stack([_channel_as_uint8(take_field(points, name, keep)) for name in channel_names], axis=-1)
    return None


def intensity_from_points(points: np.ndarray, keep=None) -> np.ndarray | None:
    """``intensity`` as float32 whatever its stored type (no rescaling); None when absent."""
    if "intensity" not in points.dtype.names:
        return None
    return take_field(points, "intensity", keep).astype(np.float32)
