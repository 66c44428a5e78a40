"""The segkn version: written once, as ``version`` in pyproject.toml, and read from the package metadata."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The installed segkn's version (``0+unknown`` for a source tree that was never installed)."""
    try:
        return metadata.version("segkn")
    except metadata.PackageNotFoundError:
        return "0+unknown"
