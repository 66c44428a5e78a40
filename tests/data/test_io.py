from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segkn.data import DatasetError, read_image, read_mask
from tests.data.builders import write_palette_png


def test_read_image_gives_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (4, 5, 3)
    np.testing.assert_array_equal(image, rgb)


def test_read_image_grey_rgba_and_16_bit(tmp_path: Path) -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))

    bgra = np.zeros((4, 5, 4), dtype=np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 7  # red, nearly transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (4, 5, 3)
    assert (image[..., 0] == 255).all() and (image[..., 1:] == 0).all()

    deep = np.full((4, 5, 3), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image[1, 1, 0] == 255 and image[0, 0, 0] == 0


def test_read_mask_palette_png_gives_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    write_palette_png(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels)


def test_read_mask_grey_and_16_bit(tmp_path: Path) -> None:
    labels = np.array([[0, 3], [255, 9]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), labels)
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), labels)
    cv2.imwrite(str(tmp_path / "deep.png"), labels.astype(np.uint16) * 2)
    np.testing.assert_array_equal(read_mask(tmp_path / "deep.png"), labels.astype(np.int64) * 2)


def test_read_mask_rejects_colour_masks(tmp_path: Path) -> None:
    colour = np.zeros((3, 3, 3), dtype=np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DatasetError, match="colour.png"):
        read_mask(tmp_path / "colour.png")


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, reader) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match="broken.png"):
        reader(tmp_path / "broken.png")
    with pytest.raises(DatasetError, match="absent.png"):
        reader(tmp_path / "absent.png")


def _smooth_image(h: int = 120, w: int = 160) -> np.ndarray:
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)


def _encoded(suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, _smooth_image())
    assert ok
    return data.tobytes()


def _cut_jpeg_with_end_marker() -> bytes:
    jpeg = _encoded(".jpg")
    return jpeg[: len(jpeg) // 2] + b"\xff\xd9"  # libjpeg: "Corrupt JPEG data: premature end of data segment"


CUT_SHORT = {
    "truncated.jpg": lambda: _encoded(".jpg")[:-300],
    "damaged.jpg": _cut_jpeg_with_end_marker,
    "truncated.png": lambda: _encoded(".png")[:-12],  # every pixel there, the IEND chunk cut off
    "half.png": lambda: _encoded(".png")[: len(_encoded(".png")) // 2],
    "truncated.bmp": lambda: _encoded(".bmp")[:-1],
    "truncated.tif": lambda: _encoded(".tif")[:-1],
    "truncated.tiff": lambda: _encoded(".tiff")[: len(_encoded(".tiff")) // 2],
    "empty.png": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(CUT_SHORT))
def test_truncated_or_damaged_images_are_unreadable(tmp_path: Path, capfd, name: str) -> None:
    (tmp_path / name).write_bytes(CUT_SHORT[name]())
    with pytest.raises(DatasetError, match=f"cannot read image .*{name}.*replace or remove it"):
        read_image(tmp_path / name)
    err = capfd.readouterr().err  # the decoders' own complaints go into the error, not onto the terminal
    assert "Corrupt JPEG" not in err and "Premature end" not in err and "libpng" not in err, err
    assert "ERROR" not in err, err


def test_truncated_mask_is_unreadable(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [15, 20, 255]], dtype=np.uint8)
    write_palette_png(tmp_path / "m.png", labels)
    whole = (tmp_path / "m.png").read_bytes()
    (tmp_path / "m.png").write_bytes(whole[:-12])
    with pytest.raises(DatasetError, match="cannot read mask .*m.png: .*truncated: no PNG IEND chunk"):
        read_mask(tmp_path / "m.png")


def test_complete_images_with_trailing_bytes_or_progressive_scans_are_read(tmp_path: Path) -> None:
    jpeg = _encoded(".jpg")
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    (tmp_path / "padded.jpg").write_bytes(jpeg + b"\x00" * 64)  # zero padding after the end marker
    (tmp_path / "trailer.jpg").write_bytes(jpeg + b"camera trailer")
    for name in ("padded.jpg", "trailer.jpg"):
        np.testing.assert_array_equal(read_image(tmp_path / name), expected)
    Image.fromarray(_smooth_image()).save(tmp_path / "progressive.jpg", progressive=True)
    assert read_image(tmp_path / "progressive.jpg").shape == (120, 160, 3)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "progressive.jpg").read_bytes()[:-200])
    with pytest.raises(DatasetError, match="cut.jpg: .*truncated: no JPEG end-of-image marker"):
        read_image(tmp_path / "cut.jpg")
