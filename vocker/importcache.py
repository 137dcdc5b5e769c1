"""Re-importing an unchanged venv without reading it: a per-directory cache of import outcomes.

Like git's index, a file whose size, mtime, ctime, inode and mode are unchanged is
taken to be unchanged. Files modified within the last two seconds are not cached, so
an edit in the same timestamp tick is never missed. ``--rehash`` bypasses the cache.

One compressed CBOR file per imported directory (and venv location), under the
store's ``cache/import/``: only a cache — a missing, stale or damaged file just
means files are read again; gc deletes them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Iterable

import attrs
import pyzstd

from . import cbor, normalize
from .store import Store
from .tree import Entry

RACY_SECONDS = 2.0


@attrs.frozen
class Outcome:
    entry: Entry | None  # None: the file was dropped (e.g. a local direct_url.json)
    templated: bool


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_mode}"


def context_for(given: str, real: str | None) -> str:
    return f"{normalize.RULES_VERSION}|{given}|{real or ''}"


def cache_dir(store: Store) -> Path:
    return store.root / "cache" / "import"


def _file(store: Store, context: str) -> Path:
    return cache_dir(store) / (hashlib.sha256(context.encode("utf-8", "surrogateescape")).hexdigest() + ".cbor.zst")


def load(store: Store, context: str) -> dict[str, tuple[str, Outcome]]:
    """path -> (stat key, outcome) recorded by the last import of this directory."""
    try:
        raw = cbor.loads(pyzstd.decompress(_file(store, context).read_bytes()), "import cache")
        if raw.get("context") != context:
            return {}
        out = {}
        for path, (key, entry, templated) in raw["files"].items():
            out[path] = (key, Outcome(Entry.from_cbor(entry) if entry is not None else None, bool(templated)))
        return out
    except Exception:  # absent or damaged: a cache miss, never an error
        return {}


def save(store: Store, context: str, rows: Iterable[tuple[str, os.stat_result, Outcome]]) -> None:
    """Replace the cache of this directory (files too young to trust are left out)."""
    cutoff = (time.time() - RACY_SECONDS) * 1e9
    files = {path: [stat_key(st), o.entry.to_cbor() if o.entry is not None else None, o.templated]
             for path, st, o in rows if st.st_mtime_ns < cutoff and st.st_ctime_ns < cutoff}
    target = _file(store, context)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = pyzstd.compress(cbor.dumps({"v": 1, "context": context, "files": files}), 3)
        # 0600: small files' contents are in it, as in the database.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
    except BaseException as exc:  # Ctrl-C too: no temp file is left behind, and it goes on up
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(exc, OSError):  # a cache that cannot be written is no error
            raise
