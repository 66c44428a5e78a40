"""Forward + backward time of KNResNet-18 next to BN ResNet-18, and KNConv2d next to an unfold-based
kernel normalized conv, measured side by side in one process (interleaved, median of repeats).

    .venv/bin/python benchmarks/knresnet_cpu.py [--repeats 7] [--device cpu]

Timings are noisy on shared machines: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

from segkn.models.knresnet import KNResNet
from segkn.nn import KNConv2d


def unfold_knconv(layer: KNConv2d, x: torch.Tensor) -> torch.Tensor:
    """The paper's formulation: materialize every C x kh x kw unit (memory grows with C*kh*kw)."""
    xp = F.pad(x, layer.pad4)
    units = F.unfold(xp, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    var, mean = torch.var_mean(units, dim=1, keepdim=True, correction=0)
    out = layer.weight.flatten(1) @ ((units - mean) * torch.rsqrt(var + layer.eps)) + layer.bias.view(
        1, -1, 1
    )
    h = (xp.shape[2] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
    return out.view(x.shape[0], -1, h, out.shape[-1] // h)


def step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).float().sum().backward()

    return run


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(cases: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    for fn in cases.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():  # interleaved, so drifts in machine load hit every case alike
            samples[name].append(timed(fn, device))
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    x = torch.randn(2, 3, 224, 224, device=device)
    kn = KNResNet("knresnet18").to(device).train()
    bn = torchvision.models.resnet18().to(device).train()
    times = compare({"KNResNet-18": step(kn, x), "BN ResNet-18": step(bn, x)}, args.repeats, device)
    print(
        f"forward+backward, batch 2x3x224x224, {device}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    for name, t in times.items():
        print(f"  {name:<14} {t * 1000:8.1f} ms")
    print(f"  ratio KNResNet-18 / BN ResNet-18: {times['KNResNet-18'] / times['BN ResNet-18']:.2f}")

    layer = KNConv2d(256, 256, 2, padding=(1, 0, 1, 0)).to(device).eval()
    y = torch.randn(2, 256, 56, 56, device=device)
    with torch.no_grad():
        diff = (layer(y) - unfold_knconv(layer, y)).abs().max().item()
        times = compare(
            {"KNConv2d (pooled moments)": lambda: layer(y), "unfold-based": lambda: unfold_knconv(layer, y)},
            args.repeats,
            device,
        )
    print(f"\nKN conv 256->256, 2x2, input 2x256x56x56, forward only (max abs diff {diff:.2e})")
    for name, t in times.items():
        print(f"  {name:<26} {t * 1000:8.1f} ms")
    print(f"  ratio unfold / KNConv2d: {times['unfold-based'] / times['KNConv2d (pooled moments)']:.2f}")


if __name__ == "__main__":
    main()
