"""ScanNet-benchmark AP, the classical RANSAC + DBSCAN baseline, and the conversion of results
into scored predictions. No ROS."""
