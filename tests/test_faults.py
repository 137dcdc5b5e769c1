"""Fault injection: kill -9 at random points of import, gc, export, build and mount.

A fixed seed picks when each command is killed (anywhere from its start-up to its
end), so a failure reproduces. After every kill the store must be consistent (an image
is fully recorded or absent) and verify; at the end, after `vocker gc` and
unmounting what `vocker ps` lists, nothing may be left anywhere: no orphan blob, no
scratch in the store, beside an export's destination or in TMPDIR, no mount, no
container. Every image that exists still holds exactly what the pristine one did.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS  # noqa: E402
from mounthelp import mounted_under  # noqa: E402
from test_crash import SITE, blob_files, reap, store_state, verify_in_process  # noqa: E402

pytestmark = MOUNTS

SEED = 20261130
OPERATIONS = ("import", "export", "gc", "build", "mount")
TRIALS = 15
BUILDS = (("alpha==2.0",), ("gamma==1.0",), ("alpha==1.0", "gamma==1.0"), ("beta",))  # the last: calibration


def paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def contents(root: Path, *, as_if_at: Path | None = None) -> dict[str, bytes]:
    """Every file's bytes and every link's target below ``root``; with ``as_if_at``, with the
    root's path spelled as that one (an export renders its own path into scripts)."""
    def spell(data: bytes) -> bytes:
        return data if as_if_at is None else data.replace(bytes(root), bytes(as_if_at))
    return {str(p.relative_to(root)): spell(os.fsencode(os.readlink(p)) if p.is_symlink() else p.read_bytes())
            for p in root.rglob("*") if p.is_symlink() or p.is_file()}


def test_kill_9_at_random_points_leaves_nothing_behind(make_venv, vocker, vocker_home: Path, wheels_dir: Path,
                                                      uv_env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    venv = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma"))
    bulk = venv / SITE / "bulk"
    bulk.mkdir()
    for i in range(6):  # enough work that a kill lands in the middle of it
        (bulk / f"part{i}.txt").write_bytes(random.Random(i).randbytes(1 << 20).hex().encode())
    vocker("image", "import", venv, "-t", "base")
    time.sleep(1.1)  # the image's files get its creation second once that has passed: all exports alike
    base_id = json.loads(vocker("image", "inspect", "base").stdout)["id"]
    vocker("export", "--audit", "base", tmp_path / "pristine")
    pristine = paths(tmp_path / "pristine")
    vocker("export", "base", tmp_path / "reference")
    reference = paths(tmp_path / "reference")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tmpdir = tmp_path / "tmpdir"  # the commands' TMPDIR: whatever they leave there shows
    tmpdir.mkdir()
    env = dict(os.environ, **uv_env, VOCKER_HOME=str(vocker_home), TMPDIR=str(tmpdir), NO_COLOR="1")
    commands = {
        "import": lambda n: ["image", "import", venv, "-t", f"imp{n}", "--rehash"],
        "export": lambda n: ["export", "base", scratch / f"export{n}"],
        "gc": lambda n: ["gc"],
        # a set not built yet each time (a cached build installs nothing)
        "build": lambda n: ["build", *BUILDS[n // len(OPERATIONS) % len(BUILDS)], "--no-index", "--find-links",
                            wheels_dir, "-t", f"built{n}"],
        "mount": lambda n: ["mount", "base", scratch / f"mount{n}"],
    }

    def start(operation: str, n: int) -> subprocess.Popen:
        return subprocess.Popen([str(vocker.exe), *map(str, commands[operation](n))], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)

    took = {}  # how long each command runs here: the kills land anywhere within it
    for operation in OPERATIONS:
        started = time.monotonic()
        assert start(operation, 3 * len(OPERATIONS)).wait(timeout=300) == 0, operation
        took[operation] = time.monotonic() - started
    vocker("unmount", scratch / f"mount{3 * len(OPERATIONS)}")
    log = []
    for n in range(TRIALS):
        operation = OPERATIONS[n % len(OPERATIONS)]
        delay = rng.uniform(0.02, 1.0) * took[operation]
        proc = start(operation, n)
        try:
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=120)
            err = proc.stderr.read().decode() if proc.stderr else ""  # type: ignore[union-attr]
        finally:
            reap(proc)
        log.append((n, operation, round(delay, 3), "killed" if killed else code))
        assert killed or code == 0, (log[-1], err)
        store_state(vocker_home)  # raises if anything is half-recorded
        verify_in_process(vocker_home)

    # Clean up as a user would: unmount what `vocker ps` lists, then gc.
    rows = [line.split() for line in vocker("ps").stdout.splitlines()[1:] if line.strip()]
    for row in rows:
        if row[-1] != "orphaned":  # a mount killed before it recorded itself: no mount point ("-")
            vocker("unmount", "--force", row[2])
    assert mounted_under(tmp_path) == [], (log, rows)
    vocker("gc")
    state = store_state(vocker_home)
    assert blob_files(vocker_home) == state["blobs"], log  # no orphan blob files
    assert list((vocker_home / "tmp").iterdir()) == [], log
    assert os.listdir(tmpdir) == [], log
    assert [p for p in os.listdir(scratch) if p.startswith(".")] == [], log
    with contextlib.closing(__import__("sqlite3").connect(vocker_home / "vocker.db")) as db:
        assert db.execute("SELECT name FROM containers").fetchall() == [], log
    verify_in_process(vocker_home)

    # What exists is whole: every import is the pristine image, every export complete.
    for tag in state["tags"]:
        if tag.startswith("imp"):
            assert json.loads(vocker("image", "inspect", tag).stdout)["id"] == base_id
    vocker("export", "--audit", "base", tmp_path / "after")
    assert paths(tmp_path / "after") == pristine
    for done in scratch.glob("export*"):
        assert paths(done) == reference, (done, log)
        got, want = contents(done), contents(tmp_path / "reference", as_if_at=done)
        differ = [k for k in sorted(want) if got.get(k) != want[k] and "activate" not in k]  # they name the dir
        assert differ == [], (done, log)
