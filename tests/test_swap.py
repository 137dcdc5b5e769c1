"""Swapping the image under a live mount (vocker remount), with real mounts.

Images: base (alpha 1.0, gamma) and up (base + a layer with alpha 2.0, made by vocker install).
alpha 1.0 and 2.0's sources have the same size, so a stale pyc or page would pass Python's check.
conftest's ``no_leftover_mounts`` unmounts and kills whatever a failing test leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS  # noqa: E402

pytestmark = MOUNTS

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"
VERSIONS = ("import importlib.metadata as m, alpha; "
            "print(m.version('alpha'), alpha.VALUE, [d.version for d in m.distributions() if d.name == 'alpha'])")


@pytest.fixture
def images(make_venv, tmp_path: Path, vocker, wheels_dir: Path, uv_env) -> tuple[str, str]:
    venv = make_venv(tmp_path / "base-src", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", venv, "-t", "base")
    vocker("install", "base", "alpha==2.0", "-t", "up", "--no-index", "--find-links", wheels_dir, "--offline",
           env=uv_env)
    return "base", "up"


def _python(mnt: Path, code: str) -> str:
    return subprocess.run([mnt / "bin" / "python", "-c", code], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout.strip()


def test_remount_keeps_open_files_and_the_writable_layer(images, vocker, tmp_path: Path) -> None:
    base, up = images
    mnt = tmp_path / "m"
    vocker("mount", base, mnt)
    try:
        source = mnt / SITE / "alpha" / "__init__.py"
        old = source.read_bytes()
        assert _python(mnt, VERSIONS) == "1.0 1 ['1.0']"  # compiles and caches alpha 1.0's pyc, pages cached
        (mnt / "mine.txt").write_text("kept\n")
        held = os.open(source, os.O_RDONLY)
        try:
            assert os.pread(held, 10, 0) == old[:10]
            proc = vocker("remount", mnt, up)
            assert f"Remounted {mnt} on up" in proc.stdout
            assert _python(mnt, VERSIONS) == "2.0 2 ['2.0']"  # a fresh interpreter imports the new version
            new = source.read_bytes()
            assert new != old and len(new) == len(old)
            assert os.pread(held, 1 << 16, 0) == old  # the open file keeps its bytes
            assert source.read_bytes() == new
        finally:
            os.close(held)
        assert (mnt / "mine.txt").read_text() == "kept\n"
        ps = json.loads(vocker("ps", "--format", "json").stdout)
        assert [r["image"] for r in ps] == ["up:latest"]
        for _ in range(6):  # back and forth
            for ref, want in ((base, "1.0 1 ['1.0']"), (up, "2.0 2 ['2.0']")):
                vocker("remount", mnt, ref)
                assert _python(mnt, VERSIONS) == want
                assert source.read_bytes() == (old if ref == base else new)
                names = sorted(p.name for p in (mnt / SITE).iterdir() if p.name.startswith("alpha-"))
                assert names == [f"alpha-{want[:3]}.dist-info"]
    finally:
        vocker("unmount", mnt)


def test_remount_refusals_leave_the_mount_as_it_was(images, vocker, tmp_path: Path) -> None:
    base, up = images
    plain = tmp_path / "plain"
    (plain / "pkg").mkdir(parents=True)
    (plain / "pkg" / "x.txt").write_text("x\n")
    vocker("image", "import", plain, "-t", "tree")
    mnt = tmp_path / "m"
    vocker("mount", base, mnt)
    try:
        for args, says in (([mnt, "nosuch"], "no such image"),
                           ([mnt, "tree"], "tree image"),
                           ([tmp_path, up], "not a vocker mount")):
            proc = vocker("remount", *args, check=False)
            assert proc.returncode != 0 and says in proc.stderr, proc.stderr
            assert proc.stderr.startswith("vocker: error: ") and len(proc.stderr.strip().splitlines()) == 1
            assert _python(mnt, VERSIONS) == "1.0 1 ['1.0']"
        assert [r["image"] for r in json.loads(vocker("ps", "--format", "json").stdout)] == ["base:latest"]
    finally:
        vocker("unmount", mnt)


def test_named_container_remounted_stays_on_its_new_image(images, vocker, tmp_path: Path) -> None:
    base, up = images
    vocker("create", base, "--name", "dev")
    mnt = tmp_path / "m"
    vocker("mount", "dev", mnt)
    try:
        (mnt / "mine.txt").write_text("kept\n")
        vocker("remount", mnt, up)
    finally:
        vocker("unmount", mnt)
    vocker("mount", "dev", mnt)
    try:
        assert _python(mnt, VERSIONS) == "2.0 2 ['2.0']"
        assert (mnt / "mine.txt").read_text() == "kept\n"
    finally:
        vocker("unmount", mnt)
    assert vocker("diff", "dev").stdout.strip() == "A /mine.txt"


def _other_python_image(home: Path, ref: str, tag: str) -> None:
    """The image ``ref`` with the facts of a Python this host does not have (3.99)."""
    import attrs

    from vocker.store import Store

    store = Store.open(home)
    image_id = store.resolve(ref)
    manifest = store.manifest(image_id)
    other = attrs.evolve(manifest, python=attrs.evolve(manifest.python, version="3.99.0", lib="lib/python3.99"))
    data = other.encode()
    record = store.image(image_id)
    with store.write() as conn:
        store.record_image(conn, other.digest(), data, record.size, record.files, {})
        store.set_tag(conn, tag, other.digest())
    store.close()


def test_another_python_is_refused_by_remount_and_install(images, vocker, vocker_home: Path, tmp_path: Path,
                                                          wheels_dir: Path, uv_env) -> None:
    base, up = images
    _other_python_image(vocker_home, up, "py399:latest")
    before = vocker("images", "-q", "--no-trunc").stdout
    proc = vocker("install", "py399", "beta", "-t", "x", "--no-index", "--find-links", wheels_dir, env=uv_env,
                  check=False)
    assert proc.returncode == 1 and "no Python 3.99" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert vocker("images", "-q", "--no-trunc").stdout == before
    assert vocker("ps", "-a", "-q").stdout.strip() == ""
    mnt = tmp_path / "m"
    vocker("mount", base, mnt)
    try:
        proc = vocker("remount", mnt, "py399", check=False)
        assert proc.returncode == 2 and "has cpython 3.99.0" in proc.stderr and "same Python" in proc.stderr
        assert _python(mnt, VERSIONS) == "1.0 1 ['1.0']"
    finally:
        vocker("unmount", mnt)
