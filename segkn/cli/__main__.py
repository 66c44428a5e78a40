"""``python -m segkn.cli ...``: the ``segkn`` command."""

import sys

from segkn.cli.app import main

sys.exit(main())
