"""Layered images with real mounts: commit, diff, history, squash, and the layer stack.

A base venv (alpha 1.0, gamma, a root file) is imported; a container of it gets alpha 2.0
and beta installed by uv through the mount, a root file and a whole lower directory (gamma)
removed; ``vocker commit`` makes that a second layer. conftest's ``no_leftover_mounts``
unmounts and kills whatever a failing test leaves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vocker.importer import import_tree
from vocker.layerstack import LayerStack
from vocker.store import Store
from vocker.tree import Entry, Kind, Tree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS  # noqa: E402
from mounthelp import diff as snapshot_diff, snapshot  # noqa: E402

pytestmark = MOUNTS

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"


def _change(mount: Path, wheels_dir: Path, uv_exe: Path, uv_env: dict[str, str]) -> None:
    """The change every test makes in a container: upgrade one package, add one, remove a
    file and a whole directory of the image."""
    subprocess.run([str(uv_exe), "pip", "install", "--no-config", "--offline", "--quiet", "--python",
                    str(mount / "bin" / "python"), "--no-index", "--find-links", str(wheels_dir), "alpha==2.0", "beta"],
                   check=True, env=uv_env, stdin=subprocess.DEVNULL)
    (mount / "notes.txt").unlink()
    shutil.rmtree(mount / SITE / "gamma")
    for d in (mount / SITE).glob("gamma-*.dist-info"):
        shutil.rmtree(d)


@pytest.fixture
def base(make_venv, tmp_path: Path, vocker) -> Path:
    venv = make_venv(tmp_path / "base-src", packages=("alpha==1.0", "gamma"))
    (venv / "notes.txt").write_text("a file of the image, deleted by the change\n")
    vocker("image", "import", venv, "-t", "base")
    return venv


@pytest.fixture
def derived(base: Path, vocker, tmp_path: Path, wheels_dir: Path, uv_exe: Path, uv_env: dict[str, str]) -> str:
    vocker("create", "base", "--name", "dev")
    mnt = tmp_path / "m1"
    vocker("mount", "dev", mnt)
    try:
        _change(mnt, wheels_dir, uv_exe, uv_env)
    finally:
        vocker("unmount", mnt)
    proc = vocker("commit", "dev", "-t", "derived", "-m", "alpha 2 and beta")
    assert "Committed container dev as derived:latest (2 layers)" in proc.stdout
    return "derived"


def _id(vocker, ref: str) -> str:
    return json.loads(vocker("image", "inspect", ref).stdout)["id"]


def test_image_ids_of_todays_imports_do_not_change(tmp_path: Path) -> None:
    """Pinned: this tree imported by the code before layers existed had this ID."""
    import os

    root = tmp_path / "src"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "sub" / "big.txt").write_bytes(bytes(range(256)) * 8)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "empty").mkdir()
    os.symlink("pkg/__init__.py", root / "link")
    result = import_tree(Store.open(tmp_path / "home"), root)
    assert result.image_id == "sha256:73f71331c1b6d745e46c9fe51f70b98300bd389e3bbc65dd3d32c2cd690ff026"


def test_layer_nodes_round_trip_and_plain_nodes_stay_version_1() -> None:
    digest = "sha256:" + "cd" * 32
    plain = Tree.of([Entry("a", Kind.DIR, digest=digest)])
    assert plain.encode()[:8] == Tree((Entry("a", Kind.DIR, digest=digest),)).encode()[:8]
    assert b"\xa1ov" not in plain.encode()
    layer = Tree.of([Entry("gone", Kind.WHITEOUT), Entry("a", Kind.DIR, digest=digest)], opaque=True)
    assert Tree.decode(layer.encode()) == layer
    assert layer.digest() != Tree.of(layer.entries).digest() != plain.digest()


def test_stack_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    """Three layers: a whiteout hides a lower file only in its own directory (not same-named
    files elsewhere), an opaque directory hides all lower contents, a lower directory merges."""
    store = Store.open(tmp_path / "home")
    objects: dict[str, bytes] = {}

    def node(entries: list[Entry], opaque: bool = False) -> str:
        tree = Tree.of(entries, opaque)
        objects[tree.digest()] = tree.encode()
        return tree.digest()

    def f(name: str, data: bytes) -> Entry:
        return Entry(name, Kind.FILE, size=len(data), inline=data)

    low = node([f("x", b"1"), Entry("d", Kind.DIR, digest=node([f("x", b"d1"), f("y", b"d2")])),
                Entry("o", Kind.DIR, digest=node([f("old", b"o")]))])
    mid = node([Entry("x", Kind.WHITEOUT), Entry("d", Kind.DIR, digest=node([f("z", b"d3")]))])
    top = node([Entry("o", Kind.DIR, digest=node([f("new", b"n")], opaque=True)), f("x", b"again")])
    store.hold_trees(objects)
    stack = LayerStack(store, (low, mid))
    assert set(stack.listing(stack.root).entries) == {"d", "o"}
    assert set(stack.listing(stack.key(("d",))).entries) == {"x", "y", "z"}  # the root whiteout stays there
    stack3 = LayerStack(store, (low, mid, top))
    assert stack3.listing(stack3.root).entries["x"].inline == b"again"
    assert set(stack3.listing(stack3.key(("o",))).entries) == {"new"}
    flat: dict[str, bytes] = {}
    digest = stack3.flat(flat)
    store.hold_trees(flat)
    assert not any(Tree.decode(data).hides for data in flat.values())
    assert sorted(e.name for e in store.tree(digest).entries) == ["d", "o", "x"]


def test_commit_history_diff_and_a_fresh_mount(derived: str, base: Path, vocker, tmp_path: Path) -> None:
    history = json.loads(vocker("image", "history", derived, "--format", "json").stdout)
    assert [h["created_by"] for h in history] == ["import", "commit"]
    assert history[1]["message"] == "alpha 2 and beta" and history[1]["deleted"] >= 3
    plain = vocker("image", "history", derived).stdout
    assert "commit" in plain and "alpha 2 and beta" in plain and "\t" not in plain

    out = vocker("image", "diff", "base", derived).stdout.splitlines()
    assert "alpha 1.0 -> 2.0" in out and "+ beta 1.0" in out and any(line.startswith("- gamma ") for line in out)
    assert "D /notes.txt" in out and f"D /{SITE}/gamma" in out and f"A /{SITE}/beta.py" in out
    assert json.loads(vocker("image", "inspect", derived).stdout)["distributions"] == {"alpha": "2.0", "beta": "1.0"}

    mnt = tmp_path / "fresh"
    vocker("mount", derived, mnt)
    try:
        code = ("import alpha, beta, importlib.metadata as m; print(alpha.VALUE, beta.value()); "
                "import sys, site; print(sorted(d.metadata['Name'] + ' ' + d.version "
                "for d in m.distributions(path=site.getsitepackages([sys.prefix]))))")
        got = subprocess.run([str(mnt / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
        assert got.stdout.splitlines() == ["2 20", "['alpha 2.0', 'beta 1.0']"]
        assert not (mnt / "notes.txt").exists() and not (mnt / SITE / "gamma").exists()
        assert subprocess.run([str(mnt / "bin" / "alpha-cli")], capture_output=True, text=True,
                              check=True).stdout == "alpha 2.0\n"
        mounted = snapshot(mnt)
    finally:
        vocker("unmount", mnt)
    vocker("export", derived, tmp_path / "exported")
    exported = snapshot(tmp_path / "exported")
    # rendered paths differ by location; compare the set of paths and the files not naming them
    assert sorted(mounted) == sorted(exported)
    assert mounted[f"{SITE}/alpha/__init__.py"] == exported[f"{SITE}/alpha/__init__.py"]
    assert vocker("verify").returncode == 0


def test_same_change_elsewhere_commits_to_the_same_id_and_squash_equals_import(
        derived: str, vocker, tmp_path: Path, make_venv, wheels_dir: Path, uv_exe: Path,
        uv_env: dict[str, str]) -> None:
    vocker("create", "base", "--name", "other")
    mnt = tmp_path / "elsewhere" / "deeper-mount"
    vocker("mount", "other", mnt)
    try:
        _change(mnt, wheels_dir, uv_exe, uv_env)
        # committed while mounted, with another message: the message is not part of the ID
        proc = vocker("commit", "other", "-t", "again", "-m", "another message")
    finally:
        vocker("unmount", mnt)
    assert "Already in store" in proc.stdout
    assert _id(vocker, "again") == _id(vocker, derived)

    squashed = vocker("image", "squash", derived, "-t", "flat").stdout
    assert "Squashed" in squashed
    assert len(json.loads(vocker("image", "history", "flat", "--format", "json").stdout)) == 1
    plain = make_venv(tmp_path / "plain", packages=("alpha==2.0", "beta"))
    vocker("image", "import", plain, "-t", "plain")
    assert _id(vocker, "flat") == _id(vocker, "plain")


def test_container_diff_and_whiteouts_survive_a_fresh_commit(base: Path, vocker, tmp_path: Path) -> None:
    vocker("create", "base", "--name", "dev")
    mnt = tmp_path / "m"
    vocker("mount", "dev", mnt)
    try:
        (mnt / "notes.txt").unlink()
        shutil.rmtree(mnt / SITE / "gamma")
        (mnt / SITE / "gamma").mkdir()  # re-created: opaque, the lower contents stay gone
        (mnt / SITE / "gamma" / "only.txt").write_text("new\n")
        (mnt / "added.txt").write_text("x\n")
    finally:
        vocker("unmount", mnt)
    lines = vocker("diff", "dev").stdout.splitlines()
    assert "D /notes.txt" in lines and "A /added.txt" in lines and f"C /{SITE}/gamma" in lines
    assert f"D /{SITE}/gamma/__init__.py" in lines and f"A /{SITE}/gamma/only.txt" in lines
    vocker("commit", "dev", "-t", "d2")
    vocker("mount", "d2", tmp_path / "m2")
    try:
        assert sorted(p.name for p in (tmp_path / "m2" / SITE / "gamma").iterdir()) == ["only.txt"]
        assert not (tmp_path / "m2" / "notes.txt").exists()
        assert (tmp_path / "m2" / "added.txt").read_text() == "x\n"
    finally:
        vocker("unmount", tmp_path / "m2")
    # the committed layer as a standard OCI layer tarball: deletions as OCI whiteouts
    vocker("layer", "export", "d2", "-o", tmp_path / "top.tar")
    names = subprocess.run(["tar", "-tf", tmp_path / "top.tar"], check=True, capture_output=True,
                           text=True).stdout.split()
    assert "opt/venv/.wh.notes.txt" in names and f"opt/venv/{SITE}/gamma/.wh..wh..opq" in names, names
    assert f"opt/venv/{SITE}/gamma/only.txt" in names and "opt/venv/added.txt" in names


def test_a_layered_image_travels_as_layers_through_save_and_load(derived: str, vocker, tmp_path: Path) -> None:
    """save/load keeps the layers and the ID; the loaded image exports the same tree."""
    vocker("save", derived, "-o", tmp_path / "d.tar")
    env = {"VOCKER_HOME": str(tmp_path / "other-home")}
    vocker("load", "-i", tmp_path / "d.tar", env=env)
    assert json.loads(vocker("image", "inspect", derived, env=env).stdout)["id"] == _id(vocker, derived)
    history = json.loads(vocker("image", "history", derived, "--format", "json", env=env).stdout)
    assert len(history) == 2
    vocker("export", "--audit", derived, tmp_path / "here")
    vocker("export", "--audit", derived, tmp_path / "there", env=env)
    assert snapshot(tmp_path / "here") == snapshot(tmp_path / "there")


def test_commit_of_a_mounted_container_while_a_process_writes(base: Path, vocker, tmp_path: Path) -> None:
    """Each file is written in two halves with a pause. The commit pauses the writer and
    captures one moment: files 0..k with no gap, every one complete but perhaps the last,
    which the writer may have been stopped in the middle of (as docker commit would)."""
    vocker("create", "base", "--name", "busy")
    mnt = tmp_path / "m"
    vocker("mount", "busy", mnt)
    stop = threading.Event()
    writer_done = threading.Event()

    def write() -> None:
        (mnt / "out").mkdir()
        i = 0
        while not stop.is_set() and i < 2000:
            with open(mnt / "out" / f"{i:05d}", "w") as f:
                f.write("first half|")
                f.flush()
                time.sleep(0.002)
                f.write("second half\n")
            i += 1
        writer_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.3)
        proc = vocker("commit", "busy", "-t", "snap", check=False)
    finally:
        stop.set()
        writer.join()
        vocker("unmount", mnt)
    assert proc.returncode == 0, proc.stderr
    assert writer_done.is_set()  # the writer went on after the commit
    vocker("export", "snap", tmp_path / "snap")
    names = sorted(p.name for p in (tmp_path / "snap" / "out").iterdir())
    assert len(names) > 3 and names == [f"{i:05d}" for i in range(len(names))]
    texts = [(tmp_path / "snap" / "out" / n).read_text() for n in names]
    assert set(texts[:-1]) == {"first half|second half\n"}
    assert texts[-1] in ("first half|", "first half|second half\n")


def test_bad_input_is_one_line_and_changes_nothing(base: Path, vocker, tmp_path: Path) -> None:
    proc = vocker("commit", "nosuch", "-t", "x", check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("vocker: error: no such container: nosuch")
    vocker("create", "base", "--name", "idle")
    proc = vocker("commit", "idle", "-t", "x", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("vocker: error: nothing to commit")
    assert len(proc.stderr.strip().splitlines()) == 1
    mnt = tmp_path / "m"
    vocker("mount", "idle", mnt)
    try:  # a change undone is no change either
        (mnt / "tmp.txt").write_text("x")
        (mnt / "tmp.txt").unlink()
    finally:
        vocker("unmount", mnt)
    assert "nothing to commit" in vocker("commit", "idle", "-t", "x", check=False).stderr
    assert vocker("image", "ls", "-q").stdout.split() == [_id(vocker, "base")]
    for args in (("image", "squash", "nosuch", "-t", "y"), ("image", "history", "nosuch"),
                 ("image", "diff", "base", "nosuch"), ("diff", "nosuch")):
        proc = vocker(*args, check=False)
        assert proc.returncode != 0 and proc.stderr.startswith("vocker: error: ") and "Traceback" not in proc.stderr


def test_gc_keeps_layers_in_use_and_a_corrupt_layer_is_one_error_line(derived: str, vocker, tmp_path: Path) -> None:
    vocker("rm", "dev")
    vocker("image", "rm", "base")
    vocker("gc")
    assert vocker("verify").returncode == 0
    vocker("export", derived, tmp_path / "after-gc")
    assert (tmp_path / "after-gc" / SITE / "beta.py").exists()
    # the derived layer's node corrupted: history, diff, export and mount say so in one line
    home = Path(vocker.home)
    layer = json.loads(vocker("image", "inspect", derived).stdout)["manifest"]["layers"][1]
    import sqlite3

    with sqlite3.connect(home / "vocker.db") as conn:
        conn.execute("UPDATE objects SET data = X'00' WHERE digest = ?", (layer,))
    for args in (("image", "history", derived), ("image", "squash", derived, "-t", "z"),
                 ("export", derived, tmp_path / "bad")):
        proc = vocker(*args, check=False)
        assert proc.returncode != 0 and proc.stderr.startswith("vocker: error: ") and \
            len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "bad").exists()
    assert vocker("verify", check=False).returncode != 0


def test_removing_a_derived_image_never_touches_its_parent(derived: str, vocker, tmp_path: Path) -> None:
    vocker("rm", "dev")
    vocker("image", "rm", derived)
    vocker("gc")
    assert vocker("verify").returncode == 0
    assert "images" in vocker("df").stdout
    vocker("export", "base", tmp_path / "base-again")
    assert (tmp_path / "base-again" / SITE / "gamma").is_dir()
