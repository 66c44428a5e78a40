"""Reading images and label maps from disk into the arrays the datasets return."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segkn.atomic import atomic_open
from segkn.data.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_mask", "write_png"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # image files segkn reads, lower case


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (grey expanded, alpha dropped, 16 bit scaled)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image not found: {path}")
    # IMREAD_UNCHANGED keeps the stored pixels as they are (no EXIF rotation), so images stay aligned
    # with their masks, which PIL reads without rotation too.
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DatasetError(
            f"cannot read image {path}: the file is corrupt or not an image; replace or remove it"
        )
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(
            f"unsupported pixel type {image.dtype} in image {path}; convert it to an 8-bit RGB image"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise DatasetError(f"unsupported image layout {image.shape} in {path}; expected grey, RGB or RGBA")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label map (palette, grey or 16-bit PNG) as an H x W int64 array of class indices."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            # Palette ('P') images give their palette indices, not colours: those are the labels.
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot read mask {path}: {err}; replace or remove the file") from err
    if mode in ("P", "L", "1") or mode.startswith("I"):
        if array.ndim != 2:
            raise DatasetError(f"unsupported mask layout {array.shape} in {path}")
        return array.astype(np.int64)
    if mode == "LA":
        return array[:, :, 0].astype(np.int64)
    if mode in ("RGB", "RGBA"):
        rgb = array[:, :, :3]
        # A grey label map saved as RGB (three equal channels) is still a label map.
        if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
            return rgb[:, :, 0].astype(np.int64)
        raise DatasetError(
            f"mask {path} is a colour ({mode}) image; masks must be label maps "
            "(a palette or greyscale PNG whose pixel values are class indices, 255 = ignore)"
        )
    raise DatasetError(f"unsupported mask mode {mode!r} in {path}; save it as a palette or greyscale PNG")


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a label map (H x W, 8 or 16 bit) or an RGB image (H x W x 3 uint8) as PNG, atomically.

    Label maps with values above 255 are stored as 16-bit grey. The file appears whole or not at all.
    """
    path = Path(path)
    if array.ndim == 3:
        if array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected H x W x 3 uint8 RGB, got {array.shape} {array.dtype}")
        pixels = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 2:
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{path}: label values must lie in 0..65535 to be stored as PNG")
        wide = array.size and array.max() > 255
        pixels = array.astype(np.uint16 if wide else np.uint8, copy=False)
    else:
        raise ValueError(f"{path}: expected an H x W label map or an H x W x 3 image, got {array.shape}")
    ok, png = cv2.imencode(".png", pixels)
    if not ok:
        raise OSError(f"{path}: could not be encoded as PNG")
    with atomic_open(path, "wb") as f:
        f.write(png.tobytes())
