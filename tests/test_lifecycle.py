"""Mount lifecycle under faults: hung daemons, concurrent mounts, killed CLIs, odd mount points.

Uses the store and image of test_containers.py (``img``) and conftest's cleanup fixture, so a
failing test leaves no mount or daemon behind. Processes a test stops (SIGSTOP) are killed in
its own cleanup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS, VockerRunner  # noqa: E402
from conftest import _find_vocker_exe as vocker_exe  # noqa: E402
from mounthelp import daemon_pids, force_cleanup, fuse_mounts, mounted_under, pid_alive, query, wait_for  # noqa: E402
from test_containers import (DATA, DATA_KEY_RAW, assert_unmounted, img, ps_rows,  # noqa: E402,F401
                             set_profile, src)

pytestmark = MOUNTS


def fuse_mounts_dev(mountpoint: Path) -> str:
    """major:minor of a FUSE mount (its connection), from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                return fields[2]
    raise AssertionError(f"{mountpoint} is not mounted")


def spawn(vocker, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    """Start the vocker CLI (as the ``vocker`` fixture runs it) without waiting for it."""
    env = dict(os.environ, VOCKER_HOME=str(vocker.home), NO_COLOR="1", COLUMNS="200")
    return subprocess.Popen([str(vocker.exe), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(proc: subprocess.CompletedProcess[str] | tuple[int, str], *words: str) -> None:
    code, stderr = (proc.returncode, proc.stderr) if not isinstance(proc, tuple) else proc
    assert code != 0 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), stderr
    assert all(w in lines[0] for w in words), stderr


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a daemon (it hangs: requests wait forever); kill it afterwards, pass or fail."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- item 6: force on a hung daemon


@pytest.mark.parametrize("via", ["path", "symlink"])
def test_force_unmount_of_a_hung_daemon_touches_nothing_in_the_mount(img: str, vocker, vocker_home: Path,
                                                                   tmp_path: Path, via: str) -> None:
    set_profile(vocker_home, None)  # no read-ahead: nothing has the mount root's attributes cached
    m = tmp_path / "m"
    link = tmp_path / "link"
    link.symlink_to(m.name)
    vocker("mount", img, m)
    # the daemon's pid, without a stat of the mount (mount_record's realpath would cache its attributes)
    (pid,), = query(vocker_home, "SELECT pid FROM mounts WHERE mountpoint = ?", str(m))
    with stopped(pid):
        prober = subprocess.Popen(["ls", str(m)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            assert prober.poll() is None, "the daemon should be hung (a request waiting for it)"
            proc = vocker("unmount", "--force", link if via == "symlink" else m, check=False, timeout=30)
            assert proc.returncode == 0, proc.stderr
            assert_unmounted(m)
            assert wait_for(lambda: prober.poll() is not None, timeout=10), "a request still waits"
        finally:
            prober.kill()
            prober.wait()
    assert ps_rows(vocker) == []
    assert query(vocker_home, "SELECT * FROM mounts") == [] and query(vocker_home, "SELECT * FROM containers") == []


def _abort_all(devs: list[str]) -> None:
    """Test cleanup: abort FUSE connections by major:minor (as the last resort of unmount --force)."""
    for dev in devs:
        major, minor = map(int, dev.split(":"))
        with contextlib.suppress(OSError):
            Path(f"/sys/fs/fuse/connections/{major << 20 | minor}/abort").write_text("1")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting fusectl needs root")
def test_force_unmount_aborts_the_connection_of_a_daemon_deadlocked_in_the_kernel(img: str, vocker,
                                                                                  vocker_home: Path) -> None:
    """The last resort: a daemon serving a mount inside its own writable layer (what mount refuses)
    deadlocks in the kernel, where SIGKILL cannot end it; only aborting its FUSE connection can."""
    from vocker import containers, mounting
    from vocker.store import Store

    store = Store.open(vocker_home)
    image_id = store.resolve(img)
    container, lock = containers.create_throwaway(store, image_id)
    m = containers.upper_dir(store, container.name) / "mnt"
    m.mkdir()
    r, w = os.pipe()
    config = {"store": str(store.root), "container": container.name, "image_id": image_id, "mountpoint": str(m),
              "read_only": False, "audit": False, "interpreter": None, "owner_pid": None, "ready_fd": w,
              "lock_fd": lock}
    mounting._start_daemon(store, config, containers.container_dir(store, container.name) / "daemon.log", r, w, lock)
    try:
        assert mounting._wait_ready(r).startswith("ok ")
    finally:
        os.close(r)
        os.close(lock)
    devs = [fuse_mounts_dev(m)]
    (pid,), = query(vocker_home, "SELECT pid FROM mounts WHERE mountpoint = ?", str(m))
    lister = subprocess.Popen(["ls", "-la", str(m)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert not wait_for(lambda: lister.poll() is not None, timeout=1), "no deadlock"
        proc = vocker("unmount", "--force", m, check=False, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert str(m) not in fuse_mounts()
        assert wait_for(lambda: lister.poll() is not None, timeout=10), "ls still waits"
        assert wait_for(lambda: not pid_alive(pid), timeout=10), "the daemon still lives"
    finally:
        _abort_all(devs)
        lister.kill()
        lister.wait()


# --------------------------------------------------------------------------- item 7: one mount per container


def test_concurrent_mounts_of_one_named_container_one_wins(img: str, vocker, tmp_path: Path) -> None:
    vocker("create", img, "--name", "dev")
    procs = [spawn(vocker, "mount", "dev", tmp_path / f"m{i}") for i in range(8)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    winners = [i for i, (code, _, _) in enumerate(results) if code == 0]
    try:
        assert len(winners) == 1, results
        for code, _, stderr in results:
            if code != 0:
                one_line_error((code, stderr), "container dev is already mounted")
        assert mounted_under(tmp_path) == [os.path.realpath(tmp_path / f"m{winners[0]}")]
        rows = ps_rows(vocker)
        assert len(rows) == 1 and rows[0][0] == "dev" and rows[0][-1] == "healthy", rows
    finally:
        for i in winners:
            vocker("unmount", tmp_path / f"m{i}")
    # the lock goes with the daemon: mounting again works, and so does rm (refused while mounted)
    vocker("mount", "dev", tmp_path / "again")
    one_line_error(vocker("rm", "dev", check=False), "container dev is mounted")
    vocker("rm", "--force", "dev")
    assert_unmounted(tmp_path / "again")
    assert ps_rows(vocker) == []


def test_concurrent_mounts_at_one_empty_directory_one_wins_and_is_listed(img: str, vocker, tmp_path: Path) -> None:
    """Different containers racing for one mount point: each mount is recorded by its daemon
    before it mounts, and a record of a live daemon is never replaced (nor forgotten by another)."""
    where = tmp_path / "m"
    where.mkdir()
    procs = [spawn(vocker, "mount", img, where) for _ in range(6)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    try:
        assert len(winners) >= 1, results
        rows = ps_rows(vocker)
        live = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if f" {os.path.realpath(where)} " in line]
        # every mount the kernel has there is one `vocker ps` lists (stacked mounts included)
        assert len(rows) == len(live) == len(winners), (rows, live, results)
    finally:
        for _ in winners:
            vocker("unmount", where, check=False)
    assert mounted_under(tmp_path) == [] and ps_rows(vocker) == []


# --------------------------------------------------------------------------- item 8: mount points in the store


def test_mount_points_inside_the_store_are_refused(img: str, vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("create", img, "--name", "dev")
    into_store = tmp_path / "into-store"
    into_store.symlink_to(vocker_home)
    targets = [vocker_home / "mnt", vocker_home / "containers" / "dev" / "upper" / "mnt", into_store / "mnt",
               into_store, vocker_home / "containers" / "dev" / "upper"]
    for target in targets:
        for ref in ("dev", img):
            proc = vocker("mount", ref, target, check=False, timeout=60)
            one_line_error(proc, "inside the store")
            assert proc.returncode == 2
    assert mounted_under(vocker_home) == [] and mounted_under(tmp_path) == []
    assert not (vocker_home / "mnt").exists() and not (vocker_home / "containers" / "dev" / "upper" / "mnt").exists()
    assert [r[0] for r in query(vocker_home, "SELECT name FROM containers")] == ["dev"]


# --------------------------------------------------------------------------- item 10: symlinks as mount points


def test_a_symlink_as_mount_point_is_resolved_the_same_way_by_mount_and_unmount(img: str, vocker, tmp_path: Path
                                                                                ) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "abs").symlink_to(target)
    (tmp_path / "rel").symlink_to("target")
    for link, unmount_with in ((tmp_path / "abs", tmp_path / "abs"), (tmp_path / "rel", target),
                               (target, tmp_path / "rel")):
        out = vocker("mount", img, link).stdout
        assert f" at {target} " in out, out
        assert str(target) in fuse_mounts() and (tmp_path / "abs").is_symlink() and (tmp_path / "rel").is_symlink()
        assert [r[2] for r in ps_rows(vocker)] == [str(target)]
        assert (link / DATA_KEY_RAW).read_bytes() == DATA[DATA_KEY_RAW]
        proc = vocker("unmount", unmount_with, check=False)
        assert proc.returncode == 0, proc.stderr
        assert_unmounted(target)
        assert ps_rows(vocker) == []


# --------------------------------------------------------------------------- item 9: kill -9 of `vocker mount`


def _kill_when(vocker, home: Path, where: Path, trigger: Callable[[], bool]) -> None:
    proc = spawn(vocker, "mount", "img", where)
    deadline = time.monotonic() + 30
    while proc.poll() is None and not trigger() and time.monotonic() < deadline:
        pass
    proc.kill()
    proc.wait()


def test_kill_9_of_vocker_mount_leaves_nothing_unlisted_or_blocking(img: str, vocker, vocker_home: Path,
                                                                   tmp_path: Path) -> None:
    containers = vocker_home / "containers"

    def count(pattern: str) -> Callable[[], int]:
        return lambda: len(list(containers.glob(pattern)))

    triggers: list[tuple[str, Callable[[], int]]] = [
        ("a container directory appears", count("tmp-*")),
        ("a daemon starts (its log appears)", count("tmp-*/daemon.log")),
        ("a mount appears", lambda: len(mounted_under(tmp_path))),
    ]
    trials = 0
    for name, counter in triggers:
        for _ in range(2):
            before = counter()
            _kill_when(vocker, vocker_home, tmp_path / f"m{trials}", lambda: counter() > before)
            trials += 1
    for delay in (0.0, 0.1, 0.2, 0.3, 0.5):  # fixed moments of the CLI's life
        started = time.monotonic()
        _kill_when(vocker, vocker_home, tmp_path / f"m{trials}", lambda: time.monotonic() - started > delay)
        trials += 1
    # daemons the killed CLIs started finish starting (they mount, or fail and exit)
    assert wait_for(lambda: len(daemon_pids(vocker_home)) == len(mounted_under(tmp_path)), timeout=15)
    live = set(mounted_under(tmp_path))
    rows = ps_rows(vocker)
    listed = {r[2] for r in rows if r[-1] == "healthy"}
    assert live <= listed, f"live mounts that vocker ps does not list: {sorted(live - listed)}\n{rows}"
    for mountpoint in sorted(live):
        vocker("unmount", mountpoint)
    assert mounted_under(tmp_path) == []
    proc = vocker("image", "rm", img, check=False)
    assert proc.returncode == 0, f"{proc.stderr}\n{query(vocker_home, 'SELECT * FROM containers')}"
    assert query(vocker_home, "SELECT * FROM containers") == [] and query(vocker_home, "SELECT * FROM mounts") == []
    assert wait_for(lambda: not daemon_pids(vocker_home), timeout=5)
    assert not containers.exists() or list(containers.iterdir()) == []


def test_ps_lists_an_orphaned_throw_away_container_and_unmount_cleans_it(img: str, vocker, vocker_home: Path,
                                                                         tmp_path: Path) -> None:
    # what a `vocker mount` killed before it started its daemon leaves (its lock died with it)
    orphan = vocker_home / "containers" / "tmp-0123456789ab"
    (orphan / "upper").mkdir(parents=True)
    (orphan / "work").mkdir()
    image_id = query(vocker_home, "SELECT id FROM images")[0][0]
    import sqlite3
    with contextlib.closing(sqlite3.connect(vocker_home / "vocker.db")) as db, db:
        db.execute("INSERT INTO containers (name, image_id, created, persistent) VALUES (?, ?, 0, 0)",
                   (orphan.name, image_id))
    rows = ps_rows(vocker)
    assert [(r[0], r[-1]) for r in rows] == [(orphan.name, "orphaned")], rows
    m = tmp_path / "m"
    vocker("mount", img, m)
    vocker("unmount", m)
    assert ps_rows(vocker) == [] and query(vocker_home, "SELECT * FROM containers") == []
    assert not orphan.exists()
    vocker("image", "rm", img)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_unmount_on_a_full_disk_says_so_and_leaves_nothing_that_blocks(img: str, vocker_home: Path,
                                                                       tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        shutil.copytree(vocker_home, small / "home", symlinks=True)
        cli = VockerRunner(small / "home", vocker_exe())
        m = tmp_path / "m"
        cli("mount", img, m)
        (m / "written.txt").write_text("lost at unmount")
        filler = small / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (64 << 10))
        proc = cli("unmount", m, check=False)
        assert_unmounted(m)
        if proc.returncode != 0:  # what SQLite could not write is said, in one line
            one_line_error(proc, f"unmounted {m}", "full")
        filler.unlink()
        assert {r[-1] for r in ps_rows(cli)} <= {"stale", "orphaned"}  # what is left is shown as such
        cli("image", "rm", img)
        assert query(small / "home", "SELECT * FROM containers") == []
        assert query(small / "home", "SELECT * FROM mounts") == []
        assert list((small / "home" / "containers").iterdir()) == []
    finally:
        force_cleanup(tmp_path)
        subprocess.run(["umount", "-l", str(small)], check=False)
