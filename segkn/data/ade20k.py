"""ADE20K scene parsing (the ADEChallengeData2016 release): 150 classes, label 0 ("other") ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkn.data.base import IGNORE_INDEX, Sample, SegmentationDataset, Transform
from segkn.data.errors import DatasetError
from segkn.data.io import read_mask

__all__ = ["LABEL_IDS", "NUM_CLASSES", "SPLIT_FOLDERS", "ADE20KDataset", "reduce_zero_label"]

NUM_CLASSES = 150

# The dataset's own label of each class index: class i is stored as i + 1 (0 is "other").
LABEL_IDS = tuple(range(1, NUM_CLASSES + 1))

# The usual split names -> the release's folder names; the folder names are accepted as they are.
SPLIT_FOLDERS = {"train": "training", "val": "validation", "test": "testing"}

# Lookup table stored label -> class index: 0 -> 255, k -> k - 1 for 1..150, 255 stays 255.
_REDUCE = np.full(256, IGNORE_INDEX, dtype=np.int64)
_REDUCE[1 : NUM_CLASSES + 1] = np.arange(NUM_CLASSES)


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """Map stored ADE20K labels to class indices: 0 ("other") -> 255, k -> k - 1 for 1..150, 255 -> 255.

    Other values are not ADE20K labels; callers check for them first (``ADE20KDataset.load_mask``).
    """
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < len(_REDUCE))
    return np.where(valid, _REDUCE[np.where(valid, labels, 0)], IGNORE_INDEX).astype(np.int64)


class ADE20KDataset(SegmentationDataset):
    """ADE20K, as in ``ADEChallengeData2016.zip``: ``images/<split>/*.jpg`` with grey label PNGs of the
    same name in ``annotations/<split>/``.

    Splits are the folder names (``training``, ``validation``); ``train``, ``val`` and ``test`` name
    ``training``, ``validation`` and ``testing``. Stored labels are 0 = other (ignored, 255) and
    1..150, read as class indices 0..149. A ``testing`` split may have no annotations: such samples
    get an all-255 mask.
    """

    classes = (
        "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
        "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
        "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
        "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
        "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
        "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
        "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
        "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
        "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
        "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
        "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
        "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
        "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
        "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
        "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
        "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
        "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
        "clock", "flag",
    )  # fmt: skip
    # The scene-parsing benchmark's colours, in class order.
    palette = (
        (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
        (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
        (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
        (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
        (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
        (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
        (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
        (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
        (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
        (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
        (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
        (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
        (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
        (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
        (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
        (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
        (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
        (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
        (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
        (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
        (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
        (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
        (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
        (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
        (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
    )  # fmt: skip

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.split = split
        super().__init__(self._list_samples(), transform)

    def _find_root(self) -> Path:
        """``data.root`` itself, or its ``ADEChallengeData2016`` sub-folder (the archive unpacked there)."""
        if not self.root.is_dir():
            raise DatasetError(
                f"ADE20K root {self.root} does not exist; set data.root to the ADEChallengeData2016 "
                "folder that holds images/ and annotations/"
            )
        for candidate in (self.root, self.root / "ADEChallengeData2016"):
            if (candidate / "images").is_dir():
                return candidate
        raise DatasetError(
            f"no ADE20K images found at {self.root}: expected {self.root}/images/ (or "
            "ADEChallengeData2016/images/ below it); data.root must be the unpacked ADEChallengeData2016"
        )

    def _list_samples(self) -> list[Sample]:
        self.root = self._find_root()
        folder = SPLIT_FOLDERS.get(self.split, self.split)
        image_dir, mask_dir = self.root / "images" / folder, self.root / "annotations" / folder
        if not image_dir.is_dir():
            found = sorted(p.name for p in (self.root / "images").iterdir() if p.is_dir())
            raise DatasetError(
                f"ADE20K split {self.split!r} not found: {image_dir} is missing "
                f"(splits present: {', '.join(found) or 'none'})"
            )
        masks_optional = folder == "testing"
        if not masks_optional and not mask_dir.is_dir():
            raise DatasetError(
                f"ADE20K annotations not found: {mask_dir} is missing; unpack the whole "
                "ADEChallengeData2016.zip (images/ and annotations/) into data.root"
            )
        samples = []
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")):
            mask: Path | None = mask_dir / f"{image.stem}.png"
            if not mask.is_file():
                if not masks_optional:
                    raise DatasetError(
                        f"image {image} has no mask: expected {mask}; restore it or remove the image"
                    )
                mask = None
            samples.append(Sample(image.stem, image, mask))
        if not samples:
            raise DatasetError(f"no .jpg images found in {image_dir}")
        return samples

    def load_mask(self, sample: Sample, shape: tuple[int, int]) -> np.ndarray:
        if sample.mask is None:
            return super().load_mask(sample, shape)
        stored = read_mask(sample.mask)
        bad = (stored > NUM_CLASSES) & (stored != IGNORE_INDEX)
        if bad.any():
            values = np.unique(stored[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise DatasetError(
                f"mask {sample.mask} has label values {shown}; ADE20K masks hold 0 (other, ignored) "
                f"and the classes 1..{NUM_CLASSES} (255 = ignore)"
            )
        return reduce_zero_label(stored)
