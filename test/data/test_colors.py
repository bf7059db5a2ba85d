"""Colour and intensity fields of point records: packed rgb/rgba in both byte orders, channels of any type."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask3d_ros.data.colors import colors_from_points, intensity_from_points, pack_rgb, unpack_rgb


@given(st.lists(st.tuples(*[st.integers(0, 255)] * 4), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_pack_unpack_rgb(rgba):
    rgba = np.array(rgba, np.uint8)
    for dtype in (np.float32, np.uint32):
        packed = pack_rgb(rgba, dtype)
        assert packed.dtype == dtype
        assert np.array_equal(unpack_rgb(packed), rgba[:, :3])  # NaN bit patterns survive (alpha 0xFF)
        assert np.array_equal(unpack_rgb(pack_rgb(rgba[:, :3], dtype)), rgba[:, :3])
    bits = packed.view(np.uint32)
    assert np.array_equal(bits, (rgba[:, 3].astype(np.uint32) << 24) | (rgba[:, 0].astype(np.uint32) << 16)
                          | (rgba[:, 1].astype(np.uint32) << 8) | rgba[:, 2])


def test_unpack_rgb_known_values_and_byte_orders():
    assert unpack_rgb(np.array([0x00FF8001], np.uint32)).tolist() == [[255, 128, 1]]
    assert unpack_rgb(np.array([0x00FF8001], ">u4")).tolist() == [[255, 128, 1]]
    assert unpack_rgb(np.array([0x00FF8001], np.uint32).view(np.float32).astype(">f4")).tolist() == [[255, 128, 1]]
    with pytest.raises(ValueError, match="float64"):
        unpack_rgb(np.zeros(2, np.float64))
    with pytest.raises(ValueError, match="0..255"):
        pack_rgb([[256, 0, 0]])


@pytest.mark.parametrize(("dtype", "values", "expected"), [
    ("u1", [0, 128, 255], [0, 128, 255]),
    ("u2", [0, 32896, 65535], [0, 128, 255]),
    ("f4", [0.0, 0.5, 1.0], [0, 128, 255]),
    ("f4", [0.0, 128.0, 300.0], [0, 128, 255]),
    ("i4", [-5, 128, 999], [0, 128, 255]),
])
def test_colour_channels_of_any_type(dtype, values, expected):
    points = np.zeros(3, [("r", dtype), ("g", dtype), ("b", dtype)])
    for name in "rgb":
        points[name] = values
    assert colors_from_points(points)[:, 0].tolist() == expected
    assert colors_from_points(points, keep=[2, 0])[:, 2].tolist() == [expected[2], expected[0]]


def test_intensity_of_any_type_and_absent():
    for code in ("u1", "u2", "f4", "f8", "i4"):
        assert intensity_from_points(np.ones(2, [("intensity", code)])).dtype == np.float32
    assert intensity_from_points(np.ones(2, [("x", "f4")])) is None
    assert colors_from_points(np.ones(2, [("x", "f4")])) is None
