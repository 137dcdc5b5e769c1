"""Console-script entry: catches Ctrl-C even while the CLI's dependencies are importing."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("vocker: interrupted\n")
        sys.exit(130)
    # What the imports made lives until exit: frozen, no collection walks it again, nor the
    # one at exit (13-18 ms of every command), and a forked mount daemon shares its pages.
    gc.freeze()
    cli_main()
