"""A user who may not use FUSE: one line saying why and how to fix it, exports still work,
and the pytest plugin skips its mount tests with that reason.

Run as root: the test creates a user of its own (useradd) and runs vocker as that user
(setpriv) in a private mount namespace, where only the directories the interpreter lives
in are made enterable (this machine's Python may sit under /root). /dev/fuse must be
closed to other users, as it is on a machine without the fuse group set up.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from mounthelp import checked_tmpdir, mounted_under

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "userdel", "setpriv", "unshare"))
    or not os.path.exists("/dev/fuse") or bool(os.stat("/dev/fuse").st_mode & 0o006),
    reason="needs root, useradd/setpriv/unshare, and a /dev/fuse closed to other users")

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


@pytest.fixture
def stranger() -> Iterator[pwd.struct_passwd]:
    """A fresh user in no supplementary group; deleted afterwards."""
    name = f"vk{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", "--user-group", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shared(stranger: pwd.struct_passwd) -> Iterator[Path]:
    """A directory the user owns (its store, home and files); cleaned of mounts and removed afterwards."""
    with checked_tmpdir("vocker-nofuse-") as where:
        os.chown(where, stranger.pw_uid, stranger.pw_gid)
        yield where


def _closed_dirs(path: str) -> list[str]:
    """Ancestors of path that other users may not enter (such as /root)."""
    out, parts = [], Path(path).parts
    for i in range(2, len(parts)):
        d = os.path.join(*parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            out.append(d)
    return out


def as_user(user: pwd.struct_passwd, home: Path, *cmd: str | Path) -> subprocess.CompletedProcess[str]:
    """Run cmd as user in a private mount namespace where the interpreter's directories are enterable:
    each closed directory gets an enterable stand-in (mode 0711) holding only the way down."""
    setup = []
    needed = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    for i, closed in enumerate(_closed_dirs(needed)):
        child = needed[len(closed) + 1:].split("/")[0]
        stand_in = home / f".standin{i}"
        setup += [f"mkdir -p {stand_in}/{child}", f"chmod 711 {stand_in}",
                  f"mount --bind {shlex.quote(os.path.join(closed, child))} {stand_in}/{child}",
                  f"mount --rbind {stand_in} {shlex.quote(closed)}"]
    script = " && ".join([*setup, "exec setpriv --reuid {0} --regid {1} --clear-groups \"$@\"".format(
        user.pw_uid, user.pw_gid)])
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "VOCKER_HOME": str(home / "store"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *map(str, cmd)], capture_output=True, text=True, env=env, cwd=home, timeout=120)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), proc.stderr
    return lines[0]


def test_a_user_without_fuse_access_is_told_why_and_can_still_export(make_venv, stranger, shared: Path) -> None:
    venv = make_venv(shared / "env", packages=("alpha==1.0",))
    subprocess.run(["chown", "-R", f"{stranger.pw_uid}:{stranger.pw_gid}", venv], check=True)
    vocker = Path(sys.executable).with_name("vocker")
    run = lambda *args: as_user(stranger, shared, vocker, *args)  # noqa: E731
    assert run("image", "import", venv, "-t", "app").returncode == 0

    (shared / "mnt").mkdir()
    os.chown(shared / "mnt", stranger.pw_uid, stranger.pw_gid)
    for args in (("mount", "app", shared / "mnt"), ("run", "app", "--", "python", "-c", "pass")):
        line = one_line(run(*args))
        assert "FUSE is not available" in line and "/dev/fuse" in line and "chmod 0666 /dev/fuse" in line, line
        assert "log:" not in line  # never a log file that is gone by the time it is read
    assert not mounted_under(shared)
    assert run("ps").stdout.count("\n") <= 1  # no container was left behind either

    exported = run("export", "app", shared / "out")
    assert exported.returncode == 0, exported.stderr
    alpha = as_user(stranger, shared, shared / "out" / "bin" / "python", "-c", "import alpha; print(alpha.VALUE)")
    assert alpha.stdout.strip() == "1", alpha.stderr


def test_the_pytest_plugin_skips_with_the_reason(stranger, shared: Path) -> None:
    (shared / "test_app.py").write_text(
        "def test_mounts(vocker_mount):\n    vocker_mount('app:latest')\n    raise AssertionError('not skipped')\n")
    proc = as_user(stranger, shared, sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                   shared / "test_app.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert "vocker: FUSE is not available" in proc.stdout and "tests using vocker_mount are skipped" in proc.stdout
    assert "SKIPPED" in proc.stdout and "vocker_mount: FUSE is not available" in proc.stdout


def test_each_missing_piece_is_named(tmp_path: Path) -> None:
    """No device (a container started without it), no fusermount3: each says what to install or pass."""
    from vocker.fusecheck import problem

    no_device = problem(device=str(tmp_path / "fuse"))
    assert no_device is not None and f"there is no {tmp_path / 'fuse'}" in no_device
    assert "--device /dev/fuse" in no_device or "modprobe fuse" in no_device
    no_tool = problem(fusermount=str(tmp_path / "fusermount3"))
    assert no_tool is not None and "apt-get install fuse3" in no_tool
    assert all("'vocker export' works" in p for p in (no_device, no_tool))
