"""Export a checkpoint to ONNX and verify it: `python tools/export_onnx.py --checkpoint F --out M.onnx`."""

import sys

from segkn.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
