"""DeepLabV3 and DeepLabV3+ (ASPP decoders)."""

from segkn.models.decoders.deeplabv3.decoder import ASPP, DeepLabV3Decoder, DeepLabV3PlusDecoder
from segkn.models.decoders.deeplabv3.model import DeepLabV3, DeepLabV3Plus

__all__ = ["ASPP", "DeepLabV3", "DeepLabV3Decoder", "DeepLabV3Plus", "DeepLabV3PlusDecoder"]
