"""Point data without ROS: PCD/PLY files, the mOSD and ScanNet-style datasets, synthetic tabletop
scenes and colour fields."""
