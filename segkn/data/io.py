"""Reading images and label maps from disk into the arrays the datasets return.

A file that is cut short (an interrupted copy or download) is refused like any unreadable file rather
than decoded into an image with made-up pixels: JPEG files must hold their end-of-image marker after
the image data, PNG files their IEND chunk, and what the decoders report (a truncated BMP or TIFF, a
JPEG whose data libjpeg finds damaged) goes into the error instead of onto the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from segkn.atomic import atomic_open
from segkn.data.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "decoder_words", "read_image", "read_mask", "stderr_captured", "write_png"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # image files segkn reads, lower case

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
# libjpeg warnings after which pixels are missing or made up (others, such as extraneous bytes between
# segments, leave the image whole)
_JPEG_DAMAGE = ("premature end", "bad huffman code", "instead of rst")
_STDERR_LOCK = threading.Lock()  # one redirection of the process's stderr at a time


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset of a JPEG's first start-of-scan marker, found by walking its header segments; None if absent."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:  # bytes where a marker belongs: skip them, as libjpeg does
            i = data.find(b"\xff", i)
            if i < 0:
                return None
            continue
        marker = data[i + 1]
        if marker == 0xDA:
            return i
        if marker == 0xD9:
            return None
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # fill byte, or a marker alone
            i += 1 if marker == 0xFF else 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _cut_short(data: bytes) -> str | None:
    """Why the bytes of an image file are incomplete (its format's end is missing), or None."""
    if data[:2] == b"\xff\xd8":
        start = _jpeg_scan_start(data)
        # the end-of-image marker must follow the image data (which cannot hold FF D9); bytes after it may
        if start is None or data.rfind(b"\xff\xd9") < start:
            return "truncated: no JPEG end-of-image marker after the image data"
    elif data[:8] == _PNG_SIGNATURE and data.rfind(_PNG_END) < 0:
        return "truncated: no PNG IEND chunk at its end"
    return None


@contextlib.contextmanager
def stderr_captured() -> Iterator[list[str]]:
    """Keep what C libraries write to the process's stderr in the block; the list gets it at the end."""
    captured: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to redirect
            yield captured
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace").strip())


def decoder_words(line: str) -> str:
    """A decoder's message without OpenCV's log prefix and source location."""
    found = re.search(r"error: \(-?\d+:[^)]*\) (.*?)(?: in function .*)?$", line)
    return found.group(1) if found else re.sub(r"^\[[^\]]*\]\s+global\s+\S+\s+", "", line)


def _read_bytes(path: Path, what: str) -> bytes:
    """The bytes of an image or mask file; DatasetError if it is missing, unreadable, empty or cut short."""
    if not path.is_file():
        raise DatasetError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err.strerror or err}") from None
    reason = _cut_short(data) if data else "the file is empty"
    if reason:
        raise DatasetError(
            f"cannot read {what} {path}: the file is corrupt or not an image ({reason}); replace or remove it"
        )
    return data


def _decode(data: bytes, path: Path) -> np.ndarray:
    """The stored pixels of an image file's bytes; DatasetError in the decoder's own words if it fails."""
    failure = ""
    with stderr_captured() as said:
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:
            image, failure = None, str(err)
    lines = [decoder_words(line.strip()) for line in "\n".join([*said, failure]).splitlines() if line.strip()]
    damage = [line for line in lines if any(word in line.lower() for word in _JPEG_DAMAGE)]
    if image is None or image.size == 0 or damage:
        detail = f" ({(damage or lines)[0]})" if lines else ""
        raise DatasetError(
            f"cannot read image {path}: the file is corrupt or not an image{detail}; replace or remove it"
        )
    for line in lines:
        log.debug("%s: %s", path, line)
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (grey expanded, alpha dropped, 16 bit scaled)."""
    path = Path(path)
    # IMREAD_UNCHANGED keeps the stored pixels as they are (no EXIF rotation), so images stay aligned
    # with their masks, which PIL reads without rotation too.
    image = _decode(_read_bytes(path, "image"), path)
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
    data = _read_bytes(path, "mask")
    try:
        with Image.open(io.BytesIO(data)) as img:
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
