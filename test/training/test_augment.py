"""Training augmentations: turns about the table normal keep the table a plane with that normal."""
import numpy as np

from mask3d_ros.training.augment import AugmentConfig, augment_cloud, table_normal


def _tilted_table(rng):
    """A tilted plane (the table in a camera frame) with a box of points above it."""
    normal = np.array([0.0, -np.cos(0.6), -np.sin(0.6)])
    basis = np.linalg.svd(normal[None])[2][1:]
    table = rng.uniform(-0.5, 0.5, (3000, 2)) @ basis + [0, 0, 1.0]
    objects = rng.uniform(-0.1, 0.1, (500, 2)) @ basis + [0, 0, 1.0] + normal * rng.uniform(0.02, 0.1, (500, 1))
    return np.concatenate([table, objects]).astype(np.float32), normal, np.arange(3500) < 3000


def test_table_normal_finds_the_plane():
    xyz, normal, table = _tilted_table(np.random.default_rng(0))
    assert abs(abs(table_normal(xyz, table) @ normal) - 1) < 1e-6
    assert table_normal(xyz, np.zeros(len(xyz), bool)) is None


def test_up_rotation_turns_about_the_table_normal_only():
    rng = np.random.default_rng(1)
    xyz, normal, table = _tilted_table(rng)
    rgb = np.full((len(xyz), 3), 100, np.uint8)
    config = AugmentConfig(scale=0.0, tilt=0.0, roll=0.0, mirror_x=False, shift=0.0, keep_fraction=(1.0, 1.0),
                           up_rotation=np.pi)
    moved, _, keep = augment_cloud(xyz, rgb, rng, config, up=normal)
    assert len(keep) == len(xyz)
    assert abs(abs(table_normal(moved, table) @ normal) - 1) < 1e-5  # the table keeps its normal
    assert np.abs(moved - xyz).max() > 0.05  # but the points moved about it
    heights = (xyz - xyz.mean(0)) @ normal
    np.testing.assert_allclose((moved - moved.mean(0)) @ normal, heights, atol=1e-5)
