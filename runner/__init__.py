"""detbench: benchmark TensorFlow 2 object-detection SavedModels for COCO accuracy and speed."""

__version__ = "0.1.0"
