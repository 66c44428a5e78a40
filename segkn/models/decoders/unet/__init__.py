"""U-Net."""

from segkn.models.decoders.unet.decoder import UNetDecoder
from segkn.models.decoders.unet.model import UNet

__all__ = ["UNet", "UNetDecoder"]
