"""``python -m mask3d_ros.bench``: the same as ``mask3d-ros-bench``."""
import sys

from mask3d_ros.bench import main

sys.exit(main())
