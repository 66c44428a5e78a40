"""Cityscapes submission export: full-resolution labelIds PNGs that cityscapesScripts scores.

``csEvalPixelLevelSemanticLabeling`` finds the prediction for ``<city>_<seq>_<frame>_gtFine_labelIds.png``
by the pattern ``*<city>_<seq>_<frame>*.png`` in its results folder; segkn writes
``<city>_<seq>_<frame>_leftImg8bit.png`` with Cityscapes label ids (not train ids) as 8-bit grey.
The files are written into a temporary folder beside the results folder and moved into it once every
image is done, so a run that stops (a bad image, Ctrl-C) leaves no partial submission.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch
from torch import nn

from segkn.data.cityscapes import CityscapesDataset, train_ids_to_label_ids
from segkn.data.io import write_png
from segkn.engine.acceleration import compile_enabled, prepare_model, to_channels_last
from segkn.models.prediction import predict
from segkn.progress import progress_bar

log = logging.getLogger(__name__)


@torch.no_grad()
def export_cityscapes_submission(
    model: nn.Module,
    dataset: CityscapesDataset,
    out_dir: str | Path,
    device: torch.device,
    *,
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    progress: bool = True,
    channels_last: bool = False,
) -> list[Path]:
    """Predict every image of ``dataset`` (eval transform) and write its labelIds PNG into ``out_dir``.

    The PNGs appear in ``out_dir`` only when all of them are written (files of the same names there are
    replaced, others kept); returns their paths.
    """
    if not isinstance(dataset, CityscapesDataset):
        raise ValueError("a Cityscapes submission needs data.type: cityscapes")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(
            f"{out_dir} is a file: --cityscapes-submission takes a folder to write the PNGs into"
        )
    staging = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.tmp")
    staging.mkdir(parents=True)
    model.eval()
    names = []
    try:
        for i in progress_bar(range(len(dataset)), desc="submission", enabled=progress):
            image, _ = dataset[i]
            sample = dataset.samples[i]
            height, width = cv2.imread(str(sample.image), cv2.IMREAD_UNCHANGED).shape[:2]
            x = image.unsqueeze(0).to(device)
            probs = predict(
                model, to_channels_last(x) if channels_last else x, mode, crop_size, stride, scales, flip,
                (height, width),
            )  # fmt: skip
            train_ids = probs.argmax(1)[0].cpu().numpy()
            name = Path(sample.image).name  # <city>_<seq>_<frame>_leftImg8bit.png
            write_png(staging / name, train_ids_to_label_ids(train_ids))
            names.append(name)
        _move_into(staging, out_dir, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d labelIds PNGs to %s", len(names), out_dir)
    return [out_dir / name for name in names]


def _move_into(staging: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move the finished files from ``staging`` into ``out_dir``: the folder itself if there is none yet."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    for name in names:
        os.replace(staging / name, out_dir / name)


def submission_from_checkpoint(cfg, checkpoint: str | Path, split: str, out_dir: str | Path) -> list[Path]:
    """Load ``checkpoint`` (its own model config) and export the Cityscapes ``split`` with ``cfg.eval``."""
    from segkn.engine.checkpoint import model_from_checkpoint
    from segkn.engine.device import resolve_device
    from segkn.engine.evaluator import prediction_settings
    from segkn.engine.loaders import build_split

    model, _ = model_from_checkpoint(checkpoint)
    device = resolve_device(cfg.train.device, 0)
    dataset = build_split(cfg, split, train=False)
    ev = cfg.eval
    prepare_model(model, device, compile_enabled(ev.compile, device), ev.channels_last)
    return export_cityscapes_submission(
        model, dataset, out_dir, device, **prediction_settings(cfg), channels_last=ev.channels_last
    )
