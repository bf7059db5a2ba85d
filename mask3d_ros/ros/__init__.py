"""The rclpy shell around the model: the node, its parameters, poses, rolling map, outputs,
markers, diagnostics, inference worker and the PointCloud2 codec."""
