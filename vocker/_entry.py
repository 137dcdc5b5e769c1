"""Console-script entry: catches Ctrl-C even while the CLI's dependencies are importing."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("vocker: interrupted\n")
        sys.exit(130)
    cli_main()
