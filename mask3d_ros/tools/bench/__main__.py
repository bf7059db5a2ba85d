"""``python -m mask3d_ros.tools.bench``: the same as ``mask3d-ros-bench``."""
import sys

from mask3d_ros.tools.bench import main

sys.exit(main())
