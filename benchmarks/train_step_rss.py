"""Peak RSS of this process after building a model and running one train step: a cross-check of
kn_model.py's memory column that needs no child processes (run it once per variant).

    .venv/bin/python benchmarks/train_step_rss.py deeplabv3 knresnet18           # KN as built
    .venv/bin/python benchmarks/train_step_rss.py deeplabv3 knresnet18 --plain   # plain convs
    PYTHONPATH=/path/to/other/checkout .venv/bin/python benchmarks/train_step_rss.py deeplabv3 knresnet18

The last form measures another version of segkn (e.g. an older commit) with the same script.
"""

from __future__ import annotations

import argparse
import resource

import _common as C
import torch
import torch.nn.functional as F

import segkn
from segkn.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch")
    parser.add_argument("encoder")
    parser.add_argument("--norm", default="kn")
    parser.add_argument("--plain", action="store_true", help="KN layers run their convolution alone")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = dict(arch=args.arch, encoder=args.encoder, norm=args.norm, num_classes=19, output_stride=16)
    model = build_model(cfg).train()
    if args.plain:
        C.patch_plain_convs(model)
    x = torch.randn(args.batch, 3, *args.size)
    target = torch.randint(0, 19, (args.batch, *args.size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    F.cross_entropy(model(x), target).backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    name = f"{args.arch}/{args.encoder}/{args.norm}" + (" +plain" if args.plain else "")
    print(
        f"{name} (segkn at {segkn.__file__}): peak RSS {peak:.0f} MiB after one train step, "
        f"{built:.0f} MiB after building; batch {args.batch} x 3 x {args.size[0]} x {args.size[1]}"
    )


if __name__ == "__main__":
    main()
