"""Command-line entry points: the ``segkn`` console script and the thin scripts in tools/.

One module per command (``zoo``, ``train``, ``evaluate`` for ``eval``, ``infer``, ``export``,
``publish``, ``shapes``), each with ``add_arguments(parser)`` and ``run(args)``; ``app`` builds the
parser and runs them.
"""

from segkn.cli.app import main

__all__ = ["main"]
