"""kill -9 of export and build leaves nothing that `vocker gc` (or the next export) does not
remove (issue 11, item 15): scratch directories live in the store's tmp/ under the shared
lock, or, beside an export destination on another file system, are recorded for the next
export to sweep."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from test_crash import reap, wait_for


def make_tree(root: Path, files: int = 48) -> Path:
    """A tree whose export takes long enough to be killed in the middle (~1 MiB per file)."""
    bulk = root / "bulk"
    bulk.mkdir(parents=True)
    for i in range(files):
        (bulk / f"f{i:03d}.txt").write_bytes(random.Random(i).randbytes(1 << 19).hex().encode())
    return root


def spawn(vocker, *args: object, tmpdir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The CLI in its own process group, with a private TMPDIR (so /tmp leftovers are seen)."""
    full = dict(os.environ, **(env or {}), VOCKER_HOME=str(vocker.home), TMPDIR=str(tmpdir), NO_COLOR="1")
    return subprocess.Popen([str(vocker.exe), *map(str, args)], env=full, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool]) -> None:
    try:
        assert wait_for(proc, condition), "the command ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        reap(proc)


def scratch_dirs(*places: Path, pattern: str) -> list[Path]:
    return [p for place in places if place.is_dir() for p in place.glob(pattern)]


def has_files(dirs: list[Path], at_least: int) -> bool:
    with contextlib.suppress(OSError):
        return any(sum(1 for _ in d.rglob("*.txt")) >= at_least for d in dirs)
    return False


def assert_clean(vocker, home: Path, tmpdir: Path, beside: Path) -> None:
    assert list(tmpdir.iterdir()) == [], "temporary files left in TMPDIR"
    assert [p.name for p in beside.iterdir() if ".vocker-" in p.name] == [], "scratch left beside the destination"
    assert list((home / "tmp").iterdir()) == [], "scratch left in the store"
    assert vocker("verify").stdout.startswith("OK:")


@pytest.fixture
def private_tmp(tmp_path: Path) -> Path:
    d = tmp_path / "TMPDIR"
    d.mkdir()
    return d


def test_a_killed_export_leaves_nothing_after_gc(vocker, vocker_home: Path, tmp_path: Path,
                                                private_tmp: Path) -> None:
    vocker("image", "import", make_tree(tmp_path / "tree"), "-t", "bulk")
    out = tmp_path / "out"
    proc = spawn(vocker, "export", "bulk", out / "env", tmpdir=private_tmp)  # makes out/ too
    kill_when(proc, lambda: has_files(scratch_dirs(out, vocker_home / "tmp", pattern=".env.vocker-*"), 4))
    vocker("gc")
    assert_clean(vocker, vocker_home, private_tmp, out)
    assert not (out / "env").exists()
    vocker("export", "bulk", out / "env")  # and the same export then works
    assert len(list((out / "env" / "bulk").iterdir())) == 48


def test_a_killed_build_leaves_nothing_after_gc(vocker, vocker_home: Path, tmp_path: Path, private_tmp: Path,
                                               wheels_dir: Path, uv_env: dict[str, str]) -> None:
    proc = spawn(vocker, "build", "alpha==1.0", "gamma==1.0", "--no-index", "--find-links", wheels_dir,
                 "-t", "app", tmpdir=private_tmp, env=uv_env)
    kill_when(proc, lambda: bool(scratch_dirs(private_tmp, vocker_home / "tmp", pattern="vocker-build-*/env")))
    vocker("gc")
    assert_clean(vocker, vocker_home, private_tmp, tmp_path)
    assert "app" not in vocker("images").stdout


def _other_file_system(tmp_path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        return shm
    return None


def test_a_killed_export_to_another_file_system_is_swept_by_the_next_export(
        vocker, vocker_home: Path, tmp_path: Path, private_tmp: Path) -> None:
    other = _other_file_system(tmp_path)
    if other is None:
        pytest.skip("needs /dev/shm on another file system than the test's directory")
    vocker("image", "import", make_tree(tmp_path / "tree"), "-t", "bulk")
    out = other / f"vocker-test-{os.getpid()}-{random.randrange(1 << 30)}"
    out.mkdir()
    try:
        proc = spawn(vocker, "export", "bulk", out / "env", tmpdir=private_tmp)
        kill_when(proc, lambda: has_files(scratch_dirs(out, pattern=".env.vocker-*"), 4))
        assert scratch_dirs(out, pattern=".env.vocker-*"), "a rename across file systems cannot work from tmp/"
        vocker("gc")
        vocker("export", "bulk", tmp_path / "elsewhere")  # any later export removes it
        assert_clean(vocker, vocker_home, private_tmp, out)
        assert [p.name for p in (vocker_home / "exports").iterdir() if not p.name.startswith(".")] == []
        vocker("export", "bulk", out / "env")
        assert len(list((out / "env" / "bulk").iterdir())) == 48
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)
