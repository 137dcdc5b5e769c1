"""The store is private to its owner: what a venv keeps from other users stays so in the store.

The root (``$VOCKER_HOME``, a project's ``.vocker/``) and ``containers/`` are 0700, blob
files and the database 0600, whatever the umask; an existing wider store is tightened
when it is opened. As root, a second uid (``nobody``) checks that none of a blob, the
database or a file written into a container's writable layer can be read.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from mounthelp import force_cleanup

SECRET = b"the private key of somebody: " + b"k" * 400  # > 256 bytes: a blob file, not inlined
SMALL_SECRET = b"password=hunter2\n"  # inlined in the database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def blob_files(home: Path) -> list[Path]:
    return sorted((home / "blobs" / "sha256").glob("*/*"))


def db_files(home: Path) -> list[Path]:
    return [p for p in (home / "vocker.db", home / "vocker.db-wal", home / "vocker.db-shm") if p.exists()]


@pytest.fixture
def secret_tree(tmp_path: Path) -> Path:
    src = tmp_path / "secrets"
    src.mkdir()
    for name, data in (("key.pem", SECRET), ("small.txt", SMALL_SECRET)):
        (src / name).write_bytes(data)
        (src / name).chmod(0o600)
    return src


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default, which made 0644 files and 0755 directories
    yield
    os.umask(old)


def test_a_fresh_store_is_private(vocker, vocker_home: Path, secret_tree: Path, umask_022: None) -> None:
    vocker_home.rmdir()  # vocker creates it
    vocker("image", "import", secret_tree, "-t", "secrets")
    assert mode(vocker_home) == 0o700
    assert mode(vocker_home / "tmp") == 0o700
    assert blob_files(vocker_home) and {mode(p) for p in blob_files(vocker_home)} == {0o600}
    assert db_files(vocker_home) and {mode(p) for p in db_files(vocker_home)} == {0o600}
    cache = list((vocker_home / "cache" / "import").iterdir())  # holds small files' contents too
    assert cache and {mode(p) for p in cache} == {0o600}
    vocker("create", "secrets", "--name", "dev")
    assert mode(vocker_home / "containers") == 0o700
    assert mode(vocker_home / "containers" / "dev" / "upper") == 0o755  # shown as the mount's root


def test_a_wider_existing_store_is_tightened_when_opened(vocker, vocker_home: Path, secret_tree: Path,
                                                         umask_022: None) -> None:
    vocker("image", "import", secret_tree, "-t", "secrets")
    vocker("create", "secrets", "--name", "dev")
    for path in (vocker_home, vocker_home / "containers"):  # as older versions left them
        path.chmod(0o755)
    for path in db_files(vocker_home):
        path.chmod(0o644)
    vocker("images")
    assert mode(vocker_home) == 0o700
    assert {mode(p) for p in db_files(vocker_home)} == {0o600}
    vocker("create", "secrets", "--name", "dev2")
    assert mode(vocker_home / "containers") == 0o700


def test_a_project_store_is_private(vocker, tmp_path: Path, umask_022: None) -> None:
    project = tmp_path / "project"
    project.mkdir()
    vocker("--local", "images", cwd=project)
    assert mode(project / ".vocker") == 0o700
    assert {mode(p) for p in db_files(project / ".vocker")} == {0o600}


# --------------------------------------------------------------------------- a second user


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")


def readable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``user`` (no supplementary groups) can read ``path``."""
    proc = subprocess.run(["cat", str(path)], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp directories are 0700), removed after."""
    base = Path(tempfile.mkdtemp(prefix="vocker-privacy-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        force_cleanup(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as another user")
def test_another_user_reads_nothing_from_the_store(vocker, make_venv, tmp_path: Path, shared_base: Path,
                                                   umask_022: None) -> None:
    user = nobody()
    venv = make_venv(tmp_path / "env", packages=())
    for name, data in (("key.pem", SECRET), ("small.txt", SMALL_SECRET)):
        (venv / name).write_bytes(data)
        (venv / name).chmod(0o600)
    home = shared_base / "store"
    control = shared_base / "control.txt"
    control.write_text("anyone may read this\n")
    assert readable_by(user, control)  # the check itself works: the base is open to the other user

    env = {"VOCKER_HOME": str(home)}
    vocker("image", "import", venv, "-t", "secrets", env=env)
    vocker("create", "secrets", "--name", "dev", env=env)
    secret_blobs = [p for p in blob_files(home) if p.name == hashlib.sha256(SECRET).hexdigest()]
    assert secret_blobs, "the secret is a blob file"
    assert not readable_by(user, secret_blobs[0])
    assert not readable_by(user, home / "vocker.db")  # holds the inlined small secret

    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs FUSE for the container part")
    vocker("run", "dev", "--", "sh", "-c", 'umask 022; echo written-in-private > "$VIRTUAL_ENV/note.txt"', env=env)
    note = home / "containers" / "dev" / "upper" / "note.txt"
    assert note.read_text() == "written-in-private\n"
    assert mode(note) == 0o644  # the file's own mode is kept: the privacy comes from the store's directories
    assert not readable_by(user, note)
