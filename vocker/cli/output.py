"""Listings for people and for scripts, the same way in every command.

On a terminal a listing is a rich table. In a pipe it is plain rows, columns padded with
spaces (never tabs), nothing cut or dropped and no trailing spaces, so ``awk``/``cut``
see every value whole. ``--format json`` prints one JSON document with stable keys
(documented in the README) instead; ``-q`` options print one value a line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable

import attrs
import click

from ..ui import out, table as make_table

#: Between columns of a piped listing, as docker's.
GAP = "   "

format_option = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="'json': one JSON document with stable keys (see the README), for scripts.")

no_trunc_option = click.option("--no-trunc", is_flag=True, help="Show full image IDs.")


@attrs.frozen
class Column:
    """One column of a listing: its header, and whether numbers align right."""

    title: str
    right: bool = False
    wrap: bool = False  # on a terminal only; a pipe never wraps or cuts


def iso_time(ts: float) -> str:
    """A timestamp for JSON: UTC, to the second, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def print_json(doc: Any) -> None:
    """One JSON document on stdout (indented, keys in the order given)."""
    click.echo(json.dumps(doc, indent=2))


def print_lines(values: Iterable[str]) -> None:
    """One value a line (``-q``)."""
    for value in values:
        click.echo(_cell(value))


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, header: bool = True) -> None:
    """A table on a terminal; whole, space-padded rows in a pipe."""
    if out.is_terminal:
        table = make_table(header_style="bold", show_header=header)
        for c in columns:
            table.add_column(c.title, justify="right" if c.right else "left", no_wrap=not c.wrap)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    cells = [[_cell(v) for v in row] for row in ([[c.title for c in columns]] if header else []) + list(rows)]
    widths = [max((len(r[i]) for r in cells), default=0) for i in range(len(columns))]
    for r in cells:
        padded = [v.rjust(w) if c.right else v.ljust(w) for v, w, c in zip(r, widths, columns)]
        click.echo(GAP.join(padded).rstrip())


def _cell(value: str) -> str:
    """A value on one line without tabs: a name may hold either, a row may not."""
    return value.replace("\t", "\\t").replace("\n", "\\n")


def listing(fmt: str, columns: Sequence[Column], records: Sequence[Any], row: Callable[[Any], Sequence[str]],
            doc: Callable[[Any], Any]) -> None:
    """Print ``records`` as ``--format`` asks: a JSON list of ``doc(r)``, or a table of ``row(r)``."""
    if fmt == "json":
        print_json([doc(r) for r in records])
    else:
        print_table(columns, [row(r) for r in records])
