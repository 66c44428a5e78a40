"""Pascal VOC 2012 segmentation, with the SBD-augmented ``trainaug`` split."""

from __future__ import annotations

from pathlib import Path

from segkn.data.base import Sample, SegmentationDataset, Transform, default_palette
from segkn.data.errors import DatasetError

__all__ = ["VOCDataset", "find_voc_root"]

_AUG_LISTS = ("trainaug.txt", "train_aug.txt")


def find_voc_root(root: str | Path) -> Path:
    """Return the VOC2012 folder given it, its parent ``VOCdevkit`` or a folder that holds ``VOCdevkit``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"VOC root {root} does not exist; set data.root to the VOC2012 folder")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"no VOC2012 folder found at {root}: expected {root}/JPEGImages/ "
        "(or VOC2012/JPEGImages/, VOCdevkit/VOC2012/JPEGImages/ below it)"
    )


class VOCDataset(SegmentationDataset):
    """Pascal VOC 2012: ``JPEGImages/<id>.jpg`` with palette masks ``SegmentationClass/<id>.png``.

    Splits are the id lists ``ImageSets/Segmentation/<split>.txt``. ``trainaug`` reads
    ``ImageSets/Segmentation/trainaug.txt`` and the grey label maps in ``SegmentationClassAug/``.
    For ``split="test"`` masks may be missing: such samples get an all-255 mask.
    """

    classes = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
        "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    )  # fmt: skip
    palette = default_palette(21)

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None) -> None:
        self.root = find_voc_root(root)
        self.split = split
        super().__init__(self._list_samples(), transform)

    def _split_file_and_masks(self) -> tuple[Path, Path]:
        lists = self.root / "ImageSets" / "Segmentation"
        if self.split != "trainaug":
            split_file = lists / f"{self.split}.txt"
            if not split_file.is_file():
                found = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
                raise DatasetError(
                    f"VOC split {self.split!r} not found: {split_file} is missing "
                    f"(splits present: {', '.join(found) or 'none'})"
                )
            return split_file, self.root / "SegmentationClass"
        aug_masks = self.root / "SegmentationClassAug"
        split_file = next((lists / n for n in _AUG_LISTS if (lists / n).is_file()), lists / _AUG_LISTS[0])
        missing = [str(p) for p in (split_file, aug_masks) if not p.exists()]
        if missing:
            raise DatasetError(
                f"VOC split 'trainaug' needs the SBD-augmented labels: {' and '.join(missing)} "
                "missing; put the SegmentationClassAug/ label PNGs and the trainaug.txt id "
                f"list into {self.root}"
            )
        return split_file, aug_masks

    def _list_samples(self) -> list[Sample]:
        split_file, mask_dir = self._split_file_and_masks()
        # Lines are ids, or "<image path> <mask path>" pairs as in the DeepLab lists: keep the stem.
        ids = [Path(line.split()[0]).stem for line in split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"VOC split file {split_file} lists no image ids")
        samples = []
        for image_id in ids:
            image = self.root / "JPEGImages" / f"{image_id}.jpg"
            mask = mask_dir / f"{image_id}.png"
            if not image.is_file():
                raise DatasetError(f"image {image} listed in {split_file} not found")
            if not mask.is_file():
                if self.split != "test":
                    raise DatasetError(
                        f"image {image} has no mask: expected {mask}; restore it or remove "
                        f"the id from {split_file}"
                    )
                mask = None
            samples.append(Sample(image_id, image, mask))
        return samples
