"""mask3d_ros: Mask3D 3D instance segmentation as a ROS 2 node.

The generated interface modules (``mask3d_ros.msg``) are built by rosidl into the install
prefix, while the Python sources may live elsewhere (a source checkout, an editable install).
``extend_path`` lets both halves of the package be found under one name.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
