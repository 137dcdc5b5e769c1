"""Console-script entry: catches Ctrl-C even while the CLI's dependencies are importing."""

from __future__ import annotations

import gc
import signal
import sys


def main() -> None:
    try:
        if sys.argv[1:2] == ["run"]:  # on a warm mount, without importing the CLI (vocker.runclient)
            from .runclient import thin_run

            code = thin_run(sys.argv[1:])
            if code is not None:
                sys.exit(code)
        from .cli import main as cli_main

        # What the imports made lives until exit: frozen, no collection walks it again, nor the
        # one at exit (13-18 ms of every command), and a forked mount daemon shares its pages.
        gc.freeze()
        cli_main()
    except KeyboardInterrupt:  # before the CLI's own handling began (or a second Ctrl-C in it)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("vocker: interrupted\n")
        sys.exit(130)
