"""Store upkeep through the CLI: ``vocker verify``, ``vocker gc`` and ``vocker df``.

The expectations are computed independently of vocker: the tests read the store's
SQLite database and decode tree nodes with cbor2 themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cbor2
import pytest

from vocker.db import SCHEMA_VERSION

# The two images of the shared store: "one" and "two" both contain gamma (so its
# big module is one shared blob); each has its own random (incompressible, so raw)
# data file, and its own alpha RECORD.
SPECS = {
    "one": ("alpha==1.0", "gamma==1.0"),
    "two": ("beta==1.0", "gamma==1.0"),  # beta pulls in alpha 2.0
}
EXTRA = "share/vocker-test"
SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"  # venvs use this Python
BIG_PY = f"{SITE}/gamma/big.py"


# --------------------------------------------------------------------------- helpers


def add_extra(venv: Path, name: str, seed: int, size: int = 4096) -> bytes:
    data = random.Random(seed).randbytes(size)
    path = venv / EXTRA / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def query(home: Path, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(home / "vocker.db", timeout=30)) as db:
        return db.execute(sql, args).fetchall()


def tag_ids(home: Path) -> dict[str, str]:
    return dict(query(home, "SELECT name, image_id FROM tags"))


class Reach:
    """What one image needs, found by walking its trees with cbor2 (not with vocker)."""

    def __init__(self, home: Path, image_id: str) -> None:
        objects = dict(query(home, "SELECT digest, data FROM objects"))
        manifest = cbor2.loads(objects[image_id])
        self.trees: set[str] = set()
        self.blobs: set[str] = set()
        self.dirs: dict[str, str] = {}  # image path -> tree digest
        self.files: dict[str, str] = {}  # image path -> blob digest (non-inline files)
        self.inline: dict[bytes, int] = {}  # distinct inlined contents -> size
        (root,) = manifest["layers"]
        stack = [("", root)]
        while stack:
            prefix, digest = stack.pop()
            self.dirs[prefix] = digest
            self.trees.add(digest)
            for e in cbor2.loads(objects[digest])["e"]:
                path = f"{prefix}/{e['n']}".lstrip("/")
                if e["k"] == "d":
                    stack.append((path, e["h"]))
                elif e["k"] == "f" and "h" in e:
                    self.blobs.add(e["h"])
                    self.files[path] = e["h"]
                elif e["k"] == "f":
                    self.inline[e["c"]] = e["s"]


def blob_path(home: Path, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return home / "blobs" / "sha256" / hexdigest[:2] / hexdigest


def blob_files(home: Path) -> set[str]:
    return {"sha256:" + p.name for p in (home / "blobs" / "sha256").glob("*/*")}


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def problem_line(proc: subprocess.CompletedProcess[str], digest: str) -> str:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if digest in line]
    assert lines, f"verify output does not name {digest}:\n{proc.stdout}\n{proc.stderr}"
    return lines[0]


def assert_verify_fails(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not proc.stdout.startswith("OK")


def df_values(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    values = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^\s*(\w[\w ]*?)\s{2,}(\S.*?)\s*$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def parse_size(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]


# --------------------------------------------------------------------------- the shared store


@pytest.fixture(scope="module")
def _pristine(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {}


@pytest.fixture
def two_images(_pristine: dict, tmp_path_factory: pytest.TempPathFactory, make_venv, vocker, vocker_home: Path):
    """``vocker_home`` holds images tagged one and two (built once per module, then copied)."""
    if "store" not in _pristine:
        root = tmp_path_factory.mktemp("pristine")
        store = root / "store"
        venvs = {}
        for seed, (name, packages) in enumerate(SPECS.items(), start=1):
            venvs[name] = make_venv(root / name, packages=packages)
            add_extra(venvs[name], name, seed)
            vocker("image", "import", venvs[name], "-t", name, env={"VOCKER_HOME": str(store)})
        _pristine.update(store=store, venvs=venvs)
    shutil.copytree(_pristine["store"], vocker_home, dirs_exist_ok=True)
    ids = tag_ids(vocker_home)
    assert set(ids) == {"one:latest", "two:latest"} and len(set(ids.values())) == 2
    return {"ids": {name: ids[f"{name}:latest"] for name in SPECS}, "venvs": _pristine["venvs"]}


# --------------------------------------------------------------------------- verify


def test_verify_ok_on_fresh_store_with_two_images(two_images, vocker, vocker_home: Path) -> None:
    proc = vocker("verify")
    reaches = [Reach(vocker_home, i) for i in two_images["ids"].values()]
    blobs = {d for (d,) in query(vocker_home, "SELECT digest FROM blobs")}
    assert blobs == set().union(*(r.blobs for r in reaches))  # nothing but what the images need
    expected = len(blobs) + len(set().union(*(r.trees for r in reaches))) + len(reaches)
    assert proc.stdout.strip() == f"OK: {expected} objects verified", proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("which", ["raw", "zstd"])
def test_verify_detects_flipped_byte_in_blob(two_images, vocker, vocker_home: Path, which: str) -> None:
    ids = two_images["ids"]
    one = Reach(vocker_home, ids["one"])
    # raw: one.bin is random data only image one has; zstd: gamma's big module, in both images.
    path = f"{EXTRA}/one.bin" if which == "raw" else BIG_PY
    digest = one.files[path]
    [(codec,)] = query(vocker_home, "SELECT codec FROM blobs WHERE digest = ?", digest)
    assert codec == which
    flip_byte(blob_path(vocker_home, digest))

    proc = vocker("verify", check=False)
    assert_verify_fails(proc)
    line = problem_line(proc, digest)
    assert "one:latest" in line
    if which == "raw":
        assert "two:latest" not in line  # two does not use this blob
    else:
        assert "two:latest" in line
    assert "1 problem" in proc.stderr


def test_verify_drops_wrong_recorded_chunk_digests(two_images, vocker, vocker_home: Path) -> None:
    digest = Reach(vocker_home, two_images["ids"]["one"]).files[f"{EXTRA}/one.bin"]
    with contextlib.closing(sqlite3.connect(vocker_home / "vocker.db", timeout=30)) as db:
        with db:
            db.execute("INSERT OR REPLACE INTO blob_checks (digest, chunk_size, blake3) VALUES (?, ?, ?)",
                       (digest, 128 << 10, b"\0" * 32))
    proc = vocker("verify", check=False)
    assert_verify_fails(proc)
    assert "wrong chunk digests" in problem_line(proc, digest)
    assert query(vocker_home, "SELECT * FROM blob_checks WHERE digest = ?", digest) == []  # a cache: dropped
    assert vocker("verify").stdout.startswith("OK:")


def test_verify_records_missing_chunk_digests(two_images, vocker, vocker_home: Path) -> None:
    """A schema-3 store (sha256 digests of large blobs' chunks only) is upgraded when opened,
    its images still read, and one verify records the chunk digests of every blob."""
    before = query(vocker_home, "SELECT digest, chunk_size, blake3 FROM blob_checks ORDER BY digest")
    assert len(before) == len(query(vocker_home, "SELECT digest FROM blobs"))  # import records them all
    with contextlib.closing(sqlite3.connect(vocker_home / "vocker.db", timeout=30)) as db:
        with db:
            db.execute("DELETE FROM blob_checks")
            db.execute("CREATE TABLE blob_chunks (digest VARCHAR PRIMARY KEY, chunk_size INTEGER, digests BLOB)")
            db.execute("CREATE TABLE pyc_images (image_id VARCHAR NOT NULL, magic VARCHAR NOT NULL)")  # to schema 5
        db.execute("PRAGMA user_version = 3")
    assert vocker("export", "one", vocker_home.parent / "exported").returncode == 0  # reads check the sha256
    assert query(vocker_home, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(vocker_home, "SELECT name FROM sqlite_master WHERE name IN ('blob_chunks', 'pyc_images')") == []
    assert vocker("verify").stdout.startswith("OK:")
    after = query(vocker_home, "SELECT digest, chunk_size, blake3 FROM blob_checks ORDER BY digest")
    assert set(before) <= set(after)  # the export added pyc blobs (with their digests)
    assert len(after) == len(query(vocker_home, "SELECT digest FROM blobs"))


def test_verify_detects_deleted_blob_file(two_images, vocker, vocker_home: Path) -> None:
    ids = two_images["ids"]
    digest = Reach(vocker_home, ids["two"]).files[f"{EXTRA}/two.bin"]
    blob_path(vocker_home, digest).unlink()

    proc = vocker("verify", check=False)
    assert_verify_fails(proc)
    line = problem_line(proc, digest)
    assert "missing" in line
    assert "two:latest" in line and "one:latest" not in line


def test_verify_detects_corrupt_tree_node(two_images, vocker, vocker_home: Path) -> None:
    ids = two_images["ids"]
    gamma = f"{SITE}/gamma"
    one, two = Reach(vocker_home, ids["one"]), Reach(vocker_home, ids["two"])
    digest = one.dirs[gamma]
    assert two.dirs[gamma] == digest  # the gamma directory node is shared
    [(data,)] = query(vocker_home, "SELECT data FROM objects WHERE digest = ?", digest)
    bad = data.replace(b"big.py", b"BIG.py")  # still valid CBOR, no longer this digest
    assert bad != data
    with contextlib.closing(sqlite3.connect(vocker_home / "vocker.db")) as db, db:
        db.execute("UPDATE objects SET data = ? WHERE digest = ?", (bad, digest))

    proc = vocker("verify", check=False)
    assert_verify_fails(proc)
    line = problem_line(proc, digest)
    assert "one:latest" in line and "two:latest" in line


def test_verify_detects_flipped_byte_in_zstd_seek_table(two_images, vocker, vocker_home: Path) -> None:
    digest = Reach(vocker_home, two_images["ids"]["one"]).files[BIG_PY]
    path = blob_path(vocker_home, digest)
    flip_byte(path, path.stat().st_size - 10)  # inside the last seek-table entry

    proc = vocker("verify", check=False)
    assert_verify_fails(proc)
    assert digest in proc.stdout + proc.stderr


def test_export_with_corrupt_blob_fails_cleanly(two_images, vocker, vocker_home: Path, tmp_path: Path) -> None:
    digest = Reach(vocker_home, two_images["ids"]["one"]).files[BIG_PY]
    flip_byte(blob_path(vocker_home, digest))
    dest = tmp_path / "exported"

    proc = vocker("export", "one", dest, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error:"), proc.stderr
    assert digest in lines[0]
    assert "Traceback" not in proc.stderr
    assert not dest.exists() and not dest.is_symlink()
    assert list(tmp_path.glob(".exported.vocker-*")) == []


# --------------------------------------------------------------------------- gc


def test_gc_after_rm_keeps_the_other_image_and_frees_the_rest(two_images, vocker, vocker_home: Path,
                                                              tmp_path: Path) -> None:
    ids = two_images["ids"]
    one, two = Reach(vocker_home, ids["one"]), Reach(vocker_home, ids["two"])
    before = blob_files(vocker_home)
    only_one = one.blobs - two.blobs
    assert one.files[f"{EXTRA}/one.bin"] in only_one and one.files[BIG_PY] in two.blobs
    assert before == one.blobs | two.blobs

    assert vocker("image", "rm", "one").stdout.strip() == f"Deleted: {ids['one']}"
    proc = vocker("gc")
    assert re.match(rf"Removed {len(only_one)} blobs \(", proc.stdout), proc.stdout

    after = blob_files(vocker_home)
    assert after == two.blobs and len(after) == len(before) - len(only_one)
    assert {d for (d,) in query(vocker_home, "SELECT digest FROM blobs")} == two.blobs
    assert {d for (d,) in query(vocker_home, "SELECT digest FROM objects")} == two.trees | {ids["two"]}

    dest = tmp_path / "two-env"
    vocker("export", "two", dest)
    run = subprocess.run([dest / "bin" / "alpha-cli"], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "alpha 2.0\n"), run.stderr
    assert (dest / EXTRA / "two.bin").read_bytes() == random.Random(2).randbytes(4096)
    assert vocker("verify").stdout.startswith("OK:")


def test_gc_removes_orphan_blob_files_and_tmp_leftovers(two_images, vocker, vocker_home: Path) -> None:
    before = blob_files(vocker_home)
    data = random.Random(99).randbytes(1000)
    orphan_hex = hashlib.sha256(data).hexdigest()
    orphan = vocker_home / "blobs" / "sha256" / orphan_hex[:2] / orphan_hex
    orphan.write_bytes(data)
    tmp = vocker_home / "tmp"
    (tmp / f"{orphan_hex[:16]}.x1y2z3").write_bytes(data[:100])  # an interrupted blob write
    (tmp / "leftover-dir").mkdir()
    (tmp / "leftover-dir" / "file").write_bytes(b"x")

    proc = vocker("gc")
    assert re.match(r"Removed 1 blobs \(1\.0 kB\), 0 trees/manifests", proc.stdout), proc.stdout
    assert not orphan.exists()
    assert list(tmp.iterdir()) == []
    assert blob_files(vocker_home) == before


def test_gc_gives_a_grown_staging_directory_a_fresh_start(two_images, vocker, vocker_home: Path) -> None:
    """ext4 never shrinks a directory: one that staged many files stays large after they are gone."""
    tmp = vocker_home / "tmp"
    for i in range(3000):
        (tmp / f"{i:064x}.staged").touch()
    for f in tmp.iterdir():
        f.unlink()
    grown = tmp.stat().st_size
    vocker("gc")
    assert tmp.is_dir() and list(tmp.iterdir()) == []
    if grown > 64 << 10:  # file systems that shrink directories themselves have nothing to fix
        assert tmp.stat().st_size < grown
    export = vocker_home.parent / "after-gc"
    assert vocker("export", "one", export).returncode == 0  # the store still works after the swap
    assert vocker("verify").stdout.startswith("OK:")


def test_gc_waits_for_a_running_import(two_images, vocker, vocker_home: Path, tmp_path: Path) -> None:
    """Holding the store lock shared (as an import does) makes gc wait; an import that
    runs meanwhile keeps every blob it recorded."""
    before = blob_files(vocker_home)
    tree = tmp_path / "concurrent-tree"
    (tree / "pkg").mkdir(parents=True)
    new_data = random.Random(7).randbytes(3000)
    (tree / "pkg" / "data.bin").write_bytes(new_data)
    out, err = tmp_path / "gc.out", tmp_path / "gc.err"
    env = dict(os.environ, VOCKER_HOME=str(vocker_home), NO_COLOR="1")
    lock_fd = os.open(vocker_home / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
    proc = None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_SH)
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen([str(vocker.exe), "gc"], env=env, stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "waiting for running imports" not in err.read_text():
            assert proc.poll() is None, f"gc finished while the lock was held: {out.read_text()}{err.read_text()}"
            assert time.monotonic() < deadline, "gc never said it was waiting"
            time.sleep(0.05)
        waiting_since = time.monotonic()

        # A real import runs meanwhile (it takes the lock shared too).
        vocker("image", "import", tree, "-t", "three", timeout=60)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - waiting_since)))
        assert proc.poll() is None, "gc did not wait for the shared lock"
        assert before <= blob_files(vocker_home)

        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        assert proc.wait(timeout=60) == 0, err.read_text()
    finally:
        os.close(lock_fd)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(err.read_text().splitlines()) == 1  # just the waiting message
    assert out.read_text().startswith("Removed 0 blobs"), out.read_text()
    three = Reach(vocker_home, tag_ids(vocker_home)["three:latest"])
    assert blob_files(vocker_home) == before | three.blobs
    assert blob_path(vocker_home, three.files["pkg/data.bin"]).exists()
    assert vocker("verify").stdout.startswith("OK:")


# --------------------------------------------------------------------------- df


def test_df_sizes_and_ratios(two_images, make_venv, vocker, vocker_home: Path, tmp_path: Path) -> None:
    ids = two_images["ids"]
    first = df_values(vocker("df"))
    for label in ("images", "files", "logical size", "unique content", "stored on disk", "dedup ratio",
                  "compression ratio"):
        assert label in first, first
    assert first["images"] == "2"
    logical = sum(size for (size,) in query(vocker_home, "SELECT size FROM images"))
    reaches = [Reach(vocker_home, i) for i in ids.values()]
    needed = set().union(*(r.blobs for r in reaches))
    unique = sum(s for d, s in query(vocker_home, "SELECT digest, size FROM blobs") if d in needed)
    unique += sum({c: n for r in reaches for c, n in r.inline.items()}.values())  # inlined small files
    assert abs(parse_size(first["logical size"]) - logical) <= 0.001 * logical + 50
    assert abs(parse_size(first["unique content"]) - unique) <= 0.001 * unique + 50
    dedup = float(first["dedup ratio"].rstrip("x"))
    assert dedup > 1.5  # both images hold gamma's ~300 kB module, stored once
    assert dedup == pytest.approx(logical / unique, abs=0.011)
    assert float(first["compression ratio"].rstrip("x")) > 1.0  # big.py compresses ~3x
    blob_content, blob_stored = map(sum, zip(*(
        (size, stored) for d, size, stored in query(vocker_home, "SELECT digest, size, stored_size FROM blobs")
        if d in needed)))
    assert float(first["compression ratio"].rstrip("x")) == pytest.approx(blob_content / blob_stored, abs=0.011)
    database = parse_size(first["metadata database"])  # vocker.db and its WAL, which df's own connection moves
    assert database > 0
    stored = blob_stored + database + parse_size(first["bytecode cache"])
    assert abs(parse_size(first["stored on disk"]) - stored) <= 0.001 * stored + 100

    # The same packages (and data) installed at another path give the same image: df is unchanged.
    again = make_venv(tmp_path / "elsewhere" / "env", packages=SPECS["one"])
    add_extra(again, "one", 1)
    proc = vocker("image", "import", again, "-t", "one-again")
    assert proc.stdout.startswith("Already in store") and ids["one"] in proc.stdout
    assert tag_ids(vocker_home)["one-again:latest"] == ids["one"]
    second = df_values(vocker("df"))
    for label in ("images", "files", "logical size", "unique content", "dedup ratio"):
        assert second[label] == first[label], (label, first, second)


def test_df_stored_on_disk_includes_the_bytecode_cache(make_venv, vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "import", make_venv(tmp_path / "env", packages=("gamma==1.0",)), "-t", "g")
    vocker("export", "g", tmp_path / "out")  # compiles gamma's modules into the store's bytecode cache
    values = df_values(vocker("df"))
    cache = parse_size(values["bytecode cache"])
    assert cache > 10_000  # gamma's ~200 kB module compiles to some tens of kB at least
    every_blob = sum(stored for (stored,) in query(vocker_home, "SELECT stored_size FROM blobs"))
    database = parse_size(values["metadata database"])
    on_disk = every_blob + database  # every blob file the store holds, the cache's too
    assert abs(parse_size(values["stored on disk"]) - on_disk) <= 0.002 * on_disk + 1000, (values, on_disk)


def test_df_dedup_ratio_is_one_without_duplicates(vocker, tmp_path: Path) -> None:
    tree = tmp_path / "distinct"
    tree.mkdir()
    rng = random.Random(5)
    for i in range(200):
        (tree / f"small{i:03d}.txt").write_text(rng.randbytes(50).hex())  # 100 distinct bytes each
    (tree / "big.bin").write_bytes(rng.randbytes(1000))
    vocker("image", "import", tree, "-t", "distinct")
    values = df_values(vocker("df"))
    assert values["dedup ratio"] == "1.00x", values
