"""Training Mask3D on labelled scenes: the loop, the official losses and matcher, augmentation and
copy-paste scene composition. No ROS."""
