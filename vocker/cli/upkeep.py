"""Commands that look after the store: verify, gc, df, config."""

from __future__ import annotations

import sys


from ..ui import RichReporter, err, human_size, out, table as make_table
from .common import open_store, cli, with_store_options


@cli.command("verify")
def verify_cmd() -> None:
    """Check the store database, then re-hash every blob and tree the images need; exit 1 naming each problem."""
    from ..maintenance import verify

    checked, problems = verify(open_store(), reporter=RichReporter())
    for p in problems:
        out.print(p.line(), markup=False)
    if problems:
        err.print(f"vocker: verify found {len(problems)} problem(s) in {checked} objects", markup=False)
        sys.exit(1)
    out.print(f"OK: {checked} objects verified", markup=False)


@cli.command("gc")
def gc_cmd() -> None:
    """Delete blobs and trees no image needs (waits for running imports, exports and builds).

    Deletes nothing, and says so, when the store is inconsistent (run 'vocker verify').
    """
    from ..maintenance import gc

    store = open_store()
    with store.lock_exclusive(blocking=False) as got:
        if got:
            result = gc(store)
    if not got:
        err.print("waiting for running imports/exports to finish...", markup=False)
        with store.lock_exclusive():
            result = gc(store)
    out.print(f"Removed {result.blobs + result.orphans} blobs ({human_size(result.bytes)}), "
              f"{result.objects} trees/manifests, {result.pycs} cached pycs", markup=False)


@cli.command("df")
def df_cmd() -> None:
    """Show space used: logical vs stored size, dedup and compression ratios.

    Stored size includes the metadata database (small files live inline in it) and the
    bytecode cache; the compression ratio is that of the images' blob files alone.
    """
    from ..maintenance import usage

    store = open_store()
    u = usage(store)
    table = make_table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in (("store", str(store.root)), ("images", str(u.images)), ("files", str(u.files)),
                         ("logical size", human_size(u.logical)), ("unique content", human_size(u.unique)),
                         ("stored on disk", human_size(u.stored)), ("  metadata database", human_size(u.database)),
                         ("  bytecode cache", human_size(u.cache)),
                         ("dedup ratio", f"{u.dedup_ratio:.2f}x"),
                         ("compression ratio", f"{u.compression_ratio:.2f}x")):
        table.add_row(label, value)
    out.print(table)


@cli.command("config")
@with_store_options
def config_cmd() -> None:
    """Show which store is in use and why."""
    from ..home import resolve_home

    root, why = resolve_home()
    table = make_table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("store", str(root))
    table.add_row("because", why)
    table.add_row("exists", "yes" if (root / "vocker.db").exists() else "no (created on first use)")
    out.print(table)
