"""The low-level FUSE driver (fs_backends/fuse_lowlevel.py, ``VOCKER_FUSE=lowlevel``).

The whole mount suite runs with it too (``VOCKER_FUSE=lowlevel scripts/test ...``); these
tests run by default: the overlay conformance scenarios against a plain directory, and
what only this driver does or must get right on its own: its node table across renames
and removals of open files, the kernel's cached listings after changes, and rename flags.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mounthelp import mount_record  # noqa: E402
from test_bytecode import fresh_mount  # noqa: E402,F401
from test_bytecode import \
    test_a_walk_of_a_fresh_mount_compiles_nothing_and_an_import_then_uses_served_bytecode as _walk_then_import  # noqa: E402
from test_overlay import (SCENARIOS, conform, home, mounted, no_leftover_mounts, plain, tree,  # noqa: E402,F401
                          pytestmark)

RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(autouse=True)
def lowlevel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOCKER_FUSE", "lowlevel")  # read by the mount daemon


@pytest.fixture
def mnt(home: Path, tmp_path: Path, lowlevel: None) -> Iterator[Path]:
    with mounted(home, "t", tmp_path / "mnt") as where:
        yield where


def test_the_daemon_serves_with_the_lowlevel_driver(mnt: Path, home: Path) -> None:
    name = mount_record(home, mnt)[0]
    log = (home / "containers" / name / "daemon.log").read_text()
    assert "driver fs_backends.fuse_lowlevel" in log


@pytest.mark.parametrize("ops", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_conformance(mnt: Path, plain: Path, ops: list[tuple]) -> None:
    times = [op[1] for op in ops if op[0] == "utime"]
    conform(mnt, plain, ops, mtimes=tuple(times), owners=any(op[0] == "chown" for op in ops))


def test_cached_listings_follow_changes(mnt: Path, plain: Path) -> None:
    """Listings are kept by the kernel: each change through the mount must still show."""
    seen: dict[Path, list[list[str]]] = {}
    for root in (plain, mnt):
        listings = seen[root] = [sorted(os.listdir(root / "d")), sorted(os.listdir(root / "d"))]
        (root / "d" / "new").write_text("n")
        listings.append(sorted(os.listdir(root / "d")))
        os.rename(root / "d" / "new", root / "sub2" / "moved")
        (root / "d" / "sub" / "x").unlink()
        os.mkdir(root / "d" / "nd")
        listings += [sorted(os.listdir(root / p)) for p in ("d", "sub2", "d/sub")]
        os.rmdir(root / "d" / "nd")
        os.symlink("one.txt", root / "d" / "ln")
        os.link(root / "d" / "two.txt", root / "d" / "hard")
        os.mkfifo(root / "d" / "fifo")
        listings.append(sorted(os.listdir(root / "d")))
    assert seen[mnt] == seen[plain]


def test_listings_are_kept_without_opendir_and_dropped_by_a_reset(mnt: Path, home: Path) -> None:
    """The kernel is told once (ENOSYS) to send no OPENDIR: it keeps every listing from then on,
    so a change made outside any request (a warm mount's reset) must drop the kept ones."""
    from vocker import swap, warm
    from vocker.store import Store

    name = mount_record(home, mnt)[0]
    (mnt / "d" / "new").write_text("n")
    (mnt / "d" / "sub" / "x").unlink()
    before = {p: sorted(os.listdir(mnt / p)) for p in ("d", "d/sub", "sub2", "")}
    assert "new" in before["d"] and "x" not in before["d/sub"]
    assert {p: sorted(os.listdir(mnt / p)) for p in before} == before  # kept: no request answers these
    assert warm.control(swap.control_address(Store.open(home), name), "reset") == "ok"
    after = {p: sorted(os.listdir(mnt / p)) for p in before}
    assert "new" not in after["d"] and "x" in after["d/sub"]
    assert after["sub2"] == before["sub2"] and after[""] == before[""]
    log = (home / "containers" / name / "daemon.log").read_text()
    assert log.count("opendir: answered ENOSYS") == 1  # the kernel asked once, then never again


def test_renamed_directories_keep_their_contents_reachable(mnt: Path) -> None:
    """The node table moves what is below a renamed directory (kernel entries cached for 60 s)."""
    (mnt / "a" / "b").mkdir(parents=True)
    (mnt / "a" / "b" / "f").write_text("deep")
    fd = os.open(mnt / "a" / "b", os.O_RDONLY)
    try:
        os.rename(mnt / "a", mnt / "z")
        assert (mnt / "z" / "b" / "f").read_text() == "deep"
        with open(os.open("f", os.O_RDONLY, dir_fd=fd)) as f:  # through the node the kernel kept
            assert f.read() == "deep"
        (mnt / "z" / "b" / "g").write_text("new")
        assert sorted(os.listdir(fd)) == ["f", "g"]
    finally:
        os.close(fd)
    assert not (mnt / "a").exists()


@pytest.mark.parametrize("how", ["unlink", "rename_over"])
def test_a_file_removed_while_open_is_still_usable(mnt: Path, plain: Path, how: str) -> None:
    got = []
    for root in (plain, mnt):
        (root / "victim").write_text("before")
        (root / "other").write_text("o")
        fd = os.open(root / "victim", os.O_RDWR)
        try:
            if how == "unlink":
                os.unlink(root / "victim")
            else:
                os.rename(root / "other", root / "victim")
            os.pwrite(fd, b"written after", 0)
            st = os.fstat(fd)
            got.append((os.pread(fd, 100, 0), st.st_size, st.st_nlink, sorted(os.listdir(root))[:3],
                        (root / "victim").read_text() if how != "unlink" else None))
        finally:
            os.close(fd)
    assert got[1] == got[0]


def _renameat2(old: Path, new: Path, flags: int) -> int:
    _libc.syscall.restype = ctypes.c_long
    rc = _libc.syscall(316, -100, os.fsencode(old), -100, os.fsencode(new), flags)  # SYS_renameat2 (x86_64)
    return 0 if rc == 0 else ctypes.get_errno()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="renameat2 by syscall number")
def test_rename_noreplace_refuses_an_existing_name(mnt: Path, plain: Path) -> None:
    for root in (plain, mnt):
        (root / "new").write_text("n")
        assert _renameat2(root / "new", root / "small.txt", RENAME_NOREPLACE) == errno.EEXIST
        assert (root / "small.txt").read_text() == "hello world\n"
        assert _renameat2(root / "new", root / "fresh", RENAME_NOREPLACE) == 0
        assert (root / "fresh").read_text() == "n"


def test_a_pycache_listing_that_compiling_may_change_is_not_kept(fresh_mount, vocker, vocker_home: Path) -> None:
    """A generated __pycache__ lists pycs not compiled yet; one whose source does not compile
    goes at the compile, which no request of the kernel's makes: such a listing is not cached."""
    _walk_then_import(fresh_mount, vocker, vocker_home)
