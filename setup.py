"""pip / setuptools entry point; metadata and console scripts live in setup.cfg.

colcon builds this package with ament_cmake (CMakeLists.txt) because it generates msg/
interfaces; setup.py serves pip installs, including the editable one scripts/setup_env.sh makes.
"""
from glob import glob
from pathlib import Path

from setuptools import setup

PACKAGE = "mask3d_ros"

setup(
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*")),
        (f"share/{PACKAGE}/config", [f for f in glob("config/*") if Path(f).is_file()]),
        (f"share/{PACKAGE}/config/train", glob("config/train/*")),
        (f"share/{PACKAGE}/model", glob("model/*")),
    ],
)
