"""Segmentation architectures on smp-contract encoders, one folder each (decoder.py + model.py)."""

from segkn.models.decoders.deeplabv3 import DeepLabV3, DeepLabV3Plus
from segkn.models.decoders.unet import UNet

__all__ = ["DeepLabV3", "DeepLabV3Plus", "UNet"]
