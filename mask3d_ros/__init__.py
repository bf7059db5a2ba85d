"""mask3d_ros: Mask3D 3D instance segmentation as a ROS 2 node.

The generated interface modules (``mask3d_ros.msg``) are built by rosidl into the install
prefix, while the Python sources may live elsewhere (a source checkout, an editable install).
``extend_path`` lets both halves of the package be found under one name.
"""
import os
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

# OpenMP threads that spin while they wait make every torch op 20-40x slower when another process
# holds a core (measured here: one inference 30-50 s instead of ~1 s). Passive waiting costs
# little on an idle machine. Effective when mask3d_ros is imported before torch (entry points).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
__version__ = "0.1.0"
