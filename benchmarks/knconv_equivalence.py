"""Max abs difference of KNConv2d against KernelNorm2d + conv (kernel = stride = k) and against an
unfold-based reference with dilation, over the grid that tests/nn/test_knconv.py asserts.

    .venv/bin/python benchmarks/knconv_equivalence.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segkn.nn import KernelNorm2d  # noqa: E402
from tests.nn.reference import knconv_reference  # noqa: E402
from tests.nn.test_knconv import BATCHES, KERNELS, PADDINGS, STRIDES, _input, _layer, _padding  # noqa: E402


def main() -> None:
    print("| dtype | kernel | stride | padding | dilation | vs KernelNorm2d+conv | vs unfold reference |")
    print("|---|---|---|---|---|---:|---:|")
    worst: dict[torch.dtype, float] = {}
    for dtype, k, s, pad_kind, dilation in itertools.product(
        (torch.float64, torch.float32), KERNELS, STRIDES, PADDINGS, (1, 2)
    ):
        kn_diff, ref_diff = 0.0, 0.0
        for batch in BATCHES:
            layer = _layer(k, s, _padding(pad_kind, k), dilation, dtype)
            with torch.no_grad():
                if dilation == 1:
                    x = _input(batch, dtype)
                    units = KernelNorm2d(k, s, layer.pad4).eval()(x)
                    expected = F.conv2d(units, layer.weight, layer.bias, stride=k)
                    kn_diff = max(kn_diff, (layer(x) - expected).abs().max().item())
                x = _input(batch, dtype, seed=2)
                expected = knconv_reference(
                    x, layer.weight, layer.bias, layer.stride, layer.pad4, layer.dilation
                )
                ref_diff = max(ref_diff, (layer(x) - expected).abs().max().item())
        worst[dtype] = max(worst.get(dtype, 0.0), kn_diff, ref_diff)
        kn_text = f"{kn_diff:.1e}" if dilation == 1 else "n/a"
        name = str(dtype).removeprefix("torch.")
        print(f"| {name} | {k} | {s} | {pad_kind} {layer.pad4} | {dilation} | {kn_text} | {ref_diff:.1e} |")
    print()
    for dtype, value in worst.items():
        print(f"worst {str(dtype).removeprefix('torch.')}: {value:.2e}")


if __name__ == "__main__":
    main()
