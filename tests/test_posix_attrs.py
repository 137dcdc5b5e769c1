"""POSIX attributes of a mounted named container match a plain directory's.

Each test does the same thing to a mounted named container of a small plain-tree image
and to a ``cp -a`` copy of that tree, and compares what comes out: the times ``touch``
sets (issue 12 item 1), directory times that must not be disturbed by the daemon's own
bookkeeping (item 2), the link count of a hard link whose sibling was renamed over
(item 3), which names share an inode number and whether numbers stay put (item 4), and
block counts as ``du`` and ``tar --sparse`` use them (item 8). Times and inode numbers
differ between two file systems, so what is compared is what they mean: "now", "kept",
"the value set", "same number as that other name".
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS, VockerRunner, _find_vocker_exe  # noqa: E402
from mounthelp import diff, snapshot  # noqa: E402
from test_overlay import BIG, FILES, build_tree, conform, mounted  # noqa: E402

pytestmark = MOUNTS

SECOND = 10**9
A_TIME = 1_000_000_000 * SECOND + 123  # 2001: older than anything the tests create
M_TIME = 1_100_000_000 * SECOND + 456


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("posix-src") / "tree"
    build_tree(root)
    return root


@pytest.fixture
def home(tmp_path: Path, tree: Path) -> Path:
    """A store with the image ``t`` and a named container ``c`` of it (under tmp_path, so
    conftest's no_leftover_mounts finds its daemon too)."""
    home = tmp_path / "home"
    cli = VockerRunner(home, _find_vocker_exe())
    cli("image", "import", tree, "-t", "t")
    cli("create", "t", "--name", "c")
    return home


@pytest.fixture
def mnt(home: Path, tmp_path: Path) -> Iterator[Path]:
    with mounted(home, "c", tmp_path / "mnt") as where:
        yield where


@pytest.fixture
def plain(tree: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "plain"
    subprocess.run(["cp", "-a", str(tree), str(dest)], check=True)
    return dest


def same_on_both(mnt: Path, plain: Path, facts: Callable[[Path], dict]) -> dict:
    """Run ``facts`` on the plain directory, then on the mount; assert equal; return them."""
    want = facts(plain)
    got = facts(mnt)
    problems = diff(got, want)
    assert not problems, "mount and plain directory differ:\n" + "\n".join(problems)
    return want


# --------------------------------------------------------------------------- item 1: touch


def _classify(before: int, after: int, t0: int, t1: int) -> object:
    if after == before:
        return "kept"
    if t0 - SECOND <= after <= t1 + SECOND:  # the kernel's clock is coarse: allow a second
        return "now"
    return after


def touch_facts(root: Path) -> dict:
    """What `touch` and its -a, -m, -h and -d forms do to image files, image directories, an
    image symlink and files and directories of the writable layer."""
    (root / "new.txt").write_bytes(b"new")
    (root / "newdir").mkdir()
    for rel in ("new.txt", "newdir"):  # known old times, so "now" and "kept" cannot be confused
        os.utime(root / rel, ns=(A_TIME, M_TIME))
    cases = [
        ("new.txt", []), ("newdir", ["-a"]), ("small.txt", []), ("mid.bin", ["-a"]), ("text.txt", ["-m"]),
        ("d", ["-m"]), ("empty", ["-a"]), ("d/sub", []), ("link", ["-h", "-m"]), ("dlink", ["-h", "-a"]),
        ("x", ["-a", "-d", "@1400000000.25"]), ("run.sh", ["-d", "@1500000000.5"]),
        ("new.txt", ["-m"]),  # a second touch of a writable-layer file: atime stays what it was set to
    ]
    out: dict[str, object] = {}
    for i, (rel, args) in enumerate(cases):
        before = os.lstat(root / rel)
        t0 = time.time_ns()
        subprocess.run(["touch", *args, str(root / rel)], check=True)
        t1 = time.time_ns()
        after = os.lstat(root / rel)
        out[f"{i} touch {' '.join(args)} {rel}"] = (
            _classify(before.st_atime_ns, after.st_atime_ns, t0, t1),
            _classify(before.st_mtime_ns, after.st_mtime_ns, t0, t1))
    return out


def test_touch_sets_the_current_time_and_keeps_the_other_one(mnt: Path, plain: Path) -> None:
    facts = same_on_both(mnt, plain, touch_facts)
    assert facts["0 touch  new.txt"] == ("now", "now")
    assert facts["3 touch -a mid.bin"] == ("now", "kept") and facts["4 touch -m text.txt"] == ("kept", "now")
    assert facts["12 touch -m new.txt"] == ("kept", "now")


# --------------------------------------------------------------------------- item 2: no layer scan


def dir_time_facts(root: Path) -> dict:
    """Times set on directories stay exactly as set through a chmod and a chown (the daemon
    once walked the whole writable layer after each, updating directories' atimes)."""
    (root / "dd").mkdir()
    (root / "dd" / "f").write_bytes(b"f")
    os.link(root / "dd" / "f", root / "dd" / "g")  # a multiply-linked file in the layer
    out = {}
    for rel in ("dd", "d", "empty", "sub2"):  # "d", "empty", "sub2" come from the image
        os.utime(root / rel, ns=(A_TIME, M_TIME))
        out[f"utime {rel}"] = (os.lstat(root / rel).st_atime_ns, os.lstat(root / rel).st_mtime_ns)
    for rel in ("dd", "d"):
        os.chmod(root / rel, 0o750)
        os.chown(root / rel, os.getuid(), os.getgid())
        os.utime(root / "dd" / "f", ns=(A_TIME, M_TIME))
        os.chmod(root / "dd" / "g", 0o600)
    for rel in ("dd", "d", "empty", "sub2"):
        out[f"after {rel}"] = (os.lstat(root / rel).st_atime_ns, os.lstat(root / rel).st_mtime_ns)
    out["g"] = oct(os.lstat(root / "dd" / "f").st_mode), os.lstat(root / "dd" / "g").st_mtime_ns
    return out


def test_directory_times_survive_metadata_changes(mnt: Path, plain: Path) -> None:
    facts = same_on_both(mnt, plain, dir_time_facts)
    assert facts["after dd"] == facts["after empty"] == (A_TIME, M_TIME)
    assert diff(snapshot(mnt), snapshot(plain)) == []


# --------------------------------------------------------------------------- item 3: rename over a link


def rename_over_link_facts(root: Path) -> dict:
    (root / "src").write_bytes(b"a")
    (root / "dst").write_bytes(b"b")
    os.link(root / "dst", root / "dstlnk")
    os.link(root / "src", root / "srclnk")
    os.link(root / "small.txt", root / "imglnk")  # an image file, copied up by the link
    before = {rel: os.stat(root / rel) for rel in ("dstlnk", "srclnk", "imglnk")}  # now in the kernel's cache
    time.sleep(0.05)
    os.rename(root / "src", root / "dst")
    os.rename(root / "x", root / "small.txt")  # an image file over a copied-up, linked one
    out = {}
    for rel, old in before.items():
        st = os.stat(root / rel)
        out[rel] = (st.st_nlink, st.st_ctime_ns > old.st_ctime_ns, (root / rel).read_bytes())
    out["dst"] = (os.stat(root / "dst").st_nlink, (root / "dst").read_bytes())
    return out


def test_rename_over_a_hard_linked_file_updates_the_other_name(mnt: Path, plain: Path) -> None:
    facts = same_on_both(mnt, plain, rename_over_link_facts)
    assert facts["dstlnk"] == (1, True, b"b") and facts["imglnk"][0] == 1
    assert diff(snapshot(mnt), snapshot(plain)) == []


def test_hard_links_stay_in_step_through_renames_and_remounts(home: Path, plain: Path, tmp_path: Path) -> None:
    """The names of hard links are indexed, not searched: the index must follow renames of a
    name and of its directory, removals and new links, and be rebuilt from the layer on the
    next mount."""
    with mounted(home, "c", tmp_path / "m1") as m1:
        conform(m1, plain, [
            ("create", "a", b"one"), ("mkdir", "box"), ("link", "a", "box/b"), ("stat", "box/b"),
            ("rename", "box", "box2"), ("chmod", "a", 0o600), ("stat", "box2/b"), ("link", "a", "c"),
            ("rename", "box2/b", "box2/b2"), ("unlink", "a"), ("stat", "box2/b2"), ("chmod", "c", 0o640),
            ("stat", "box2/b2"), ("truncate", "c", 7), ("stat", "box2/b2"), ("read", "box2/b2"),
            ("link", "small.txt", "s2"), ("stat", "small.txt"), ("chmod", "s2", 0o604), ("stat", "small.txt")])
    with mounted(home, "c", tmp_path / "m2") as m2:
        conform(m2, plain, [("stat", "box2/b2"), ("stat", "small.txt"), ("chmod", "c", 0o644),
                            ("stat", "box2/b2"), ("truncate", "s2", 2), ("stat", "small.txt"), ("read", "small.txt")])


# --------------------------------------------------------------------------- item 4: inode numbers


def inode_groups(root: Path) -> list[tuple[str, ...]]:
    """Names grouped by inode number: equal numbers exactly for hard links."""
    by_ino: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            by_ino.setdefault(os.lstat(path).st_ino, []).append(os.path.relpath(path, root))
    by_ino.setdefault(os.lstat(root).st_ino, []).append(".")
    return sorted(tuple(sorted(names)) for names in by_ino.values())


def inode_facts(root: Path) -> dict:
    (root / "f").write_bytes(b"f")
    os.link(root / "f", root / "g")
    os.link(root / "small.txt", root / "d" / "small-link")  # an image file: copied up, then linked
    (root / "nd").mkdir()
    (root / "nd" / "h").write_bytes(b"h")
    os.link(root / "nd" / "h", root / "nd" / "h2")
    os.symlink("f", root / "sl")
    first = {rel: os.lstat(root / rel).st_ino for rel in ("", "d", "d/sub", "empty", BIG, "mid.bin", "link",
                                                         "f", "nd", "nd/h", "sl")}
    out: dict[str, object] = {"groups": inode_groups(root)}
    # changes elsewhere, and changes that keep a node (rename, chmod, a new entry in a directory)
    (root / "d" / "new").write_bytes(b"n")  # the image directory d gets a copy in the writable layer
    (root / "empty" / "new").mkdir()
    os.rename(root / "f", root / "f2")
    os.rename(root / "nd", root / "nd2")
    os.chmod(root / "nd2" / "h", 0o600)
    os.unlink(root / "g")
    (root / "other").write_bytes(b"o")
    renamed = {"f": "f2", "nd": "nd2", "nd/h": "nd2/h"}
    out["kept"] = {rel: os.lstat(root / renamed.get(rel, rel)).st_ino == ino for rel, ino in first.items()}
    out["groups after"] = inode_groups(root)
    return out


def test_inode_numbers_are_shared_by_hard_links_and_stable(home: Path, plain: Path, tmp_path: Path) -> None:
    with mounted(home, "c", tmp_path / "mnt") as mnt:
        facts = same_on_both(mnt, plain, inode_facts)
        numbers = {rel: os.lstat(mnt / rel).st_ino for rel in ("", "d", "d/sub", "mid.bin", "link", "f2", "nd2/h")}
    assert ("f", "g") in facts["groups"] and ("d/small-link", "small.txt") in facts["groups"]
    assert all(facts["kept"].values())
    with mounted(home, "c", tmp_path / "again") as again:  # image nodes and writable-layer files alike
        assert {rel: os.lstat(again / rel).st_ino for rel in numbers} == numbers


# --------------------------------------------------------------------------- item 8: block counts


def block_facts(root: Path) -> dict:
    (root / "dense").write_bytes(os.urandom(100_000))
    with open(root / "sparse", "wb") as f:  # a hole, then data
        f.truncate(4 << 20)
        f.seek(2 << 20)
        f.write(b"data in the middle")
    out: dict[str, object] = {}
    for rel in ("dense", "sparse"):  # files of the writable layer: its own allocation
        out[rel] = os.lstat(root / rel).st_blocks
    for rel in [*FILES, "d"]:  # enough blocks for the data: nothing looks sparse
        st = os.lstat(root / rel)
        out[f"{rel} covered"] = st.st_blocks * 512 >= st.st_size > 0
    du = subprocess.run(["du", "-s", "-B1", str(root)], capture_output=True, text=True, check=True)
    apparent = sum(os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(root) for n in names)
    out["du covers the data"] = int(du.stdout.split()[0]) >= apparent - (4 << 20)
    # GNU tar --sparse trusts st_blocks: with 0 blocks it stores every file as one hole
    archive = root.parent / f"{root.name}.tar"
    subprocess.run(["tar", "cSf", str(archive), "-C", str(root), "."], check=True)
    unpacked = root.parent / f"{root.name}-untarred"
    unpacked.mkdir()
    subprocess.run(["tar", "xf", str(archive), "-C", str(unpacked)], check=True)
    out["tar --sparse round trip"] = diff(snapshot(unpacked), snapshot(root), ("untarred", "source"))
    return out


def test_block_counts_let_du_and_sparse_tar_see_the_data(mnt: Path, plain: Path) -> None:
    facts = same_on_both(mnt, plain, block_facts)
    assert facts["tar --sparse round trip"] == [] and facts["du covers the data"]
    st = os.lstat(mnt / BIG)
    assert st.st_blocks == -(-st.st_size // 512)  # an image file: its size rounded up to 512-byte blocks


def write_through_a_link_facts(root: Path) -> dict[str, tuple]:
    (root / "a").write_bytes(b"first\n")
    os.link(root / "a", root / "b")
    os.stat(root / "b")  # the kernel caches b's attributes
    with open(root / "a", "ab") as f:
        f.write(b"more\n")
        f.flush()
        while_open = os.stat(root / "b").st_size  # before the close: a write is seen at once
    return {"while open": (while_open,), "after": (os.stat(root / "b").st_size, (root / "b").read_bytes())}


def test_a_write_through_one_hard_link_shows_under_the_other_at_once(mnt: Path, plain: Path) -> None:
    facts = same_on_both(mnt, plain, write_through_a_link_facts)
    assert facts == {"while open": (11,), "after": (11, b"first\nmore\n")}
