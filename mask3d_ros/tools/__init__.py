"""The console scripts (segment, eval, train, demo, soak, bench, bag make/play/record), sharing
``harness`` (node process, ROS isolation, topics, argument helpers) and ``bag`` (rosbag2 I/O)."""
