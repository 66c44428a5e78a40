"""Small-batch study: val mIoU of kn / bn / gn / ln models at per-GPU batch 1, 2 and 8, at an equal number of
images seen, each with a learning-rate sweep and several seeds, on the built-in shapes data.

    .venv/bin/python benchmarks/batch_size_study.py --quick --jobs 2 --threads 1   # 2 CPU cores
    .venv/bin/python benchmarks/batch_size_study.py              # the full study (see below for how long)
    .venv/bin/python benchmarks/batch_size_study.py --list       # the plan and what is already done
    .venv/bin/python benchmarks/batch_size_study.py --models resnet18-bn --batches 1 --jobs 2   # a piece
    .venv/bin/python benchmarks/batch_size_study.py --images 8000 --report   # tables etc. of finished runs
    bash benchmarks/cuda_study.sh OUT 600 --images 8000 --archs unet --jobs 14 --threads 1   # pieces on a GPU

Every run is ``segkn.engine.trainer.train`` on a config built here (the demo recipe
configs/demo/shapes_unet_knresnet18_kn_2k_64x64.yaml, resized): AdamW, poly schedule with a 5% warm-up,
cross entropy + 0.5 dice, hflip + photometric augmentation; BN layers train in train mode (batch
statistics) and validate in eval mode (running statistics), as users train them. For one setting
(arch, encoder, norm, batch) every learning rate and seed sees the same number of training images:
``iterations = images / batch``; the validation split is scored ``val_points`` times along the way, so
the curves show whether a run was still improving.

Plans:
  --quick  U-Net on a resnet18 encoder (depth 3) with norm kn, bn and gn (same layers and FLOPs, only
           the norm differs); batch 1, 2, 8; lr 1e-3, 3e-3, 1e-2; seeds 0, 1 (54 runs); 32 x 32
           images, 3 classes, 320 training images seen per run, 50 val images scored 4 times.
           Measured with --jobs 2 on 2 CPU cores: 3.1 minutes idle, 12.9 minutes shared with other
           work (load ~5). Far too short for any run to converge: it shows which norm starts
           learning first at each batch size, not final accuracy.
  full     U-Net and DeepLabV3+, knresnet18 (kn) and resnet18 with kn, bn, gn, ln; batch 1, 2, 8;
           lr 1e-4, 3e-4, 1e-3, 3e-3; seeds 0, 1 (240 runs); 64 x 64 images (the demo's), 3 classes,
           16000 training images seen per run (the demo's 2000 iterations at batch 8), 100 val images
           scored 8 times. Run in pieces (--archs/--models/--batches/--lrs/--seeds/--images, --jobs N);
           what ran so far (8000 images, lr 1e-4 to 1e-2) is in docs/batch_size.md. Measured
           per run at 8000 images: on one H100 (torch 2.11, eager, 14 runs at once) a KNResNet-18 U-Net
           at batch 1 (8000 iterations) took 5.5 min, a BN/GN/LN one 1.6-1.9 min, a DeepLabV3+ at batch
           8 (1000 iterations) 1.4 min (KN) and 0.6-0.9 min; on 2 CPU cores (2 runs at once, 1 thread
           each) a KNResNet-18 U-Net at batch 8 took about 5 min. From these, the whole plan (240 runs,
           16000 images) is about 1.5 hours on one such GPU and a day or more on 2 CPU cores (estimates).

Every run trains in float32 (no autocast, no TF32 on a GPU), so pieces run on CPUs and GPUs compare;
result.json records the device. Runs start longest first (batch 1), so a pool of --jobs ends together.
Runs are cached: each one trains in ``--work-dir/<plan>/<run-id>/`` and leaves result.json there when it
ends (its checkpoints are then deleted unless --keep-checkpoints); a finished run is skipped and an
interrupted one resumes from its last.pth. The table and plot use every finished run of the plan, so
pieces run at different times add up. Outputs: a Markdown table (best learning rate per setting: mean
+- spread of the final val mIoU over seeds, spread = half the range; then every run),
benchmarks/results/batch_size_study[_quick].json and .png (needs matplotlib: pip install -e ".[viz]").

The script ends with the batch-consistency check users see at inference: one image predicted alone
and in a batch with three others, with a KN model and a BN model (train and eval mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import _common as C
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # one line per run instead of progress bars


@dataclass(frozen=True)
class Plan:
    archs: tuple[str, ...]
    models: tuple[str, ...]  # encoder-norm
    batches: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    images: int  # training images seen by every run
    size: int  # side of the generated square images
    val_points: int  # validations per run, evenly spaced
    val_length: int
    checkpoint_each_val: bool  # last.pth at every validation (resumable mid-run) or only at the end


PLANS = {
    "quick": Plan(
        archs=("unet",),
        models=("resnet18-kn", "resnet18-bn", "resnet18-gn"),
        batches=(1, 2, 8),
        lrs=(1e-3, 3e-3, 1e-2),
        seeds=(0, 1),
        images=320,
        size=32,
        val_points=4,
        val_length=50,
        checkpoint_each_val=False,
    ),
    "full": Plan(
        archs=("unet", "deeplabv3plus"),
        models=("knresnet18-kn", "resnet18-kn", "resnet18-bn", "resnet18-gn", "resnet18-ln"),
        batches=(1, 2, 8),
        lrs=(1e-4, 3e-4, 1e-3, 3e-3),
        seeds=(0, 1),
        images=16000,
        size=64,
        val_points=8,
        val_length=100,
        checkpoint_each_val=True,
    ),
}


@dataclass(frozen=True)
class Run:
    arch: str
    model: str  # encoder-norm
    batch: int
    lr: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.arch}_{self.model}_b{self.batch}_lr{self.lr:g}_s{self.seed}"

    @property
    def setting(self) -> tuple[str, str, int]:
        return (self.arch, self.model, self.batch)


def run_config(plan: Plan, run: Run) -> dict[str, Any]:
    """The segkn config mapping of one run."""
    encoder, norm = run.model.rsplit("-", 1)
    iterations = plan.images // run.batch
    val_interval = max(1, iterations // plan.val_points)
    if run.arch == "unet":
        model = {"encoder_depth": 3, "decoder_channels": [32, 16, 16], "output_stride": 16}
    else:
        model = {"decoder_channels": 64, "output_stride": 16}
    return {
        "model": {"arch": run.arch, "encoder": encoder, "norm": norm, **model},
        "data": {
            "type": "shapes",
            "shapes_size": [plan.size, plan.size],
            "shapes_num_classes": 3,
            "shapes_train_length": plan.images,
            "shapes_val_length": plan.val_length,
            "crop_size": [plan.size, plan.size],
            "scale_range": [1.0, 1.0],
            "num_workers": 0,
        },
        "train": {
            "iterations": iterations,
            "batch_size": run.batch,
            "optimizer": "adamw",
            "lr": run.lr,
            "weight_decay": 1e-4,
            "warmup_iters": max(1, iterations // 20),
            "warmup_ratio": 0.1,
            "min_lr": 0.0,
            "dice_weight": 0.5,
            "val_interval": val_interval,
            "log_interval": val_interval,
            "checkpoint_interval": val_interval if plan.checkpoint_each_val else iterations,
            "device": "auto",
            "amp": "off",  # float32 on every device, so that CPU and GPU runs of the plan compare
            "compile": False,
        },
        "eval": {"batch_size": 25, "compile": False, "vis_samples": 0},  # no pictures: many short runs
        "seed": run.seed,
        "name": run.id,
    }


def train_one(plan: Plan, run: Run, run_dir: Path, keep_checkpoints: bool, threads: int) -> dict[str, Any]:
    """Train one run (resuming an interrupted one) and write its result.json; returns the result."""
    from segkn.config import config_from_dict
    from segkn.engine.run_log import read_metrics
    from segkn.engine.trainer import TrainingDiverged, train

    if threads:
        torch.set_num_threads(threads)
    # float32 convolutions on a GPU too (cuDNN's default TF32 moves KN outputs by ~1e-2: docs/performance.md)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    cfg = config_from_dict(run_config(plan, run), f"run {run.id}")
    start = time.perf_counter()
    status, error = "done", None
    try:
        train(cfg, run_dir=run_dir, resume=(run_dir / "last.pth").is_file())
    except TrainingDiverged:
        status = "diverged"
    except ValueError as err:  # e.g. BN DeepLab at batch 1: its image pooling leaves 1 value per channel
        status, error = "failed", str(err).splitlines()[0]
    seconds = time.perf_counter() - start
    curve = [
        {"images": r["step"] * run.batch, "step": r["step"], "miou": r["miou"]}
        for r in read_metrics(run_dir)
        if r["kind"] == "val"
    ]
    result = {
        **dataclasses.asdict(run),
        "id": run.id,
        "status": status,
        "error": error,
        "iterations": cfg.train.iterations,
        "seconds": round(seconds, 1),  # of this process only when resumed
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "curve": curve,
        "final_miou": curve[-1]["miou"] if status == "done" and curve else None,
        "best_miou": max((p["miou"] for p in curve if p["miou"] is not None), default=None),
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    if not keep_checkpoints:
        for name in ("last.pth", "best.pth"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    return result


def _train_in_worker(args: tuple[Plan, Run, Path, bool, int]) -> dict[str, Any]:
    from segkn.engine.signals import EXIT_CODE, TrainingTerminated

    try:
        return train_one(*args)
    except TrainingTerminated:  # SIGTERM: the run saved its last.pth; this worker takes no further run
        sys.stdout.flush()
        os._exit(EXIT_CODE)


def cached(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- summary ----------------------------------------------------------------------------------------------


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (max(values) - min(values)) / 2


def _final(result: dict[str, Any]) -> float:
    """A diverged or failed run counts as 0 mIoU when choosing and averaging (its status is shown)."""
    return result["final_miou"] if result["final_miou"] is not None else 0.0


def summarize(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting (arch, model, batch): every lr's mean over seeds, and the best lr's numbers."""
    by_setting: dict[tuple, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_setting[(r["arch"], r["model"], r["batch"])][r["lr"]].append(r)
    rows = []
    for (arch, model, batch), by_lr in by_setting.items():
        per_lr = {lr: statistics.fmean(_final(r) for r in rs) for lr, rs in sorted(by_lr.items())}
        best_lr = max(per_lr, key=lambda lr: per_lr[lr])
        best = sorted(by_lr[best_lr], key=lambda r: r["seed"])
        mean, spread = _mean_spread([_final(r) for r in best])
        # still rising: the mean val mIoU gained >= 0.01 over the last quarter of training
        rising = None
        if all(len(r["curve"]) >= 2 for r in best):
            gains = [_gain_last_quarter(r["curve"]) for r in best]
            rising = statistics.fmean(gains) >= 0.01
        rows.append(
            {
                "arch": arch,
                "model": model,
                "batch": batch,
                "best_lr": best_lr,
                "best_lr_at_edge": best_lr in (min(per_lr), max(per_lr)),  # of the lrs run
                "seeds": [r["seed"] for r in best],
                "runs": sum(len(rs) for rs in by_lr.values()),  # finished runs of the setting, all lrs
                "miou_mean": mean,
                "miou_spread": spread,
                "miou_per_lr": {f"{lr:g}": m for lr, m in per_lr.items()},
                "still_rising": rising,
                "all_failed": all(r["status"] == "failed" for rs in by_lr.values() for r in rs),
            }
        )
    order = {m: i for i, m in enumerate(PLANS["full"].models)}
    rows.sort(key=lambda r: (r["arch"], order.get(r["model"], 99), r["model"], r["batch"]))
    return rows


def _gain_last_quarter(curve: Sequence[dict[str, Any]]) -> float:
    last = curve[-1]
    at = [p for p in curve if p["images"] <= 0.75 * last["images"]]
    ref = at[-1] if at else curve[0]
    return (last["miou"] or 0.0) - (ref["miou"] or 0.0)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], plan: Plan) -> None:
    lrs = [f"{lr:g}" for lr in plan.lrs]
    print("\n## Best learning rate per setting (final val mIoU, mean +- half range over seeds)")
    print("(edge: the best lr is the smallest or largest run in its row, so a better one may lie outside)\n")
    print(
        C.markdown_table(
            [
                "arch",
                "encoder-norm",
                "batch",
                "runs",
                "best lr",
                "val mIoU",
                *[f"lr {lr}" for lr in lrs],
                "still rising",
            ],
            [
                [
                    r["arch"],
                    r["model"],
                    r["batch"],
                    f"{r['runs']}/{len(plan.lrs) * len(plan.seeds)}",
                    f"{r['best_lr']:g}" + (" (edge)" if r["best_lr_at_edge"] else ""),
                    "fails" if r["all_failed"] else f"{r['miou_mean']:.3f} +- {r['miou_spread']:.3f}",
                    *[_f(r["miou_per_lr"].get(lr)) for lr in lrs],
                    {None: "-", True: "yes", False: "no"}[r["still_rising"]],
                ]  # fmt: skip
                for r in rows
            ],
        )
    )
    print("\n## Every run (val mIoU at each validation; images seen in the header of the curve)\n")
    table = []
    for r in sorted(results, key=lambda r: (r["arch"], r["model"], r["batch"], r["lr"], r["seed"])):
        curve = " ".join(_f(p["miou"]) for p in r["curve"])
        table.append(
            [
                r["arch"],
                r["model"],
                r["batch"],
                f"{r['lr']:g}",
                r["seed"],
                r["status"],
                _f(r["final_miou"]),
                curve,
                r["seconds"],
            ]  # fmt: skip
        )
    print(
        C.markdown_table(
            ["arch", "encoder-norm", "batch", "lr", "seed", "status", "final", "curve", "s"], table
        )
    )


def plot(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], path: Path) -> bool:
    """Per arch: final mIoU vs batch size per encoder-norm, and the best-lr val curves per batch size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed, no plot: pip install -e ".[viz]" (or matplotlib==3.11.2)')
        return False
    archs = sorted({r["arch"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    fig, axes = plt.subplots(
        len(archs), 1 + len(batches), figsize=(4 * (1 + len(batches)), 3.4 * len(archs)), squeeze=False
    )
    for ax_row, arch in zip(axes, archs, strict=True):
        ax = ax_row[0]
        for m in models:
            pts = [r for r in rows if r["arch"] == arch and r["model"] == m]
            ax.errorbar(
                [r["batch"] for r in pts], [r["miou_mean"] for r in pts], [r["miou_spread"] for r in pts],
                marker="o", capsize=3, color=colors[m], label=m,
            )  # fmt: skip
        ax.set(xscale="log", xticks=batches, xlabel="per-GPU batch", ylabel="final val mIoU (best lr)")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_title(f"{arch}: best lr per batch")
        ax.legend(fontsize=8)
        for ax, batch in zip(ax_row[1:], batches, strict=True):
            for r in rows:
                if r["arch"] != arch or r["batch"] != batch:
                    continue
                for res in results:
                    if (res["arch"], res["model"], res["batch"], res["lr"]) == (
                        arch, r["model"], batch, r["best_lr"],
                    ):  # fmt: skip
                        first = res["seed"] == r["seeds"][0]  # one legend entry per setting
                        ax.plot(
                            [p["images"] for p in res["curve"]], [p["miou"] for p in res["curve"]],
                            marker=".", color=colors[r["model"]], alpha=0.8,
                            label=f"{r['model']} lr {r['best_lr']:g}" if first else None,
                        )  # fmt: skip
            ax.set(xlabel="training images seen", ylabel="val mIoU", title=f"{arch}, batch {batch}: best lr")
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")
    return True


# --- batch consistency ------------------------------------------------------------------------------------


def batch_consistency(size: int) -> list[dict[str, Any]]:
    """Max abs difference of image 0's logits alone and in a batch of 4, KN and BN U-Net (same layers)."""
    from segkn.models import build_model

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, size, size, generator=g)
    out = []
    for norm in ("kn", "bn"):
        torch.manual_seed(0)
        model = build_model(  # KN's statistics dropout (random per sample, train mode only) off
            {
                "arch": "unet",
                "encoder": "resnet18",
                "norm": norm,
                "num_classes": 3,
                "encoder_depth": 3,
                "decoder_channels": [32, 16, 16],
                "output_stride": 16,
                "dropout_p": 0.0,
                "decoder_dropout": 0.0,
            }  # fmt: skip
        )
        for mode in ("train", "eval"):
            model.train(mode == "train")
            with torch.no_grad():
                diff = (model(x[:1]) - model(x)[:1]).abs().max().item()
            out.append({"model": f"resnet18-{norm}", "mode": mode, "max_abs_diff": diff})
    return out


# --- main -------------------------------------------------------------------------------------------------


def _narrow(plan: Plan, args: argparse.Namespace) -> Plan:
    changes = {
        key: tuple(value)
        for key in ("archs", "models", "batches", "lrs", "seeds")
        if (value := getattr(args, key)) is not None
    }
    if args.images is not None:
        changes["images"] = args.images
    return dataclasses.replace(plan, **changes)


def main(argv: Sequence[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--quick", action="store_true", help="the quick plan (see above)")
    parser.add_argument("--archs", nargs="+", help="only these architectures of the plan")
    parser.add_argument("--models", nargs="+", help="only these encoder-norm pairs, e.g. resnet18-bn")
    parser.add_argument("--batches", nargs="+", type=int, help="only these batch sizes")
    parser.add_argument("--lrs", nargs="+", type=float, help="only these learning rates")
    parser.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    parser.add_argument("--images", type=int, help="training images per run (changes the runs' ids' folder)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--work-dir", type=Path, default=C.ROOT / "runs" / "batch_size_study")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's last.pth/best.pth")
    parser.add_argument("--list", action="store_true", help="print the plan and what is done, no training")
    parser.add_argument("--report", action="store_true", help="table, plot, JSON of finished runs only")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/batch_size_study[_quick].json")
    args = parser.parse_args(argv)

    name = "quick" if args.quick else "full"
    plan = _narrow(PLANS[name], args)
    stem = "batch_size_study" + ("_quick" if args.quick else "")
    json_path = args.json or C.RESULTS / f"{stem}.json"
    folder = args.work_dir / f"{name}_{plan.size}px_{plan.images}img"
    runs = [
        Run(a, m, b, lr, s)
        for a in plan.archs
        for m in plan.models
        for b in plan.batches
        for lr in plan.lrs
        for s in plan.seeds
    ]
    # per architecture the longest runs (batch 1) first, so that a pool of --jobs ends about together
    todo = sorted(
        (r for r in runs if cached(folder / r.id) is None),
        key=lambda r: (plan.archs.index(r.arch), r.batch),
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = C.environment(device, plan=name, **dataclasses.asdict(plan))
    C.print_header(f"batch-size study ({name}): {len(runs)} runs, {len(runs) - len(todo)} done", env)
    if args.list:
        for r in runs:
            print(("done " if r not in todo else "todo ") + r.id)
        return
    if args.report:
        todo = []

    start = time.perf_counter()
    work = [(plan, r, folder / r.id, args.keep_checkpoints, args.threads) for r in todo]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for i, res in enumerate(pool.map(_train_in_worker, work), 1):
                _report(i, len(work), res)
    else:
        for i, item in enumerate(work, 1):
            _report(i, len(work), train_one(*item))
    elapsed = time.perf_counter() - start

    results = [res for r in runs if (res := cached(folder / r.id)) is not None]
    rows = summarize(results)
    print_tables(rows, results, plan)
    consistency = batch_consistency(plan.size)
    print("\n## One image alone vs. in a batch of 4 (untrained U-Net, resnet18 encoder)\n")
    print(C.markdown_table(["model", "mode", "max abs difference"], [
        [c["model"], c["mode"], f"{c['max_abs_diff']:.2e}"] for c in consistency
    ]))  # fmt: skip
    for res in results:
        if res.get("error"):
            print(f"{res['id']} failed: {res['error']}")
    print(f"\ntrained {len(todo)} runs in {elapsed / 60:.1f} min")
    args.trained_runs, args.wall_minutes = len(todo), round(elapsed / 60, 2)  # this call's training
    C.write_json(
        json_path, "batch_size_study", env, args,
        {"settings": rows, "runs": results, "batch_consistency": consistency},
    )  # fmt: skip
    plot(rows, results, json_path.with_suffix(".png"))


def _report(i: int, n: int, res: dict[str, Any]) -> None:
    print(
        f"[{i}/{n}] {res['id']}: {res['status']}, final val mIoU {_f(res['final_miou'])} "
        f"({res['iterations']} it, {res['seconds']:.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
