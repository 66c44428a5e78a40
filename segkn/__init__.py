"""segkn: semantic segmentation with Kernel Normalized convolutional networks."""

__version__ = "0.1.0"
