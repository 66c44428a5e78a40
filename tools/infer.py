"""Segment images: `python tools/infer.py --checkpoint FILE INPUT... --out DIR` (see --help)."""

import sys

from segkn.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
