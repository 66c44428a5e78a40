"""Evaluate a segkn checkpoint: `python tools/eval.py RUN_DIR` or `CONFIG --checkpoint FILE`."""

import sys

from segkn.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
