"""segkn: semantic segmentation with Kernel Normalized convolutional networks."""

__version__ = "0.1.0"

from segkn.models import build_model, register_smp_encoders  # noqa: E402

# `import segkn` makes knresnet18|34|50 available as encoder_name in every smp architecture.
register_smp_encoders()

__all__ = ["Segmenter", "__version__", "build_model"]


def __getattr__(name: str):
    # `segkn.Segmenter` without importing the inference stack (data, engine) on `import segkn`
    if name == "Segmenter":
        from segkn.inference import Segmenter

        return Segmenter
    raise AttributeError(f"module 'segkn' has no attribute {name!r}")
