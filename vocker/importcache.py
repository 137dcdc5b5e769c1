"""Re-importing an unchanged venv without reading it: a per-path cache of import outcomes.

Like git's index, a file whose size, mtime, ctime, inode and mode are unchanged is
taken to be unchanged. Files modified within the last two seconds are not cached,
so an edit in the same timestamp tick is never missed. ``--rehash`` bypasses it.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

import attrs
from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection

from . import cbor, db
from .store import Store
from .tree import Entry

#: Bump when import normalisation changes, so old outcomes are not reused.
RULES = "1"
RACY_SECONDS = 2.0


@attrs.frozen
class Outcome:
    entry: Entry | None  # None: the file was dropped (e.g. a local direct_url.json)
    templated: bool


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_mode}"


def context_for(given: str, real: str | None) -> str:
    return f"{RULES}|{given}|{real or ''}"


def load(store: Store, root: str, context: str) -> dict[str, tuple[str, Outcome]]:
    """path -> (stat key, outcome) for everything cached below ``root``."""
    lo, hi = root.rstrip("/") + "/", root.rstrip("/") + "0"  # "0" sorts right after "/"
    out = {}
    with store.read() as conn:
        rows = conn.execute(select(db.import_cache).where(db.import_cache.c.path >= lo, db.import_cache.c.path < hi,
                                                          db.import_cache.c.context == context))
        for r in rows:
            try:
                entry = Entry.from_cbor(cbor.loads(r.outcome, "cache entry")) if r.outcome is not None else None
            except Exception:  # a bad cache row is just a miss
                continue
            out[r.path] = (r.stat, Outcome(entry, bool(r.templated)))
    return out


def save(conn: Connection, context: str, rows: Iterable[tuple[str, os.stat_result, Outcome]]) -> None:
    """Record outcomes of files old enough not to change again within their timestamp tick."""
    cutoff = (time.time() - RACY_SECONDS) * 1e9
    values = [{"path": path, "context": context, "stat": stat_key(st), "templated": o.templated,
               "outcome": cbor.dumps(o.entry.to_cbor()) if o.entry is not None else None}
              for path, st, o in rows if st.st_mtime_ns < cutoff and st.st_ctime_ns < cutoff]
    if values:
        stmt = insert(db.import_cache)
        conn.execute(stmt.on_conflict_do_update(index_elements=["path"], set_={
            c: stmt.excluded[c] for c in ("context", "stat", "outcome", "templated")}), values)
