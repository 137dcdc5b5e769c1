"""Never wrong bytes: a mount serves exactly what the export of the same image holds, and a
damaged or hostile store is an error (EIO in a mount, one line in a command), never wrong
bytes, a traceback or a silently deleted blob.

Hostile stores are written with ``storecraft`` (rows put in the database directly, as an
attacker or a bad disk would); every mount is cleaned up by conftest's ``no_leftover_mounts``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import storecraft as craft  # noqa: E402
from conftest import MOUNTS, _find_vocker_exe  # noqa: E402
from mounthelp import query  # noqa: E402

pytestmark = MOUNTS

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"
TAG = sys.implementation.cache_tag


def picture(root: Path) -> dict[str, tuple]:
    """Every path below ``root``: kind, mode, size as stat says, the bytes read, the file mtime
    (scaffolding and bytecode, which the image does not hold, get none: an export writes them now)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            else:
                with open(path, "rb") as f:
                    data = f.read()
                generated = "__pycache__" in rel or rel.startswith("bin/") and "activate" in rel.lower() \
                    or rel in ("pyvenv.cfg", "bin/python", "bin/python3", f"bin/{PY}")
                out[rel] = ("file", oct(st.st_mode & 0o7777), st.st_size, data, 0 if generated else st.st_mtime_ns)
    return out


def differences(a: dict[str, tuple], b: dict[str, tuple]) -> list[str]:
    return [f"{k}: {_short(a.get(k))} != {_short(b.get(k))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _short(item: tuple | None) -> str:
    """An item without its full bytes (a digest of them), so a difference reads in one line."""
    if item is None:
        return "<absent>"
    if item[0] == "file":
        return repr(item[:3] + (craft.digest(item[3])[:19], item[4]))
    return repr(item)


def script(venv: Path, text: str) -> bytes:
    return f"#!{venv}/bin/python\n{text}\n".encode()


# --------------------------------------------------------------------------- item 1 and 5: mount == export


def test_every_file_of_a_mount_equals_the_export_fresh_and_warm(make_venv, vocker, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "src", packages=("alpha==1.0", "beta", "gamma"))
    # Several small console scripts: inlined templates (no digest) that a cache must tell apart.
    for name in ("one", "two", "three"):
        (venv / "bin" / name).write_bytes(script(venv, f"print({name!r})"))
        (venv / "bin" / name).chmod(0o755)
    # Two sources with the same bytecode and different sizes: each pyc must name its own size.
    (venv / SITE / "twin_a.py").write_text("X = 1\n")
    (venv / SITE / "twin_b.py").write_text("X = 1\n# only a comment differs, and the size\n")
    vocker("image", "import", venv, "-t", "img")
    where = tmp_path / "env"
    time.sleep(1.1)  # files of an image made this very second get the previous second's mtime

    vocker("mount", "img", where)  # the image's first mount: bytecode compiled on demand
    try:
        fresh = picture(where)
        ran = subprocess.run([str(where / "bin" / "two")], capture_output=True, text=True, check=True)
        assert ran.stdout == "two\n"
    finally:
        vocker("unmount", where)
    vocker("export", "img", where)
    exported = picture(where)
    shutil.rmtree(where)
    where.mkdir()
    vocker("mount", "img", where)  # warm: bytecode cached, same mount point
    try:
        warm = picture(where)
    finally:
        vocker("unmount", where)

    assert exported["bin/one"][3] == script(where, "print('one')")
    assert differences(fresh, exported) == []
    assert differences(warm, exported) == []
    for twin in ("twin_a", "twin_b"):
        pyc = fresh[f"{SITE}/__pycache__/{twin}.{TAG}.pyc"][3]
        assert struct.unpack("<I", pyc[12:16])[0] == (venv / SITE / f"{twin}.py").stat().st_size


# --------------------------------------------------------------------------- item 2: sizes


def test_a_tree_entry_whose_size_is_not_its_blobs_is_corrupt(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "ls")  # creates the store
    blob = craft.put_blob(vocker_home, bytes(range(256)) * 20)  # 5120 bytes
    for tag, size in (("short", 300), ("huge", 1 << 40)):
        # "a-good" records the blob's true size: read first, its bytes must not serve "data"
        root = craft.put_tree(vocker_home, [craft.file("a-good", blob=blob, size=5120),
                                            craft.file("data", blob=blob, size=size), craft.file("fine.txt", b"fine\n")])
        craft.put_image(vocker_home, root, f"{tag}:latest")

    dest = tmp_path / "out"
    for tag, message in (("short", "records 300 bytes"), ("huge", "needs 1.1 TB")):
        proc = vocker("export", tag, dest, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not dest.exists()

    proc = vocker("verify", check=False)
    assert proc.returncode == 1 and blob in proc.stdout and "bytes for blob" in proc.stdout, proc.stdout

    for tag in ("short", "huge"):
        where = tmp_path / tag
        vocker("mount", tag, where, "--read-only")
        try:
            assert (where / "fine.txt").read_bytes() == b"fine\n"
            assert len((where / "a-good").read_bytes()) == 5120
            for attempt in (lambda: os.stat(where / "data"), lambda: os.open(where / "data", os.O_RDONLY)):
                with pytest.raises(OSError) as info:
                    attempt()
                assert info.value.errno == errno.EIO, tag
        finally:
            vocker("unmount", where)


# --------------------------------------------------------------------------- item 13: hostile trees


def test_hostile_tree_names_give_eio_and_one_log_line(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "ls")
    bad_nodes = {
        "dots": [craft.file("..", b"x")],
        "slash": [craft.file("a/b", b"x")],
        "dup": [craft.file("x", b"1"), craft.file("x", b"2")],
    }
    entries = [craft.directory(name, craft.put_tree(vocker_home, e)) for name, e in bad_nodes.items()]
    root = craft.put_tree(vocker_home, craft.sorted_entries(entries + [craft.file("fine.txt", b"ok")]))
    craft.put_image(vocker_home, root, "hostile:latest")

    proc = vocker("export", "hostile", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1

    where = tmp_path / "m"
    vocker("mount", "hostile", where, "--read-only")
    try:
        assert sorted(os.listdir(where)) == ["dots", "dup", "fine.txt", "slash"]
        for name in bad_nodes:
            with pytest.raises(OSError) as info:
                os.listdir(where / name)
            assert info.value.errno == errno.EIO, name
        assert (where / "fine.txt").read_bytes() == b"ok"
        log = next((vocker_home / "containers").glob("*/daemon.log"), None)
        text = log.read_text() if log else ""
    finally:
        vocker("unmount", where)
    assert "Traceback" not in text and "invalid name in tree" in text and "duplicated" in text, text


def _expanding_image(home: Path, fanout: tuple[int, ...], leaf: dict) -> None:
    """A few nodes that expand to prod(fanout) copies of ``leaf``."""
    node = craft.put_tree(home, [leaf])
    for level, n in enumerate(fanout):
        node = craft.put_tree(home, craft.sorted_entries(
            [craft.directory(f"d{level}-{i:04d}", node) for i in range(n)]))
    craft.put_image(home, node, "bomb:latest")


def test_a_tree_expanding_past_the_entry_limit_is_refused(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "ls")
    _expanding_image(vocker_home, (101, 100, 100), craft.file("f", b"x"))  # ~2 million entries
    dest = tmp_path / "out"
    proc = vocker("export", "bomb", dest, check=False)
    assert proc.returncode == 1 and "more than 1,000,000" in proc.stderr, proc.stderr
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == ["vocker-home"]


def test_a_tree_whose_paths_would_fill_memory_is_refused(vocker, vocker_home: Path, tmp_path: Path) -> None:
    """Under the entry limit, but 250 levels deep: a list of its paths would take gigabytes."""
    vocker("image", "ls")
    leaf = craft.put_tree(vocker_home, [craft.file(f"f{i:04d}", b"x") for i in range(990)])
    node = craft.put_tree(vocker_home, [craft.directory(f"d{i:04d}", leaf) for i in range(1000)])
    for level in range(250):
        node = craft.put_tree(vocker_home, [craft.directory(f"l{level}", node)])
    craft.put_image(vocker_home, node, "deep:latest")
    proc = vocker("export", "deep", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "components" in proc.stderr, proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_an_export_larger_than_the_free_space_is_refused_before_writing(vocker, vocker_home: Path,
                                                                        tmp_path: Path) -> None:
    vocker("image", "ls")
    blob = craft.put_blob(vocker_home, os.urandom(1 << 20))
    _expanding_image(vocker_home, (60, 60, 60), craft.file("f", blob=blob, size=1 << 20))  # 216,000 MiB
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], check=True)
    try:
        proc = vocker("export", "bomb", small / "out", check=False)
        assert proc.returncode == 1 and "free" in proc.stderr, proc.stderr
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# --------------------------------------------------------------------------- item 12: links out of the image


def test_links_out_of_the_image_are_served_by_nothing(vocker, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("inside\n")
    (tree / "abs").symlink_to("/etc/passwd")
    (tree / "sub" / "up").symlink_to("../../..")
    (tree / "ok").symlink_to("sub/file")
    proc = vocker("image", "import", tree, "-t", "links")
    assert "abs -> /etc/passwd" in proc.stderr and "sub/up -> ../../.." in proc.stderr, proc.stderr
    time.sleep(1.1)  # an image made this second: its files' mtime would depend on when it is used

    proc = vocker("export", "links", tmp_path / "out", check=False)
    assert proc.returncode == 1 and "unsafe symlink" in proc.stderr, proc.stderr
    vocker("export", "--audit", "links", tmp_path / "audit")
    audit = picture(tmp_path / "audit")
    assert audit["abs"][0] == "file" and b"/etc/passwd" in audit["abs"][3] and audit["ok"] == ("link", "sub/file")

    where = tmp_path / "m"
    vocker("mount", "links", where)
    try:
        assert (where / "ok").read_text() == "inside\n"
        for name in ("abs", "sub/up"):
            with pytest.raises(OSError) as info:
                os.lstat(where / name)
            assert info.value.errno == errno.EIO, name
    finally:
        vocker("unmount", where)
    vocker("mount", "--audit", "links", where)
    try:
        assert differences(picture(where), audit) == []
    finally:
        vocker("unmount", where)


# --------------------------------------------------------------------------- items 3, 4, 16: the store


def _tree_image(vocker, tmp_path: Path, tag: str, content: bytes) -> None:
    d = tmp_path / f"tree-{tag}"
    d.mkdir()
    (d / "data.bin").write_bytes(content)
    vocker("image", "import", d, "-t", tag)


def test_gc_deletes_nothing_when_a_needed_blob_is_not_recorded(vocker, vocker_home: Path, tmp_path: Path) -> None:
    content = os.urandom(4000)
    _tree_image(vocker, tmp_path, "one", content)
    d = craft.digest(content)
    path = vocker_home / "blobs" / "sha256" / d[7:9] / d[7:]
    with craft._db(vocker_home) as db, db:
        db.execute("DELETE FROM blobs WHERE digest = ?", (d,))
    proc = vocker("gc", check=False)
    assert proc.returncode == 1 and "inconsistent" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert path.exists()
    proc = vocker("verify", check=False)
    assert proc.returncode == 1 and d in proc.stdout


def test_verify_runs_sqlites_check_and_a_damaged_database_is_one_error(vocker, vocker_home: Path,
                                                                      tmp_path: Path) -> None:
    tree = tmp_path / "tree-one"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(os.urandom(4000))
    vocker("image", "import", tree, "-t", "one")
    assert vocker("verify").returncode == 0
    where = tmp_path / "m"
    vocker("mount", "one", where, "--read-only")
    try:
        craft.damage_index(vocker_home, "sqlite_autoindex_objects_1")
        with pytest.raises(OSError) as info:  # its node is read now, through the damaged index
            os.listdir(where / "sub")
        assert info.value.errno == errno.EIO
        log = next((vocker_home / "containers").glob("*/daemon.log")).read_text()
        assert "malformed" in log and "Traceback" not in log, log
    finally:
        vocker("unmount", where)
    proc = vocker("verify", check=False)
    assert proc.returncode == 1 and "database is damaged" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    proc = vocker("export", "one", tmp_path / "out", check=False)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "database is damaged" in proc.stderr, proc.stderr


def test_image_removal_waits_for_a_running_gc(vocker, vocker_home: Path, tmp_path: Path) -> None:
    """gc holds the store lock exclusively from listing the images to deleting what they do not
    need; a removal in between made it find a manifest gone and fail ("unreadable objects")."""
    _tree_image(vocker, tmp_path, "one", os.urandom(4000))
    env = dict(os.environ, VOCKER_HOME=str(vocker_home))
    fd = os.open(vocker_home / "store.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as gc holds it
        rm = subprocess.Popen([str(_find_vocker_exe()), "image", "rm", "one"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert rm.poll() is None, rm.communicate()
        assert query(vocker_home, "SELECT count(*) FROM images") == [(1,)]
    finally:
        os.close(fd)
    assert rm.wait(timeout=60) == 0, rm.communicate()
    assert query(vocker_home, "SELECT count(*) FROM images") == [(0,)]
    for tag in ("two", "three"):  # and a real gc racing real removals
        _tree_image(vocker, tmp_path, tag, os.urandom(4000))
    gc = subprocess.Popen([str(_find_vocker_exe()), "gc"], env=env, stderr=subprocess.PIPE, text=True)
    vocker("image", "rm", "two", "three")
    assert gc.wait(timeout=60) == 0, gc.communicate()
    assert vocker("verify").returncode == 0
