"""A quick check of a dataset's files before a long job needs them: present, readable, matching, in range.

Images are checked by their headers (size and format, not their pixels); masks are read whole, as
their label values are what is checked. A Cityscapes val split (500 images) takes seconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from segkn.data.base import Sample, SegmentationDataset
from segkn.data.errors import DatasetError
from segkn.data.io import read_image
from segkn.progress import progress_bar

__all__ = ["check_files"]

log = logging.getLogger(__name__)


def _image_size(sample: Sample) -> tuple[int, int]:
    """Height and width from the image's header; a full read where PIL cannot parse the format."""
    assert sample.image is not None
    try:
        with Image.open(sample.image) as image:
            width, height = image.size
        return height, width
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return read_image(sample.image).shape[:2]  # a DatasetError naming the file if cv2 cannot either


def _check_sample(dataset: SegmentationDataset, index: int) -> str | None:
    """The problem of sample ``index`` as a message, or None when its files are fine."""
    sample = dataset.samples[index]
    if sample.image is None:  # generated, not read from files
        return None
    try:
        height, width = _image_size(sample)
        mask = dataset.load_mask(sample, (height, width))
        if mask.shape != (height, width):
            return (
                f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {sample.image} "
                f"is {width}x{height}; masks must have the size of their image"
            )
        dataset.check_labels(mask, sample)
    except DatasetError as err:
        return str(err)
    return None


def check_files(
    dataset: SegmentationDataset, indices: Iterable[int] | None = None, name: str = "", progress: bool = True
) -> None:
    """Check the files of the samples ``indices`` (default all) of ``dataset``; DatasetError on a problem.

    Every file must exist, images must have a readable header, masks must be readable label maps of their
    image's size with values in the class range or 255. The error names the first problem and counts
    the rest. ``name`` (e.g. ``split 'val'``) says in messages what is checked.
    """
    indices = list(range(len(dataset)) if indices is None else indices)
    start = time.perf_counter()
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        checks = pool.map(lambda i: _check_sample(dataset, i), indices)
        # shown only when the check takes a while: a quick one leaves no trace on the terminal
        bar = progress_bar(checks, total=len(indices), desc="check", leave=False, delay=1, enabled=progress)
        problems = [problem for problem in bar if problem]
    what = name or "the dataset"
    if problems:
        more = f" ({len(problems) - 1} more file problem(s) in {what})" if len(problems) > 1 else ""
        raise DatasetError(f"{problems[0]}{more}")
    seconds = time.perf_counter() - start
    log.info("checked the files of %d samples of %s in %.1f s", len(indices), what, seconds)
