"""segkn: semantic segmentation with Kernel Normalized convolutional networks."""

import os

# albumentations asks pypi.org for a newer version on import unless told not to: segkn never makes a
# network request of its own accord (offline and private machines), and a user may still set it to 0
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segkn.models import build_model, register_smp_encoders  # noqa: E402

# `import segkn` makes knresnet18|34|50 available as encoder_name in every smp architecture.
register_smp_encoders()

__all__ = ["Segmenter", "__version__", "build_model"]


def __getattr__(name: str):
    # `segkn.Segmenter` without importing the inference stack (data, engine) on `import segkn`
    if name == "Segmenter":
        from segkn.inference import Segmenter

        return Segmenter
    # the version is written once, in pyproject.toml, and read from the installed package's metadata
    if name == "__version__":
        from segkn.version import package_version

        return package_version()
    raise AttributeError(f"module 'segkn' has no attribute {name!r}")
