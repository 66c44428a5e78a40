"""Evaluation: a model's confusion matrix on a dataset (predicted by `segkn.models.prediction`), reports."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from segkn.atomic import atomic_open
from segkn.config import Config
from segkn.engine import distributed
from segkn.engine.acceleration import compile_enabled, logged_compile, prepare_model, to_channels_last
from segkn.engine.checkpoint import CheckpointError, model_from_checkpoint
from segkn.engine.device import amp_dtype, resolve_device
from segkn.engine.loaders import build_eval_loader, build_split, worker_errors_unwrapped
from segkn.engine.metrics import ConfusionMatrix
from segkn.models.prediction import predict, same_size_batches
from segkn.progress import progress_bar

__all__ = [
    "EvaluationStopped",
    "evaluate",
    "evaluate_checkpoint",
    "metrics_report",
    "prediction_settings",
    "write_report",
]

log = logging.getLogger(__name__)


class EvaluationStopped(Exception):
    """`evaluate` was asked to stop (its ``stop`` returned True) before the end of the data."""


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _pairs(batch: Any) -> list[tuple[Tensor, Tensor]]:
    """A loader batch as a list of (image 3xHxW, mask HxW): list-collated or default-collated."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        if batch[0].ndim == 4:
            return list(zip(batch[0], batch[1], strict=True))
    return [(image, mask) for image, mask in batch]


def _groups(pairs: list[tuple[Tensor, Tensor]]) -> Iterable[tuple[Tensor, Tensor]]:
    """Stack runs of samples whose image and mask sizes agree, so they share one forward pass."""
    for run in same_size_batches(pairs, lambda pair: (pair[0].shape, pair[1].shape)):
        images, masks = zip(*run, strict=True)
        yield torch.stack(images), torch.stack(masks)


def prediction_settings(cfg: Config) -> dict[str, Any]:
    """The `predict` and `evaluate` keywords that ``cfg.eval`` sets: mode, crop_size, stride, scales, flip."""
    ev = cfg.eval
    return {
        "mode": ev.mode,
        "crop_size": ev.crop_size,
        "stride": ev.stride,
        "scales": ev.scales,
        "flip": ev.flip,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    num_classes: int,
    device: torch.device | str = "cpu",
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 1,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    channels_last: bool = False,
    stop: Callable[[], bool] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on ``data``, summed over all processes, scored at the masks' size.

    A dataset is split over the processes without duplicates (each rank takes every world_size-th
    sample), so the all-reduced matrix equals a single process's; a DataLoader is used as given.
    ``mode``, ``crop_size``, ``stride``, ``scales`` and ``flip`` are `predict`'s (`prediction_settings`
    reads them from a config). ``model`` runs without its DDP wrapper (compiled, if it was compiled in
    place); with ``channels_last`` the images are handed to it in that memory format. ``stop`` is asked
    after each batch and ends the evaluation with EvaluationStopped when it returns True (one process
    only: the processes of a group must all reach the final all-reduce).
    """
    device = torch.device(device)
    if isinstance(data, DataLoader):
        loader = data
    else:
        loader = build_eval_loader(
            data, batch_size, num_workers, distributed.rank(), distributed.world_size()
        )
    net = distributed.unwrap(model)
    was_training = net.training
    net.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    bar = progress_bar(
        loader, desc="eval", leave=False, dynamic_ncols=True, enabled=progress and distributed.is_main()
    )
    try:
        with worker_errors_unwrapped():
            for batch in bar:
                for images, masks in _groups(_pairs(batch)):
                    images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
                    if channels_last:
                        images = to_channels_last(images)
                    size = "x".join(str(n) for n in images.shape)
                    with _autocast(device, amp_dtype), logged_compile(f"evaluating a {size} batch"):
                        probs = predict(
                            net, images, mode, crop_size, stride, scales, flip, out_size=masks.shape[-2:]
                        )
                    cm.update(probs.argmax(1), masks)
                if stop is not None and stop():
                    raise EvaluationStopped
    finally:
        bar.close()
        net.train(was_training)
    cm.reduce_from_all_processes()
    return cm


def metrics_report(cm: ConfusionMatrix, class_names: Sequence[str], **extra: Any) -> dict[str, Any]:
    """A JSON-ready summary: mIoU, aAcc, mAcc, per-class IoU/Acc (null for classes never seen) and the
    confusion matrix (pixel counts; rows ground truth, columns prediction, in the order of ``classes``)."""
    m = cm.compute()

    def num(x: float) -> float | None:
        return None if math.isnan(x) else float(x)

    return {
        **extra,
        "miou": num(m["miou"]),
        "aacc": num(m["aacc"]),
        "macc": num(m["macc"]),
        "pixels": int(cm.mat.sum().item()),
        "classes": [
            {"name": name, "iou": num(iou), "acc": num(acc)}
            for name, iou, acc in zip(class_names, m["iou"], m["acc"], strict=True)
        ],
        "confusion_matrix": cm.mat.cpu().tolist(),
    }


def _write_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def _report_json(report: dict[str, Any]) -> str:
    """``report`` as indented JSON, with each row of its confusion matrix on one line."""
    rows = report.get("confusion_matrix")
    if not rows:
        return json.dumps(report, indent=2) + "\n"
    marker = "@confusion_matrix@"
    text = json.dumps({**report, "confusion_matrix": marker}, indent=2)
    matrix = "[\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
    return text.replace(json.dumps(marker), matrix, 1) + "\n"


def write_report(report: dict[str, Any], json_path: str | Path, table: str | None = None) -> None:
    """Write ``report`` as JSON (and ``table`` beside it as .txt), each file atomically."""
    json_path = Path(json_path)
    _write_atomic(json_path, _report_json(report))
    if table is not None:
        _write_atomic(json_path.with_suffix(".txt"), table + "\n")


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | Path,
    split: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], str]:
    """Evaluate a checkpoint on ``split`` (default ``data.val_split``) with ``cfg``'s data and eval settings.

    The model is rebuilt from the checkpoint's own config. Returns the report and the per-class table,
    and (on rank 0) writes them to ``out_dir/eval_<split>.json`` and ``.txt``, with the confusion heat
    map and IoU bars as ``eval_<split>_confusion.png`` and ``_iou.png`` when matplotlib is installed (a
    warning says how to install it otherwise). Under torchrun each process evaluates its share of the
    images.
    """

    split = split or cfg.data.val_split
    with distributed.process_group(cfg.train.device) as info:
        device = resolve_device(cfg.train.device, info.local_rank)
        model, ckpt = model_from_checkpoint(checkpoint)
        dataset = build_split(cfg, split, train=False)
        if model.config["num_classes"] != dataset.num_classes:
            raise CheckpointError(
                f"{checkpoint}: the model predicts {model.config['num_classes']} classes but the "
                f"{cfg.data.type} split {split!r} has {dataset.num_classes}; evaluate it on the data it was "
                "trained for"
            )
        ev = cfg.eval
        prepare_model(model, device, compile_enabled(ev.compile, device), ev.channels_last)
        log.info(
            "evaluating %s on %s %s (%d images, %s)", checkpoint, cfg.data.type, split, len(dataset), ev.mode
        )
        settings = prediction_settings(cfg)
        cm = evaluate(
            model,
            dataset,
            dataset.num_classes,
            device,
            **settings,
            batch_size=ev.batch_size,
            num_workers=cfg.data.num_workers,
            amp_dtype=amp_dtype(cfg.train.amp, device),
            progress=progress,
            channels_last=ev.channels_last,
        )
        report = metrics_report(
            cm, dataset.classes, checkpoint=str(checkpoint), step=ckpt.get("step"), dataset=cfg.data.type,
            split=split, **settings,
        )  # fmt: skip
        table = cm.table(dataset.classes)
        if out_dir is not None and distributed.is_main():
            write_report(report, Path(out_dir) / f"eval_{split}.json", table)
            _write_plots(report, Path(out_dir) / f"eval_{split}.json", dataset.palette)
        return report, table


def _write_plots(report: dict[str, Any], json_path: Path, palette: Sequence[Sequence[int]]) -> None:
    from segkn.engine.plots import MissingExtra, write_eval_plots

    try:
        paths = write_eval_plots(report, json_path, palette)
    except MissingExtra as err:
        log.warning("no confusion matrix or IoU picture: %s", err)
        return
    log.info("pictures: %s", ", ".join(str(p) for p in paths.values()))
