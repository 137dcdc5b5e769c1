"""Commands that look after the store: verify, gc, df, config."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..ui import RichReporter, err, human_size, out
from .common import cli, open_store, system, with_store_options
from .output import Column, format_option, print_json, print_table

if TYPE_CHECKING:
    from ..maintenance import GcResult
    from ..store import Store


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
    result = collect(open_store())
    out.print(f"Removed {result.blobs + result.orphans} blobs ({human_size(result.bytes)}), "
              f"{result.objects} trees/manifests, {result.pycs} cached pycs", markup=False)


def collect(store: Store) -> GcResult:
    """gc under the store's exclusive lock, saying so when it has to wait for it; unused warm
    mounts are released first (their daemons compile into the store and hold containers)."""
    from ..maintenance import gc
    from ..warm import release

    release(store)

    with store.lock_exclusive(blocking=False) as got:
        if got:
            return gc(store)
    err.print("waiting for running imports/exports to finish...", markup=False)
    with store.lock_exclusive():
        return gc(store)


@system.command("prune")
def system_prune() -> None:
    """Remove throw-away containers nothing mounts and untagged images nothing uses, then gc.

    Tagged images and named containers stay. Says what was removed and the space freed.
    """
    from ..prune import prune_containers, prune_images

    store = open_store()
    gone = prune_containers(store)
    images = prune_images(store)
    result = collect(store)
    out.print(f"Removed {gone.containers} throw-away container(s), {len(images.images)} untagged image(s) and "
              f"{result.blobs + result.orphans} blobs; freed {human_size(gone.container_bytes + result.bytes)}",
              markup=False)


@cli.command("df")
@format_option
def df_cmd(fmt: str) -> None:
    """Show space used: logical vs stored size, dedup and compression ratios, what is reclaimable.

    Stored size includes the metadata database (small files live inline in it) and the
    bytecode cache; the compression ratio is that of the images' blob files alone. Reclaimable is what
    'vocker system prune' would free in blob files (untagged images nothing uses, and
    what no image needs).
    """
    from ..maintenance import usage
    from ..prune import reclaimable

    store = open_store()
    u = usage(store)
    free = reclaimable(store)
    if fmt == "json":
        print_json({"store": str(store.root), "images": u.images, "files": u.files, "logical": u.logical,
                    "unique": u.unique, "stored": u.stored, "database": u.database, "bytecode_cache": u.cache,
                    "reclaimable": free, "dedup_ratio": round(u.dedup_ratio, 4),
                    "compression_ratio": round(u.compression_ratio, 4)})
        return
    rows = (("store", str(store.root)), ("images", str(u.images)), ("files", str(u.files)),
            ("logical size", human_size(u.logical)), ("unique content", human_size(u.unique)),
            ("stored on disk", human_size(u.stored)), ("  metadata database", human_size(u.database)),
            ("bytecode cache", human_size(u.cache)), ("reclaimable", human_size(free)),
            ("dedup ratio", f"{u.dedup_ratio:.2f}x"), ("compression ratio", f"{u.compression_ratio:.2f}x"))
    print_table((Column("WHAT"), Column("VALUE", right=True)), rows, header=False)


@cli.command("config")
@with_store_options
@format_option
def config_cmd(fmt: str) -> None:
    """Show which store is in use and why."""
    from ..home import resolve_home

    root, why = resolve_home()
    exists = (root / "vocker.db").exists()
    if fmt == "json":
        print_json({"store": str(root), "because": why, "exists": exists})
        return
    print_table((Column("WHAT"), Column("VALUE")),
                (("store", str(root)), ("because", why), ("exists", "yes" if exists else "no (created on first use)")),
                header=False)
