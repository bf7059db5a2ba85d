"""Mask3D in PyTorch: the sparse engine and layers, backbone, decoder, voxelization, checkpoints,
post-processing and the :class:`~mask3d_ros.model.segmenter.Segmenter` that runs them. Torch and
numpy only: no ROS."""
