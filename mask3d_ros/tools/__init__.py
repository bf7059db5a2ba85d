"""The console scripts (segment, eval, train, demo, soak, bench, bag make/play/record) and the library
modules they share: ``cli`` (argument and command-line helpers, no ROS), ``harness`` (the node as a
process, ROS isolation, its topics), ``bag`` (rosbag2 files), ``replay`` (playing and recording bags
in the live graph), ``scene_bags`` (bags of synthetic or file frames) and ``recorded`` (reading and
scoring what the node answered). A console script imports library modules, never another script."""
