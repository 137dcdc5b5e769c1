"""A mount shared with another user (``--allow-other``), against the default: only its owner.

Run as root, with the ``nobody`` user as the other user. The mount points live in a
directory of their own under /tmp that nobody may enter (pytest's tmp_path is private to
root); that directory is force-cleaned after each test, pass or fail.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import MOUNTS
from mounthelp import checked_tmpdir, mounted_under
from vocker.mounting import user_allow_other

pytestmark = [*MOUNTS, pytest.mark.skipif(os.geteuid() != 0, reason="runs commands as the user nobody: needs root")]

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory under /tmp the user nobody can enter; unmounted and removed afterwards."""
    with checked_tmpdir("vocker-allow-other-") as where:
        where.chmod(0o755)
        yield where


def as_nobody(*cmd: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], user="nobody", group=_nobody().pw_gid, extra_groups=[],
                          capture_output=True, text=True, env=env, cwd="/")


def test_only_the_owner_uses_a_mount_unless_it_allows_others(make_venv, vocker, shared: Path,
                                                              tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", packages=("alpha==1.0",))
    vocker("image", "import", venv, "-t", "img")
    mnt = shared / "mnt"
    mnt.mkdir()
    source = venv / SITE / "alpha" / "__init__.py"

    vocker("mount", "img", mnt)
    try:
        assert (mnt / SITE / "alpha" / "__init__.py").read_bytes() == source.read_bytes()  # the owner can
        denied = as_nobody("ls", mnt / SITE)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    finally:
        vocker("unmount", mnt)

    vocker("mount", "img", mnt, "--allow-other")
    try:
        read = as_nobody("cat", mnt / SITE / "alpha" / "__init__.py")
        assert read.returncode == 0 and read.stdout == source.read_text(), read
        # the store is private (0700), but the daemon, running as the owner, serves its files
        assert (vocker.home.stat().st_mode & 0o777) == 0o700
        walk = f"find {mnt} -type f -exec cat {{}} + | wc -c"
        mine = subprocess.run(["sh", "-c", walk], check=True, capture_output=True, text=True).stdout
        theirs = as_nobody("sh", "-c", f"set -e; {walk}")
        assert theirs.returncode == 0 and theirs.stdout == mine, theirs  # every file, pycs compiled for them too
        if as_nobody("test", "-x", os.path.realpath(mnt / "bin" / "python")).returncode == 0:
            ran = as_nobody(mnt / "bin" / "python", "-c", "import alpha; print(alpha.VALUE)",
                            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
            assert ran.returncode == 0 and ran.stdout.strip() == str(_alpha_value(source)), ran
        # permissions apply to the other user as on a disk (default_permissions)
        secret = mnt / "secret.txt"
        secret.write_text("owner only\n")
        secret.chmod(0o600)
        for cmd in (("cat", secret), ("touch", mnt / SITE / "alpha" / "__init__.py"), ("touch", mnt / "new")):
            refused = as_nobody(*cmd)
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, (cmd, refused)
        assert not (mnt / "new").exists()
    finally:
        vocker("unmount", mnt)


def _alpha_value(source: Path) -> object:
    namespace: dict[str, object] = {}
    exec(source.read_text(), namespace)
    return namespace["VALUE"]


def test_allow_other_without_user_allow_other_is_one_clear_error(vocker, shared: Path) -> None:
    if user_allow_other():
        pytest.skip("/etc/fuse.conf has user_allow_other: the error cannot happen here")
    nobody = _nobody()
    home, tree, mnt = shared / "home", shared / "tree", shared / "mnt"
    for d in (home, tree, mnt):
        d.mkdir()
        os.chown(d, nobody.pw_uid, nobody.pw_gid)
    (tree / "hello.txt").write_text("hello\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(shared), "VOCKER_HOME": str(home),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cli = _vocker_for_nobody(vocker.exe)
    imported = as_nobody(*cli, "image", "import", tree, "-t", "img", env=env)
    assert imported.returncode == 0, imported
    for cmd, code in ((("mount", "img", mnt, "--allow-other"), 1),
                      (("run", "--allow-other", "img", "--", "true"), 125)):  # run: vocker's own failure
        proc = as_nobody(*cli, *cmd, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code and len(lines) == 1, (cmd, proc)
        assert lines[0].startswith("vocker: error: ") and "user_allow_other" in lines[0] \
            and "/etc/fuse.conf" in lines[0], (cmd, proc)
    assert not mounted_under(shared)


def _vocker_for_nobody(exe: Path) -> list[str]:
    """A command running this vocker that the user nobody may execute: the console script, or
    (when its interpreter lives where nobody may not go, as under /root) a system interpreter of
    the same version given the environment's site-packages."""
    try:
        if as_nobody(exe, "--version").returncode == 0:
            return [str(exe)]
    except PermissionError:
        pass
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site = next(Path(sys.prefix).glob(f"lib/{version}/site-packages"), None)
    for python in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if site is not None and os.path.exists(python):
            cmd = [python, "-c", f"import site, sys; site.addsitedir({str(site)!r}); sys.argv[0] = 'vocker'; "
                                 "from vocker._entry import main; main()"]
            if as_nobody(*cmd, "--version").returncode == 0:
                return cmd
    pytest.skip(f"no interpreter the user nobody may run vocker with ({exe} is not theirs to run)")
