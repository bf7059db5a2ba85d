"""``python -m mask3d_ros.node``: the node's documented module entry point (see ``mask3d_ros.ros.node``)."""
import sys

from mask3d_ros.ros.node import main

if __name__ == "__main__":
    sys.exit(main())
