"""Write hostile or damaged contents straight into a store, as an attacker or a bad disk would.

The store's own writers validate everything, so tests that check how vocker treats
a tree it did not write (wrong sizes, bad names, trees that expand to millions of
files) put rows in its SQLite database directly. Canonical CBOR via cbor2, as the
format says; this module never imports the ``vocker`` package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import cbor2


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _db(home: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(home / "vocker.db", timeout=30))


def put_blob(home: Path, data: bytes) -> str:
    """Store ``data`` as a raw blob file with its row (no chunk digests: reads fall back to sha256)."""
    d = digest(data)
    path = home / "blobs" / "sha256" / d[7:9] / d[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with _db(home) as db, db:
        db.execute("INSERT OR IGNORE INTO blobs (digest, size, stored_size, codec) VALUES (?, ?, ?, 'raw')",
                   (d, len(data), len(data)))
    return d


def put_tree(home: Path, entries: list[dict[str, Any]]) -> str:
    """Record a tree node exactly as given (entries in the given order, names unchecked)."""
    data = cbor2.dumps({"v": 1, "e": entries}, canonical=True)
    d = digest(data)
    with _db(home) as db, db:
        db.execute("INSERT OR IGNORE INTO objects (digest, kind, data) VALUES (?, 'tree', ?)", (d, data))
    return d


def file(name: str, data: bytes = b"", *, size: int | None = None, blob: str | None = None) -> dict[str, Any]:
    """A file entry: inline ``data``, or a ``blob`` digest with a claimed ``size``."""
    if blob is not None:
        return {"n": name, "k": "f", "s": size, "h": blob}
    return {"n": name, "k": "f", "s": len(data) if size is None else size, "c": data}


def directory(name: str, tree: str) -> dict[str, Any]:
    return {"n": name, "k": "d", "h": tree}


def link(name: str, target: str) -> dict[str, Any]:
    return {"n": name, "k": "l", "l": target}


def sorted_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda e: e["n"].encode())


def put_image(home: Path, root_tree: str, tag: str) -> str:
    """A plain-tree image whose only layer is ``root_tree``, tagged ``tag`` (``name:tag``)."""
    data = cbor2.dumps({"v": 1, "kind": "tree", "layers": [root_tree]}, canonical=True)
    image_id = digest(data)
    with _db(home) as db, db:
        db.execute("INSERT OR IGNORE INTO objects (digest, kind, data) VALUES (?, 'manifest', ?)", (image_id, data))
        db.execute("INSERT OR IGNORE INTO images (id, size, files, created, provenance) VALUES (?, 0, 0, ?, ?)",
                   (image_id, time.time() - 10, json.dumps({"created_by": "storecraft"})))
        db.execute("INSERT OR REPLACE INTO tags (name, image_id) VALUES (?, ?)", (tag, image_id))
    return image_id


def damage_index(home: Path, index: str) -> None:
    """Overwrite the root page of one of the database's indexes with garbage, as a bad disk would."""
    with _db(home) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()
    with open(home / "vocker.db", "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes([0xA5]) * page_size)
