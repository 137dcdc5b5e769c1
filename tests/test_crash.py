"""Concurrency and interruption: parallel importers, kill -9 and Ctrl-C during an import.

After every interruption the store must verify, and an image is either fully recorded
(and exports) or absent. The store's database is read with sqlite3/cbor2 directly, so
these checks do not rely on vocker's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cbor2
import pytest

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"  # venvs use this Python
BULK_FILES = 32
BULK_SIZE = 1 << 20  # 1 MiB of hex text per file (32 MiB in all), ~2x compressible, all different


# --------------------------------------------------------------------------- helpers


def write_bulk(venv: Path, generation: int = 0, vary: int = 0) -> dict[str, str]:
    """Big generated files in the venv's site-packages; returns {file name: sha256 digest}.

    The first ``vary`` files get content specific to ``generation`` (a rebuilt venv);
    the rest are the same in every generation.
    """
    bulk = venv / SITE / "bulkdata"
    bulk.mkdir(exist_ok=True)
    digests = {}
    for i in range(BULK_FILES):
        seed = f"bulk-{i}-gen-{generation}" if i < vary else f"bulk-{i}"
        data = random.Random(seed).randbytes(BULK_SIZE // 2).hex().encode()
        (bulk / f"chunk{i:03d}.txt").write_bytes(data)
        digests[f"chunk{i:03d}.txt"] = "sha256:" + hashlib.sha256(data).hexdigest()
    return digests


def blob_path(home: Path, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return home / "blobs" / "sha256" / hexdigest[:2] / hexdigest


def blob_files(home: Path) -> set[str]:
    return {"sha256:" + p.name for p in (home / "blobs" / "sha256").glob("*/*")}


def query(home: Path, sql: str, *args: object) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(home / "vocker.db", timeout=30)) as db:
        return db.execute(sql, args).fetchall()


def store_state(home: Path) -> dict[str, set[str]]:
    """Images, tags and blob rows, after checking that every recorded image is complete."""
    if not (home / "vocker.db").exists():
        return {"images": set(), "tags": set(), "blobs": set(), "needed": set()}
    tables = {name for (name,) in query(home, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "images" not in tables:  # killed before the schema was committed
        return {"images": set(), "tags": set(), "blobs": set(), "needed": set()}
    images = {i for (i,) in query(home, "SELECT id FROM images")}
    tags = dict(query(home, "SELECT name, image_id FROM tags"))
    objects = dict(query(home, "SELECT digest, data FROM objects"))
    blobs = {d for (d,) in query(home, "SELECT digest FROM blobs")}
    assert set(tags.values()) <= images, f"a tag names a missing image: {tags}"
    needed: set[str] = set()
    for image_id in images:
        assert image_id in objects, f"image {image_id} recorded without its manifest"
        stack = list(cbor2.loads(objects[image_id])["layers"])
        while stack:
            digest = stack.pop()
            assert digest in objects, f"image {image_id} recorded without tree {digest}"
            for e in cbor2.loads(objects[digest])["e"]:
                if e["k"] == "d":
                    stack.append(e["h"])
                elif e["k"] == "f" and "h" in e:
                    needed.add(e["h"])
    assert needed <= blobs, f"recorded images need unrecorded blobs: {sorted(needed - blobs)[:3]}"
    missing = {d for d in blobs if not blob_path(home, d).is_file()}
    assert not missing, f"blob rows without files: {sorted(missing)[:3]}"
    return {"images": images, "tags": set(tags), "blobs": blobs, "needed": needed}


def spawn(vocker, *args: object, home: Path, log: Path) -> subprocess.Popen:
    """Start the vocker CLI in its own process group, stdout and stderr to files."""
    env = dict(os.environ, VOCKER_HOME=str(home), NO_COLOR="1", COLUMNS="200", PYTHONIOENCODING="utf-8")
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([str(vocker.exe), *map(str, args)], env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def reap(proc: subprocess.Popen) -> None:
    """If a CLI this test started still runs (the test failed), kill its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its group: also an interpreter probe it started
        proc.wait(timeout=30)


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll until ``condition`` holds (True) or the process exits first (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.002)
    return True


def python_catches_sigint(pid: int, script: Path) -> bool:
    """True once the exec'd CLI's interpreter has installed its SIGINT handler (early in start-up).

    Before the exec, the forked child still shows pytest's handler, hence the cmdline check.
    """
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        if str(script).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return False
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def verify_in_process(home: Path) -> None:
    """What ``vocker verify`` does (same function), without a 0.5 s interpreter start."""
    from vocker.maintenance import verify
    from vocker.store import Store

    store = Store.open(home)
    try:
        checked, problems = verify(store)
    finally:
        store.close()
    assert problems == [], [p.line() for p in problems]


# --------------------------------------------------------------------------- tests


def test_two_concurrent_importers_into_one_store(make_venv, vocker, vocker_home: Path, tmp_path: Path) -> None:
    a = make_venv(tmp_path / "env-a", packages=("alpha==1.0", "gamma==1.0"))
    b = make_venv(tmp_path / "env-b", creator="uv", packages=("beta==1.0", "gamma==1.0"))
    # vocker_home is still empty: both processes also race to create the store itself.
    procs = [spawn(vocker, "image", "import", env, "-t", tag, home=vocker_home, log=tmp_path / tag)
             for env, tag in ((a, "a"), (b, "b"))]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            reap(p)
    for tag, code in zip("ab", codes):
        err = (tmp_path / f"{tag}.err").read_text()
        assert code == 0, f"importer {tag} exited {code}: {err}"
        assert "Traceback" not in err
    listed = vocker("images").stdout
    assert "a:latest" in listed and "b:latest" in listed, listed
    state = store_state(vocker_home)
    assert len(state["images"]) == 2 and state["tags"] == {"a:latest", "b:latest"}
    assert blob_files(vocker_home) == state["blobs"] == state["needed"]
    big = query(vocker_home, "SELECT digest FROM blobs WHERE size > 290000")
    assert len(big) == 1  # gamma's big module: one blob for both images
    assert vocker("verify").stdout.startswith("OK:")


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Switching a new database to WAL mode does not wait on SQLite's busy timeout; without a
    retry, ~8 % of processes failed with "database is locked" (this test failed in its first rounds)."""
    code = ("import sys; from pathlib import Path; from vocker.db import Database; print(flush=True); "
            "sys.stdin.readline(); Database(Path(sys.argv[1]))")
    for i in range(20):
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{i}.db")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
        try:
            for p in procs:  # all imported and waiting: then start them together
                p.stdout.readline()  # type: ignore[union-attr]
            for p in procs:
                p.stdin.write(b"go\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            for p in procs:
                _, err = p.communicate(timeout=60)
                assert p.returncode == 0, err.decode()
        finally:
            for p in procs:
                p.kill()
                p.wait()


def test_kill_9_during_import_leaves_a_consistent_store(make_venv, vocker, vocker_home: Path,
                                                        tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", packages=("gamma==1.0",))
    vary = BULK_FILES // 2
    # When to kill: after a delay from the start (interpreter start-up, walking), or once
    # the import has written something (a temp file, then some of the bulk blobs).
    triggers: list[tuple[str, float]] = [("delay", 0.05), ("delay", 0.3), ("tmp", 1), ("blobs", 0.25),
                                         ("blobs", 0.6)]
    completed = 0
    for generation, (kind, amount) in enumerate(triggers):
        digests = write_bulk(venv, generation, vary)  # the venv is rebuilt: half its data changes
        varying = [blob_path(vocker_home, d) for name, d in digests.items() if int(name[5:8]) < vary]
        tmp = vocker_home / "tmp"
        log = tmp_path / f"kill{generation}"
        proc = spawn(vocker, "image", "import", venv, "-t", "big", home=vocker_home, log=log)
        try:
            if kind == "delay":
                time.sleep(amount)
                alive = proc.poll() is None
            elif kind == "tmp":
                alive = wait_for(proc, lambda: tmp.is_dir() and bool(os.listdir(tmp)))
            else:
                # A share of this generation's own blobs is in place (so some will be orphans).
                want = max(1, int(amount * len(varying)))
                alive = wait_for(proc, lambda: sum(p.exists() for p in varying) >= want)
            if alive:
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=30)
        finally:
            reap(proc)
        if alive and code == 0:  # it exited between the check and the kill (a loaded machine)
            alive = False
        if not alive:  # it finished before the trigger: then it must have succeeded
            assert code == 0, log.with_suffix(".err").read_text()
        else:
            assert code == -signal.SIGKILL

        state = store_state(vocker_home)  # raises if anything is half-recorded
        verify_in_process(vocker_home)
        if set(digests.values()) <= state["needed"]:
            # This generation got recorded (the kill came too late): completely, and it exports.
            completed += 1
            dest = tmp_path / f"exported{generation}"
            vocker("export", "big", dest)
            name, digest = next(iter(digests.items()))
            assert "sha256:" + hashlib.sha256((dest / SITE / "bulkdata" / name).read_bytes()).hexdigest() == digest
        else:
            assert alive, "the import exited 0 but its image is not recorded"

    # A normal import of the venv as it is now succeeds and reuses what it can.
    vocker("image", "import", venv, "-t", "big")
    state = store_state(vocker_home)
    assert "big:latest" in state["tags"]
    orphans = blob_files(vocker_home) - state["blobs"]
    leftovers = list((vocker_home / "tmp").iterdir())
    if not completed:
        assert orphans, "the kills left no orphan blobs: the triggers did not work"
    proc = vocker("gc")
    assert proc.stdout.startswith(f"Removed {len(orphans)} blobs"), (proc.stdout, len(orphans), leftovers)
    assert blob_files(vocker_home) == store_state(vocker_home)["blobs"]
    assert list((vocker_home / "tmp").iterdir()) == []
    assert vocker("verify").stdout.startswith("OK:")
    assert set(digests.values()) <= store_state(vocker_home)["needed"]  # the venv's current data


def test_ctrl_c_during_import(make_venv, vocker, vocker_home: Path, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", packages=("gamma==1.0",))
    digests = write_bulk(venv)
    paths = [blob_path(vocker_home, d) for d in digests.values()]
    vocker("images")  # the store exists before the import starts
    proc = spawn(vocker, "image", "import", venv, "-t", "big", home=vocker_home, log=tmp_path / "import")
    try:
        assert wait_for(proc, lambda: any(p.exists() for p in paths)), "import ended before any bulk blob"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        reap(proc)
    err = (tmp_path / "import.err").read_text()
    assert code == 130, (code, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vocker: interrupted"), err
    assert store_state(vocker_home)["images"] == set()
    assert vocker("verify").stdout.startswith("OK:")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see the CLI start up")
def test_ctrl_c_right_after_start(vocker, vocker_home: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file.txt").write_text("x" * 1000)
    proc = spawn(vocker, "image", "import", tree, home=vocker_home, log=tmp_path / "import")
    try:
        assert wait_for(proc, lambda: python_catches_sigint(proc.pid, vocker.exe), timeout=30)
        # Past the interpreter's own start-up: importing the CLI's dependencies (their compiled
        # modules get mapped), well before main() can run.
        maps = Path(f"/proc/{proc.pid}/maps")
        deadline = time.monotonic() + 0.15
        wait_for(proc, lambda: time.monotonic() > deadline or any(
            marker in maps.read_text() for marker in ("_sqlite3", "/pyzstd/", "/cbor2/")), timeout=30)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        reap(proc)
    err = (tmp_path / "import.err").read_text()
    assert "Traceback" not in err, err[-300:]
    assert code == 130, (code, err)


def small_tree(path: Path, files: int = 300) -> Path:
    """A plain tree of distinct small files (one blob each): an import of ~0.5 s, most of it the CLI."""
    path.mkdir()
    rng = random.Random(1)
    for i in range(files):
        (path / f"f{i:03d}.txt").write_bytes(rng.randbytes(1500).hex().encode())
    return path


def recorded_images(home: Path) -> int:
    """How many images the store records (0 while there is no database), without creating anything."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{home / 'vocker.db'}?mode=ro", uri=True, timeout=0.2)) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def check_interrupted_import(proc: subprocess.Popen, home: Path, log: Path) -> tuple[int, bool]:
    """The CLI exited 130 with one truthful line (or 0, having finished first); the store verifies.

    Returns (exit code, whether the image is recorded)."""
    code = proc.wait(timeout=60)
    err = log.with_suffix(".err").read_text()
    assert "Traceback" not in err, err[-600:]
    recorded = bool(store_state(home)["images"])
    if code == 0:
        assert recorded, err
    else:
        assert code == 130, (code, err)
        lines = [line for line in err.splitlines() if line.strip() and "no pyvenv.cfg" not in line]
        assert len(lines) == 1 and lines[0].startswith("vocker: interrupted"), err
        if recorded:
            assert "nothing was recorded" not in err and "is recorded" in err, err
        else:
            assert "is recorded" not in err, err
    if (home / "vocker.db").exists():
        verify_in_process(home)
    return code, recorded


def test_ctrl_c_at_many_points_of_an_import_tells_the_truth(vocker, tmp_path: Path) -> None:
    """SIGINT at fixed delays across a whole import (start-up, store creation, staging, commit,
    the import cache's save, the output, the exit): exit 130 with one true line, or 0."""
    tree = small_tree(tmp_path / "tree")
    outcomes = []
    for i in range(24):
        home = tmp_path / f"home{i}"
        log = tmp_path / f"import{i}"
        proc = spawn(vocker, "image", "import", tree, "-t", "t", home=home, log=log)
        try:
            time.sleep(0.2 + 0.025 * i)  # 0.2-0.8 s: the interpreter starts in ~0.15 s, the import ends by ~0.6 s
            proc.send_signal(signal.SIGINT)
            outcomes.append(check_interrupted_import(proc, home, log))
        finally:
            reap(proc)
    assert {code for code, _ in outcomes} >= {130}, outcomes  # some runs were interrupted, not all finished


def test_ctrl_c_right_after_the_commit_says_the_image_is_recorded(vocker, tmp_path: Path) -> None:
    """The interrupt lands as soon as the image is in the database: the import cache's save, the
    output or the exit are interrupted, never to say "nothing was recorded" (it said so before)."""
    tree = small_tree(tmp_path / "tree", files=1000)
    time.sleep(2.1)  # older than the import cache's 2 s: its save (after the commit) widens the window
    interrupted = 0
    for i in range(10):
        home = tmp_path / f"home{i}"
        log = tmp_path / f"import{i}"
        proc = spawn(vocker, "image", "import", tree, "-t", "t", home=home, log=log)
        try:
            wait_for(proc, lambda: recorded_images(home) > 0)
            proc.send_signal(signal.SIGINT)
            code, recorded = check_interrupted_import(proc, home, log)
        finally:
            reap(proc)
        assert recorded
        interrupted += code == 130
    assert interrupted, "every import finished before its interrupt: the test did not test"


def test_an_interrupt_once_the_transaction_is_over_stays_an_interrupt(tmp_path: Path) -> None:
    """A transaction SQLite already ended (a full disk rolls back by itself) and then Ctrl-C: the
    KeyboardInterrupt goes on up, not replaced by "cannot rollback - no transaction is active"."""
    from vocker.db import Database

    database = Database(tmp_path / "vocker.db")
    try:
        with pytest.raises(KeyboardInterrupt):
            with database.write() as conn:
                conn.execute("INSERT INTO tags (name, image_id) VALUES ('a:latest', 'x')")
                conn.execute("ROLLBACK")  # as SQLite does itself on SQLITE_FULL
                raise KeyboardInterrupt
        with database.read() as conn:
            assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
    finally:
        database.close()
