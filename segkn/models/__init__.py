"""Models: KNResNet and ResNet encoders, DeepLabV3 / DeepLabV3+ / U-Net decoders, build_model."""

from segkn.models.factory import ARCHS, ENCODERS, build_encoder, build_model, count_parameters
from segkn.models.knresnet import KNResNet, KNResNetEncoder, load_official_weights, register_smp_encoders

__all__ = [
    "ARCHS",
    "ENCODERS",
    "KNResNet",
    "KNResNetEncoder",
    "build_encoder",
    "build_model",
    "count_parameters",
    "load_official_weights",
    "register_smp_encoders",
]
