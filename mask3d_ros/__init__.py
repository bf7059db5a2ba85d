"""mask3d_ros: Mask3D 3D instance segmentation as a ROS 2 node.

Layout (each folder imports only from the ones listed before it):
``model`` (torch only), ``data``, ``training``, ``evaluation`` (no ROS), ``ros`` (the rclpy node),
``tools`` (console scripts).

The generated interface modules (``mask3d_ros.msg``) are built by rosidl into the install
prefix, while the Python sources may live elsewhere (a source checkout, an editable install).
``extend_path`` lets both halves of the package be found under one name.

The public functions are importable from here, ``from mask3d_ros import read_points,
create_cloud, voxelize, Segmenter``; they load on first use, so that importing a subpackage does
not pull in ROS or torch.
"""
from importlib import import_module
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"

_PUBLIC = {
    "read_points": "mask3d_ros.ros.cloud",
    "create_cloud": "mask3d_ros.ros.cloud",
    "voxelize": "mask3d_ros.model.voxel",
    "Segmenter": "mask3d_ros.model.segmenter",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mask3d_ros' has no attribute {name!r}")
