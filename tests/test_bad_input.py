"""Bad input of every kind: each must end in exactly one ``vocker: error: ...`` line on
stderr, a non-zero exit and no traceback, and must leave nothing half-made behind.

Hostile stores (names that escape, truncated CBOR, garbage zstd) are built in-process
with vocker's own Store, encoding tree nodes by hand with cbor2 so they bypass the
validation that the importer would apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"  # venvs use this Python


# --------------------------------------------------------------------------- helpers


#: The one notice a failing command may print before its error: importing a directory
#: that is not a venv says so first.
PLAIN_TREE_NOTICE = re.compile(r" has no pyvenv\.cfg: importing it as a plain tree$")


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single error line; fails unless the command failed cleanly."""
    assert proc.returncode != 0, f"expected failure, got exit 0:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not PLAIN_TREE_NOTICE.search(line)]
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), f"stderr:\n{proc.stderr}"
    return lines[0]


def image_count(home: Path) -> int:
    if not (home / "vocker.db").exists():
        return 0
    with contextlib.closing(sqlite3.connect(home / "vocker.db", timeout=30)) as db:
        return db.execute("SELECT count(*) FROM images").fetchone()[0]


def snapshot(root: Path, skip: Path | None = None) -> set[str]:
    """Every path below ``root`` (except below ``skip``)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames.clear()
            continue
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


def assert_no_export_left(dest: Path) -> None:
    assert not dest.exists() and not dest.is_symlink(), f"{dest} was left behind"
    assert list(dest.parent.glob(f".{dest.name}.vocker-*")) == [], "temporary export directory left behind"


def plain_tree(path: Path, files: dict[str, bytes] | None = None) -> Path:
    for rel, data in (files or {"pkg/data.txt": b"some data\n" * 50}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return path


def node(*entries: dict) -> bytes:
    """A tree node encoded by hand (canonical CBOR), entries sorted as the format wants."""
    return cbor2.dumps({"v": 1, "e": sorted(entries, key=lambda e: e["n"].encode("utf-8"))}, canonical=True)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def record_tree_image(home: Path, tag: str, root: str, nodes: dict[str, bytes],
                      blobs: tuple[tuple[str, int, bytes, str], ...] = ()) -> str:
    """Record a "tree" image with the given nodes (digest -> bytes) and blob files
    (digest, size, stored bytes, codec) straight into the store; returns its ID."""
    from vocker.blobstore import BlobInfo
    from vocker.manifest import Manifest
    from vocker.store import Store

    store = Store.open(home)
    try:
        infos = []
        for digest, size, stored, codec in blobs:
            path = store.blobs.path(digest)
            path.write_bytes(stored)
            infos.append(BlobInfo(digest, size, len(stored), codec))
        manifest = Manifest("tree", (root,)).encode()
        image_id = sha(manifest)
        with store.write() as conn:
            store.record_blobs(conn, infos)
            store.record_objects(conn, "tree", nodes)
            store.record_image(conn, image_id, manifest, 100, 1, {"created_by": "test_bad_input"})
            store.set_tag(conn, f"{tag}:latest", image_id)
    finally:
        store.close()
    return image_id


# --------------------------------------------------------------------------- arguments


SIMPLE = {
    "import-missing-path": (("image", "import", "{tmp}/does-not-exist"), "no such directory"),
    "import-regular-file": (("image", "import", "{tmp}/tree/pkg/data.txt"), "not a directory"),
    "import-invalid-tag": (("image", "import", "{tmp}/tree", "-t", "Bad Name"), "invalid image name 'Bad Name'"),
    "export-unknown-image": (("export", "nope", "{tmp}/dest"), "no such image: nope"),
    "inspect-unknown-image": (("image", "inspect", "nope:1.0"), "no such image: nope:1.0"),
    "rm-unknown-image": (("image", "rm", "sha256:abcdef12"), "no such image: sha256:abcdef12"),
}


@pytest.mark.parametrize("case", list(SIMPLE))
def test_bad_arguments(case: str, vocker, vocker_home: Path, tmp_path: Path) -> None:
    args, message = SIMPLE[case]
    plain_tree(tmp_path / "tree")
    line = error_line(vocker(*(a.format(tmp=tmp_path) for a in args), check=False))
    assert message in line
    assert image_count(vocker_home) == 0
    assert not (tmp_path / "dest").exists()


def test_export_into_non_empty_directory(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "import", plain_tree(tmp_path / "tree"), "-t", "t")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    line = error_line(vocker("export", "t", dest, check=False))
    assert "not an empty directory" in line and str(dest) in line
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"
    assert list(tmp_path.glob(".dest.vocker-*")) == []


def test_import_venv_whose_interpreter_is_gone(make_venv, base_python: Path, vocker, vocker_home: Path,
                                               tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", packages=())
    cfg = venv / "pyvenv.cfg"
    lines = cfg.read_text().splitlines()
    gone = {"home": "/nonexistent", "executable": "/nonexistent/python3", "base-executable": "/nonexistent/python3"}
    edited = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        edited.append(f"{key} = {gone[key]}" if key in gone else line)
    assert edited != lines
    cfg.write_text("\n".join(edited) + "\n")

    line = error_line(vocker("image", "import", venv, "-t", "gone", check=False))
    assert "--python" in line and "/nonexistent" in line
    assert image_count(vocker_home) == 0
    # ... and following the advice works.
    assert vocker("image", "import", venv, "-t", "gone", "--python", base_python).stdout.startswith("Imported")


# --------------------------------------------------------------------------- full and read-only disks


@pytest.fixture
def tmpfs():
    """``mount(path, size)`` mounts a tmpfs (skips the test when that is impossible);
    everything mounted is unmounted at teardown, even when the test failed."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


@pytest.mark.parametrize("fills", ["blobs", "database"])
def test_full_disk(fills: str, tmpfs, make_venv, vocker, vocker_home: Path, tmp_path: Path) -> None:
    tmpfs(vocker_home, "1m")
    if fills == "blobs":  # 1.8 MB of incompressible file content
        src = make_venv(tmp_path / "env", packages=())
        rng = random.Random(1)
        for i in range(3):
            (src / SITE / f"random{i}.bin").write_bytes(rng.randbytes(600_000))
    else:  # 6000 small files: inlined in tree nodes, so the database outgrows the disk
        rng = random.Random(2)
        src = plain_tree(tmp_path / "many", {f"d{i // 500}/f{i:04d}.txt": rng.randbytes(125).hex().encode()
                                             for i in range(6000)})
    proc = vocker("image", "import", src, "-t", "big", check=False)
    line = error_line(proc)
    assert re.search(r"no space|disk is full", line, re.IGNORECASE), line
    assert image_count(vocker_home) == 0
    assert list((vocker_home / "tmp").iterdir()) == []  # interrupted writes cleaned up
    assert vocker("verify").stdout.startswith("OK:")


def test_read_only_store(tmpfs, vocker, vocker_home: Path, tmp_path: Path) -> None:
    tmpfs(vocker_home, "16m")
    vocker("image", "import", plain_tree(tmp_path / "first"), "-t", "first")
    remount(vocker_home, "ro")
    try:
        error_line(vocker("image", "import", plain_tree(tmp_path / "second", {"b.txt": b"b" * 999}),
                          "-t", "second", check=False))
    finally:
        remount(vocker_home, "rw")
    assert image_count(vocker_home) == 1  # only the first image
    assert vocker("verify").stdout.startswith("OK:")


def test_read_only_store_error_says_read_only(tmpfs, vocker, vocker_home: Path, tmp_path: Path) -> None:
    tmpfs(vocker_home, "16m")
    vocker("images")  # creates the store
    remount(vocker_home, "ro")
    try:
        line = error_line(vocker("image", "import", plain_tree(tmp_path / "tree"), check=False))
    finally:
        remount(vocker_home, "rw")
    assert re.search(r"read-only|readonly", line, re.IGNORECASE), line


# --------------------------------------------------------------------------- hostile stores


ESCAPES = {
    "dotdot": lambda tmp: "..",
    "relative-escape": lambda tmp: "../../escaped",
    "absolute-path": lambda tmp: f"{tmp}/escaped-abs",
    "nul": lambda tmp: "escaped\0.txt",
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_export_refuses_tree_names_that_escape(case: str, vocker, vocker_home: Path, tmp_path: Path) -> None:
    bad = ESCAPES[case](tmp_path)
    payload = b"written outside the destination\n"
    inner = node({"n": "ok.txt", "k": "f", "s": 3, "c": b"ok\n"},  # the hostile name is one level down
                 {"n": bad, "k": "f", "s": len(payload), "c": payload})
    root = node({"n": "pkg", "k": "d", "h": sha(inner)}, {"n": "top.txt", "k": "f", "s": 4, "c": b"top\n"})
    record_tree_image(vocker_home, "evil", sha(root), {sha(inner): inner, sha(root): root})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    before = snapshot(tmp_path, skip=vocker_home)

    line = error_line(vocker("export", "evil", dest, check=False, cwd=cwd))
    assert "invalid name" in line
    assert_no_export_left(dest)
    assert snapshot(tmp_path, skip=vocker_home) == before
    assert not Path(f"{tmp_path}/escaped-abs").exists()


def corrupt_store(home: Path) -> dict[str, str]:
    """Three images: healthy, one with a truncated tree node, one with a garbage zstd blob."""
    ids = {}
    ok = node({"n": "ok.txt", "k": "f", "s": 3, "c": b"ok\n"})
    ids["healthy"] = record_tree_image(home, "healthy", sha(ok), {sha(ok): ok})

    full = node({"n": "data.txt", "k": "f", "s": 200, "c": b"d" * 200})
    truncated = full[:-7]
    with pytest.raises(Exception):
        cbor2.loads(truncated)
    root = node({"n": "pkg", "k": "d", "h": sha(truncated)})
    ids["truncated"] = record_tree_image(home, "truncated", sha(root), {sha(truncated): truncated, sha(root): root})

    content = b"".join(b"line %d of the real content\n" % i for i in range(200))
    garbage = b"\x28\xb5\x2f\xfd" + random.Random(3).randbytes(500)  # zstd magic, then noise
    root = node({"n": "data.txt", "k": "f", "s": len(content), "h": sha(content)})
    ids["zstd"] = record_tree_image(home, "zstd", sha(root), {sha(root): root},
                                    blobs=((sha(content), len(content), garbage, "zstd"),))
    return {"truncated_tree": sha(truncated), "zstd_blob": sha(content), **ids}


def test_corrupt_tree_and_zstd_blob_verify_and_export(vocker, vocker_home: Path, tmp_path: Path) -> None:
    corrupt_store(vocker_home)
    proc = vocker("verify", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    problems = proc.stdout.splitlines()  # one line per bad object
    assert len(problems) == 2, proc.stdout
    assert any("truncated:latest" in p for p in problems) and any("zstd:latest" in p for p in problems)
    assert "healthy:latest" not in proc.stdout

    for tag in ("truncated", "zstd"):
        dest = tmp_path / f"{tag}-out"
        assert "corrupt" in error_line(vocker("export", tag, dest, check=False))
        assert_no_export_left(dest)
    vocker("export", "healthy", tmp_path / "healthy-out")
    assert (tmp_path / "healthy-out" / "ok.txt").read_bytes() == b"ok\n"


@pytest.mark.parametrize("what", ["truncated_tree", "zstd_blob"])
def test_verify_names_the_corrupt_object(what: str, vocker, vocker_home: Path) -> None:
    digest = corrupt_store(vocker_home)[what]
    proc = vocker("verify", check=False)
    assert proc.returncode == 1
    assert digest in proc.stdout + proc.stderr, proc.stdout


def test_failed_export_creates_no_parent_directories(vocker, vocker_home: Path, tmp_path: Path) -> None:
    corrupt_store(vocker_home)
    dest = tmp_path / "new" / "sub" / "dest"
    error_line(vocker("export", "zstd", dest, check=False))
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("link, target", [("evil", "/etc"), ("a/b/up", "../../..")])
def test_export_refuses_symlink_escaping_the_image(link: str, target: str, vocker, vocker_home: Path,
                                                  tmp_path: Path) -> None:
    src = plain_tree(tmp_path / "src", {"a/b/file.txt": b"x" * 300, "top.txt": b"top\n"})
    (src / "a" / "b" / "fine").symlink_to("../../top.txt")  # climbs exactly to the root: allowed
    (src / link).symlink_to(target)
    vocker("image", "import", src, "-t", "links")
    before = snapshot(tmp_path, skip=vocker_home)
    dest = tmp_path / "dest"

    line = error_line(vocker("export", "links", dest, check=False))
    assert f"{link} -> {target}" in line
    assert_no_export_left(dest)
    assert snapshot(tmp_path, skip=vocker_home) == before
