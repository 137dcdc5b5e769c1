"""SQLite metadata: the schema and a small pool of connections (stdlib ``sqlite3``).

WAL lets readers work while an import commits; BEGIN IMMEDIATE takes the write lock
up front so two concurrent importers queue instead of failing with "database is
locked" on a read-to-write upgrade. Plain ``sqlite3`` rather than an ORM/SQL toolkit:
importing one cost more than everything else a short command does (see
docs/benchmarks.md), and the queries here are few and simple.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

#: Bumped whenever SCHEMA changes; a store's ``PRAGMA user_version`` records the one it has.
SCHEMA_VERSION = 7

SCHEMA = """
-- Content blobs: files under blobs/sha256/, one per distinct file content.
CREATE TABLE IF NOT EXISTS blobs (
    digest VARCHAR PRIMARY KEY,
    size INTEGER NOT NULL,          -- uncompressed bytes
    stored_size INTEGER NOT NULL,   -- bytes on disk
    codec VARCHAR NOT NULL          -- "raw", "zstd" (one frame) or "zstd-seekable"
);
-- BLAKE3 of each chunk of a blob: reads check against these (fast), and a range read
-- checks only the chunks it uses. Derived from content that matched the blob's sha256:
-- a cache, recomputed when missing (vocker verify fills it in and drops wrong rows).
CREATE TABLE IF NOT EXISTS blob_checks (
    digest VARCHAR PRIMARY KEY,
    chunk_size INTEGER NOT NULL,    -- content bytes per chunk (the last may be shorter)
    blake3 BLOB NOT NULL            -- concatenated 32-byte BLAKE3 of each chunk
);
-- Schema 3 kept sha256 chunk digests of large blobs only; blob_checks replaces it.
DROP TABLE IF EXISTS blob_chunks;
-- Small structured objects kept in the database itself: tree nodes and manifests.
CREATE TABLE IF NOT EXISTS objects (
    digest VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,          -- "tree" | "manifest"
    data BLOB NOT NULL
);
-- What a mount of an image read first, read ahead by its next mounts (vocker.readahead): a cache.
CREATE TABLE IF NOT EXISTS read_profiles (
    image_id VARCHAR PRIMARY KEY,
    data BLOB NOT NULL              -- CBOR: [[path, [chunk, ...] or null], ...] in first-read order
);
CREATE TABLE IF NOT EXISTS images (
    id VARCHAR PRIMARY KEY,         -- digest of the manifest object
    size INTEGER NOT NULL,          -- logical bytes of all files
    files INTEGER NOT NULL,
    created FLOAT NOT NULL,         -- first time this store saw the image
    provenance TEXT NOT NULL        -- JSON, not part of the image ID
);
CREATE TABLE IF NOT EXISTS tags (
    name VARCHAR PRIMARY KEY,       -- "repo:tag"
    image_id VARCHAR NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_tags_image_id ON tags (image_id);
-- Derived bytecode, shared by every image with the same source and interpreter.
CREATE TABLE IF NOT EXISTS pycs (
    source VARCHAR NOT NULL,        -- digest of the .py content
    magic VARCHAR NOT NULL,         -- interpreter MAGIC_NUMBER, hex
    pyc VARCHAR,                    -- blob with the pyc body (after the 16-byte header), NULL if it does not compile
    ok BOOLEAN NOT NULL,
    PRIMARY KEY (source, magic)
);
-- Builds: the cache from a lock (pinned set + interpreter + options) to the image it gave.
CREATE TABLE IF NOT EXISTS builds (
    "key" VARCHAR PRIMARY KEY,
    image_id VARCHAR NOT NULL,
    lock TEXT NOT NULL,             -- the lock text as built
    info TEXT NOT NULL,             -- JSON: python facts, options, inputs
    created FLOAT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_builds_image_id ON builds (image_id);
-- Schema 6: mounts compile bytecode per directory when it is first looked into, so there is
-- no "every source of this image is compiled" record any more.
DROP TABLE IF EXISTS pyc_images;
-- Containers: an image plus a writable layer (containers/<name>/upper).
CREATE TABLE IF NOT EXISTS containers (
    name VARCHAR PRIMARY KEY,
    image_id VARCHAR NOT NULL,
    created FLOAT NOT NULL,
    persistent BOOLEAN NOT NULL     -- named: kept across mounts; else removed at unmount
);
CREATE INDEX IF NOT EXISTS ix_containers_image_id ON containers (image_id);
-- Schema 7: partial images (a lazy mount of a remote image): its manifest and trees are
-- recorded, its file contents fetched on first read from where it came from (vocker.oci.lazy).
-- Its blobs that are missing are not corruption; 'vocker pull' completes it and drops the row.
CREATE TABLE IF NOT EXISTS partial_images (
    image_id VARCHAR PRIMARY KEY,
    source TEXT NOT NULL,           -- JSON: {"ref": the REF it came from, "insecure": bool}
    indexes BLOB NOT NULL           -- canonical CBOR [[pack digest, pack size, index bytes], ...]
);
-- Live (or stale) mounts, one per mount point.
CREATE TABLE IF NOT EXISTS mounts (
    mountpoint VARCHAR PRIMARY KEY,
    container VARCHAR NOT NULL,
    pid INTEGER NOT NULL,
    created FLOAT NOT NULL,
    options TEXT NOT NULL           -- JSON: read_only, audit
);
"""

#: How long a writer waits for another one before "database is locked" (an import can be long).
BUSY_MS = 60_000

Error = sqlite3.Error
OperationalError = sqlite3.OperationalError
DatabaseError = sqlite3.DatabaseError


def damaged(exc: BaseException) -> bool:
    """Whether SQLite says the database file itself is damaged (not busy, locked or full)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(
        words in str(exc) for words in ("malformed", "not a database", "corrupt"))


class Database:
    """Connections to one store database, reused across blocks and threads.

    Each ``read()``/``write()`` block gets a connection of its own (nested blocks do
    not share a transaction); idle connections are kept for the next block. Call
    ``close()`` before ``fork()``: a child that opens the file while the parent has it
    open inherits SQLite's lock bookkeeping without the locks (and the parent's exit
    can then delete the WAL under it); a forked child never reuses pooled connections.
    """

    def __init__(self, path: Path, prefetch: bool = False) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _make_private(path)
        if prefetch:
            self._prefetch()
        with self._connection() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")  # two first-time processes must not race on CREATE TABLE
                try:
                    for statement in re.sub(r"--[^\n]*", "", SCHEMA).split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise

    def _prefetch(self) -> None:
        """Ask the kernel to read the database into its cache in the background (a mount
        daemon then meets no cold random reads on its first lookups; no-op where unsupported).

        Only before the first connection: closing any descriptor of the file drops every
        POSIX lock this process holds on it, SQLite's included.
        """
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError, AttributeError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        _use_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._pid = [], os.getpid()
            conn = self._idle.pop() if self._idle else None
        conn = conn or self._connect()
        try:
            yield conn
        except BaseException:
            conn.close()  # its state is unknown (e.g. interrupted mid-statement)
            raise
        with self._lock:
            if len(self._idle) < 16 and self._pid == os.getpid():
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for the block."""
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def write(self, wait_ms: int = BUSY_MS, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends normally, else rolled back.

        ``wait_ms``: how long to wait for another writer before "database is locked".
        ``durable=False`` skips the fsync at commit, for records that mean nothing after
        a power loss (mounts, throw-away containers): they still survive a crash or kill -9.
        """
        with self._connection() as conn:
            if wait_ms != BUSY_MS:
                conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            if not durable:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    _rollback(conn)
                    raise
                conn.execute("COMMIT")
            finally:
                if wait_ms != BUSY_MS:
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction. Ctrl-C right after a COMMIT returned, or an
    error SQLite already rolled back (a full disk), leaves none: a "cannot rollback" error then
    would replace the exception that is on its way up."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _make_private(path: Path) -> None:
    """The database file 0600 whatever the umask: it holds small files' contents inline.

    Created here, before SQLite opens it (SQLite gives its -wal and -shm files the
    database's mode); an existing wider one is tightened. Never opens an existing file:
    closing a descriptor would drop the POSIX locks this process's connections hold on it.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))
        return
    except FileExistsError:
        pass
    except OSError:
        return  # e.g. a read-only store: SQLite reports what matters
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL (a no-op once the file is in WAL mode). The switch needs an exclusive
    lock for which SQLite does not wait out its busy timeout, so two processes creating a
    store at once could fail with "database is locked": retry for as long as a writer waits."""
    deadline = time.monotonic() + BUSY_MS / 1000
    delay = 0.002
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def select_in(conn: sqlite3.Connection, query: str, values: Iterable[str], *before: object) -> Iterator[sqlite3.Row]:
    """Rows of ``query``, whose ``IN ({})`` takes ``values`` (after the ``before`` parameters),
    in slices small enough for SQLite's limit on bound parameters."""
    values = list(values)
    for i in range(0, len(values), 500):
        part = values[i:i + 500]
        yield from conn.execute(query.format(", ".join("?" * len(part))), [*before, *part])
