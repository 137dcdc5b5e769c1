"""SQLite metadata schema (SQLAlchemy Core) and engine setup.

WAL lets readers work while an import commits; BEGIN IMMEDIATE takes the write lock
up front so two concurrent importers queue instead of failing with "database is
locked" on a read-to-write upgrade.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text,
                        create_engine, event)
from sqlalchemy.engine import Engine

metadata = MetaData()

#: Content blobs: files under blobs/sha256/, one per distinct file content.
blobs = Table(
    "blobs", metadata,
    Column("digest", String, primary_key=True),
    Column("size", Integer, nullable=False),  # uncompressed bytes
    Column("stored_size", Integer, nullable=False),  # bytes on disk
    Column("codec", String, nullable=False),  # "raw" or "zstd" (seekable format)
)

#: Small structured objects kept in the database itself: tree nodes and manifests.
objects = Table(
    "objects", metadata,
    Column("digest", String, primary_key=True),
    Column("kind", String, nullable=False),  # "tree" | "manifest"
    Column("data", LargeBinary, nullable=False),
)

images = Table(
    "images", metadata,
    Column("id", String, primary_key=True),  # digest of the manifest object
    Column("size", Integer, nullable=False),  # logical bytes of all files
    Column("files", Integer, nullable=False),
    Column("created", Float, nullable=False),  # first time this store saw the image
    Column("provenance", Text, nullable=False),  # JSON, not part of the image ID
)

tags = Table(
    "tags", metadata,
    Column("name", String, primary_key=True),  # "repo:tag"
    Column("image_id", String, nullable=False, index=True),
)

#: Derived bytecode, shared by every image with the same source and interpreter.
pycs = Table(
    "pycs", metadata,
    Column("source", String, primary_key=True),  # digest of the .py content
    Column("magic", String, primary_key=True),  # interpreter MAGIC_NUMBER, hex
    Column("pyc", String, nullable=True),  # blob with the pyc body (after the 16-byte header); NULL: does not compile
    Column("ok", Boolean, nullable=False),
)


#: Builds: the cache from a lock (pinned set + interpreter + options) to the image it gave.
builds = Table(
    "builds", metadata,
    Column("key", String, primary_key=True),
    Column("image_id", String, nullable=False, index=True),
    Column("lock", Text, nullable=False),  # the lock text as built
    Column("info", Text, nullable=False),  # JSON: python facts, options, inputs
    Column("created", Float, nullable=False),
)

#: Images whose every source has cached bytecode for an interpreter magic (mounts skip the check).
pyc_images = Table(
    "pyc_images", metadata,
    Column("image_id", String, primary_key=True),
    Column("magic", String, primary_key=True),
)

#: Containers: an image plus a writable layer (containers/<name>/upper).
containers = Table(
    "containers", metadata,
    Column("name", String, primary_key=True),
    Column("image_id", String, nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("persistent", Boolean, nullable=False),  # named: kept across mounts; else removed at unmount
)

#: Live (or stale) mounts, one per mount point.
mounts = Table(
    "mounts", metadata,
    Column("mountpoint", String, primary_key=True),
    Column("container", String, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("options", Text, nullable=False),  # JSON: read_only, audit
)


def make_engine(path: Path) -> Engine:
    # A pool as large as the widest thread pool, so worker threads never open throw-away connections.
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60, "check_same_thread": False},
                           pool_size=16, max_overflow=16)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        write = conn.get_execution_options().get("vocker_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    with engine.connect() as conn:
        conn.execution_options(vocker_write=True)
        with conn.begin():  # two first-time processes must not race on CREATE TABLE
            metadata.create_all(conn)
    return engine
