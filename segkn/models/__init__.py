"""Models: KNResNet and ResNet encoders, DeepLabV3 / DeepLabV3+ / U-Net decoders, build_model."""

from segkn.models.factory import (
    ARCHS,
    ENCODERS,
    build_encoder,
    build_model,
    count_parameters,
    resolve_model_config,
)
from segkn.models.knresnet import KNResNet, KNResNetEncoder, register_smp_encoders
from segkn.models.registry import default_norm
from segkn.models.weights import WeightsError, load_official_weights, load_torchvision_weights

__all__ = [
    "ARCHS",
    "ENCODERS",
    "KNResNet",
    "KNResNetEncoder",
    "WeightsError",
    "build_encoder",
    "build_model",
    "count_parameters",
    "default_norm",
    "load_official_weights",
    "load_torchvision_weights",
    "register_smp_encoders",
    "resolve_model_config",
]
