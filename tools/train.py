"""Train a segkn model: `python tools/train.py CONFIG [--set key=value ...] [--resume RUN_DIR]`."""

import sys

from segkn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
