"""``python -m segkn.cli ...``: the ``segkn`` command."""

import sys

from segkn.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
