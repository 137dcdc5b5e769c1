"""Overlay conformance: every operation on a mounted container behaves as on a plain directory.

A small plain tree is imported once per module (``vocker image import TREE -t t``) and
copied with ``cp -a``; each test mounts a fresh container of the image (a throw-away
writable layer, or a named container), applies the same operations to the mount and to
the plain copy, recording the result or errno of each, and compares the results and a
snapshot of both trees (path, type, mode, content, link target; mtimes only where a test
sets them). Operations whose plain-directory outcome is an error are marked with a
leading ``!`` in the scenarios, so a typo in a scenario cannot pass silently.

The overlay's own contract (EXDEV for lower directories, EINVAL for ``.wh.`` names, OCI
whiteouts in ``$VOCKER_HOME/containers/<name>/upper``, EROFS when read-only, the store
never written) is asserted directly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS, VockerRunner, _find_vocker_exe  # noqa: E402
from mounthelp import (compare_ops, daemon_pids, diff, force_cleanup, mount_record, mounted_under,  # noqa: E402
                       query, run_ops, snapshot, wait_for)

pytestmark = MOUNTS[0]  # the FUSE check; its own autouse no_leftover_mounts (below) also covers the store

MiB = 1 << 20
BIG = "big.bin"
BIG_SIZE = 6 * MiB


def varied(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILES: dict[str, bytes] = {
    "small.txt": b"hello world\n",                      # inline in the tree node
    "mid.bin": varied(1000, 1),                          # > 300 bytes: its own raw blob
    "text.txt": b"".join(b"line %05d of a compressible text file\n" % i for i in range(300)),  # zstd blob
    BIG: varied(3 * MiB, 2) + varied(3 * MiB // 2, 3).hex().encode(),  # 6 MiB, > SMALL: streamed, seekable
    "run.sh": b"#!/bin/sh\necho run\n",
    "x": b"root x\n",
    "d/one.txt": varied(400, 4),
    "d/two.txt": b"two\n",
    "d/sub/deep.txt": b"deep\n",
    "d/sub/x": b"d/sub/x\n",
    "sub2/x": b"sub2/x\n",
    "sub2/y": varied(700, 5),
}
EXECUTABLE = {"run.sh"}
SYMLINKS = {"link": "small.txt", "dlink": "d", "d/up": "../small.txt"}
EMPTY_DIRS = {"empty", "sub2/empty"}


def build_tree(root: Path) -> None:
    root.mkdir()
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if rel in EXECUTABLE else 0o644)
    for rel in EMPTY_DIRS:
        (root / rel).mkdir(parents=True)
    for rel, target in SYMLINKS.items():
        (root / rel).symlink_to(target)
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("overlay-src") / "tree"
    build_tree(root)
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tree: Path) -> Iterator[Path]:
    """A store holding the plain-tree image ``t`` (shared by the module: each test has its own container)."""
    home = tmp_path_factory.mktemp("overlay-home")
    proc = VockerRunner(home, _find_vocker_exe())("image", "import", tree, "-t", "t")
    assert "plain tree" in proc.stderr
    yield home
    force_cleanup(home)


@pytest.fixture
def cli(home: Path) -> VockerRunner:
    return VockerRunner(home, _find_vocker_exe())


@pytest.fixture(autouse=True)
def no_leftover_mounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Teardown: force-unmount anything under tmp_path and kill mount daemons, pass or fail."""
    yield
    roots = [tmp_path]
    if "home" in request.fixturenames:
        roots.append(request.getfixturevalue("home"))
    # daemons exit asynchronously after an unmount; give them a moment before calling them leftovers
    wait_for(lambda: not mounted_under(*roots) and not daemon_pids(*roots), timeout=3)
    leftovers = force_cleanup(*roots)
    assert not leftovers, f"left behind after the test: {leftovers}"


@contextlib.contextmanager
def mounted(home: Path, ref: str, where: Path, *, read_only: bool = False, umask: int | None = None) -> Iterator[Path]:
    from vocker.api import mount

    old = os.umask(umask) if umask is not None else None
    try:
        cm = mount(ref, where, read_only=read_only, home=home)
        path = cm.__enter__()
    finally:
        if old is not None:
            os.umask(old)
    with contextlib.ExitStack() as stack:
        stack.push(cm)
        yield path


@pytest.fixture
def plain(tree: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "plain"
    subprocess.run(["cp", "-a", str(tree), str(dest)], check=True)
    return dest


@pytest.fixture
def mnt(home: Path, tmp_path: Path) -> Iterator[Path]:
    with mounted(home, "t", tmp_path / "mnt") as where:
        yield where


def upper_of(home: Path, mountpoint: Path) -> Path:
    record = mount_record(home, mountpoint)
    assert record is not None, f"no mount recorded for {mountpoint}"
    return home / "containers" / record[0] / "upper"


def conform(mnt: Path, plain: Path, ops: list[tuple], *, mtimes: tuple[str, ...] = (),
            owners: bool = False) -> list[tuple]:
    """Apply ``ops`` to both trees; assert same results and same final trees. Returns the results."""
    expect_err = [op[0].startswith("!") for op in ops]
    ops = [(op[0].lstrip("!"), *op[1:]) for op in ops]
    want = run_ops(plain, ops)
    bad_scenario = [f"#{i} {op!r} -> {w!r}" for i, (op, w, e) in enumerate(zip(ops, want, expect_err))
                    if (w[0] == "err") != e]
    assert not bad_scenario, "scenario does not do what it says on the plain directory:\n" + "\n".join(bad_scenario)
    got = run_ops(mnt, ops)
    problems = compare_ops(ops, got, want)
    problems += diff(snapshot(mnt, mtimes=mtimes, owners=owners), snapshot(plain, mtimes=mtimes, owners=owners))
    assert not problems, "mount and plain directory differ:\n" + "\n".join(problems)
    return got


# --------------------------------------------------------------------------- conformance scenarios

READ_ALL = [("read", rel) for rel in FILES]

SCENARIOS: dict[str, list[tuple]] = {
    "read": [
        ("listdir", ""), ("listdir", "d"), ("listdir", "d/sub"), ("listdir", "empty"), ("listdir", "dlink"),
        *READ_ALL,
        ("read_at", BIG, 0, 4096), ("read_at", BIG, MiB - 7, 100), ("read_at", BIG, 3 * MiB - 5, 70000),
        ("read_at", BIG, BIG_SIZE - 10, 100), ("read_at", BIG, BIG_SIZE + 5, 10), ("read_at", "mid.bin", 990, 100),
        ("read", "link"), ("read", "d/up"), ("readlink", "link"), ("readlink", "dlink"), ("readlink", "d/up"),
        ("stat", "small.txt"), ("stat", "run.sh"), ("stat", BIG), ("stat", "d"), ("lstat", "link"),
        ("stat", "dlink"), ("tree", "dlink"),
        ("!read", "nope"), ("!read", "d"), ("!readlink", "small.txt"), ("!listdir", "small.txt"),
        ("!read", "small.txt/x"),
    ],
    "create": [
        ("create", "new.txt", b"new"), ("create", "d/new.txt", b"in a lower dir"),
        ("create", "d/sub/new.bin", varied(1000, 9)), ("create", "empty/inside.txt", b"in an empty dir"),
        ("create", "secret", b"s", 0o600), ("create", "tool", b"#!/bin/sh\n", 0o755),
        ("create", "zero"), ("!create", "small.txt", b"exclusive"), ("!create", "d", b""),
        ("!create", "nope/f", b""), ("!create", "small.txt/f", b""),
        ("read", "new.txt"), ("read", "d/sub/new.bin"), ("stat", "secret"), ("stat", "tool"),
        ("listdir", ""), ("listdir", "d"), ("listdir", "empty"),
    ],
    "write_in_the_middle": [
        ("write_at", "mid.bin", 500, b"XYZ"), ("write_at", BIG, 3 * MiB + 1, b"hello"),
        ("write_at", BIG, MiB - 2, b"across a frame"), ("write_at", "text.txt", 0, b"LINE"),
        ("write_at", "run.sh", 12, b"!!"), ("write_at", "small.txt", 100, b"after a hole"),
        ("write_at", "d/sub/deep.txt", 1, b"E"), ("write_at", "link", 0, b"J"),  # through a symlink
        ("read", "mid.bin"), ("read_at", BIG, 3 * MiB - 3, 20), ("read", BIG), ("read", "small.txt"),
        ("stat", "run.sh"), ("stat", "small.txt"), ("stat", BIG), ("readlink", "link"),
    ],
    "append": [
        ("append", "small.txt", b"appended\n"), ("append", "text.txt", b"more text\n"),
        ("append", BIG, b"tail of the big file"), ("append", "d/sub/deep.txt", b"deeper\n"),
        ("append", "run.sh", b"echo again\n"), ("append", "small.txt", b"twice\n"),
        ("read", "small.txt"), ("read_at", BIG, BIG_SIZE - 4, 100), ("stat", BIG), ("stat", "run.sh"),
    ],
    "truncate": [
        ("truncate", "mid.bin", 10), ("truncate", "text.txt", 20000), ("truncate", BIG, 5 * MiB + 3),
        ("ftruncate", "d/one.txt", 1), ("ftruncate", "sub2/y", 5000), ("open_trunc", "small.txt", b"new content"),
        ("truncate", "run.sh", 0), ("open_rw", "x"), ("truncate", "d/two.txt", 4),  # same size
        ("stat", "mid.bin"), ("stat", "text.txt"), ("stat", BIG), ("stat", "run.sh"), ("read_at", "text.txt", 11000, 50),
        ("!truncate", "nope", 3), ("!truncate", "d", 0),
    ],
    "unlink": [
        ("unlink", "small.txt"), ("unlink", "d/two.txt"), ("unlink", "link"), ("unlink", "dlink"),
        ("unlink", BIG), ("create", "u.txt", b"upper only"), ("unlink", "u.txt"),
        ("write_at", "x", 0, b"R"), ("unlink", "x"),  # a copied-up file
        ("!unlink", "small.txt"), ("!unlink", "d"), ("!unlink", "nope"), ("!read", "small.txt"),
        ("!stat", "link"), ("!read", BIG), ("listdir", ""), ("listdir", "d"),
        ("create", "small.txt", b"born again"), ("read", "small.txt"), ("symlink", "x", "link"),
        ("readlink", "link"), ("listdir", ""),
    ],
    "mkdir": [
        ("mkdir", "new"), ("mkdir", "d/newsub", 0o700), ("mkdir", "empty/inner"), ("mkdir", "new/deeper/", 0o750),
        ("!mkdir", "d"), ("!mkdir", "small.txt"), ("!mkdir", "nope/x"), ("!mkdir", "empty"),
        ("create", "new/deeper/f", b"f"), ("stat", "d/newsub"), ("listdir", "d"), ("listdir", "new"),
        ("listdir", "empty"), ("listdir", "d/newsub"),
    ],
    "rmdir": [
        ("rmdir", "empty"), ("!rmdir", "d"), ("!rmdir", "d/sub"), ("!rmdir", "small.txt"), ("!rmdir", "nope"),
        ("!rmdir", "dlink"), ("unlink", "d/sub/deep.txt"), ("unlink", "d/sub/x"), ("rmdir", "d/sub"),
        ("!rmdir", "d"), ("listdir", "d"), ("mkdir", "upperdir"), ("rmdir", "upperdir"),
        ("rmdir", "sub2/empty"), ("!rmdir", "sub2"), ("!listdir", "empty"), ("!listdir", "d/sub"),
        ("listdir", ""), ("listdir", "sub2"),
    ],
    "rename_lower_file_to_new_name": [
        ("rename", "small.txt", "renamed.txt"), ("read", "renamed.txt"), ("!read", "small.txt"),
        ("rename", "run.sh", "bin.sh"), ("stat", "bin.sh"), ("rename", "link", "link2"), ("readlink", "link2"),
        ("rename", BIG, "big2.bin"), ("read", "big2.bin"), ("rename", "dlink", "dlink2"), ("listdir", "dlink2"),
        ("!rename", "nope", "nope2"), ("listdir", ""),
    ],
    "rename_over_existing_lower_file": [
        ("rename", "small.txt", "x"), ("read", "x"), ("rename", "mid.bin", "text.txt"), ("read", "text.txt"),
        ("rename", "d/sub/x", "d/two.txt"), ("read", "d/two.txt"), ("listdir", ""), ("listdir", "d/sub"),
        ("!rename", "x", "d"), ("!rename", "x/", "mid.bin"),
    ],
    "rename_over_existing_upper_file": [
        ("create", "u.txt", b"upper"), ("rename", "small.txt", "u.txt"), ("read", "u.txt"),
        ("write_at", "x", 0, b"X"), ("rename", "mid.bin", "x"), ("read", "x"),  # over a copied-up file
        ("create", "a", b"a"), ("create", "b", b"b"), ("rename", "a", "b"), ("read", "b"), ("!read", "a"),
        ("listdir", ""),
    ],
    "rename_into_another_directory": [
        ("rename", "small.txt", "d/sub/small.txt"), ("rename", "d/one.txt", "empty/one.txt"),
        ("rename", "d/sub/deep.txt", "deep.txt"), ("rename", "mid.bin", "sub2/mid.bin"),
        ("rename", "d/up", "sub2/up"), ("rename", "text.txt", "dlink/text.txt"),
        ("mkdir", "nd"), ("rename", "sub2/y", "nd/y"),
        ("read", "d/sub/small.txt"), ("read", "empty/one.txt"), ("read", "deep.txt"), ("readlink", "sub2/up"),
        ("listdir", "d"), ("listdir", "d/sub"), ("listdir", "sub2"), ("listdir", "nd"),
    ],
    "rename_over_a_whited_out_path": [
        ("unlink", "x"), ("rename", "small.txt", "x"), ("read", "x"), ("listdir", ""),
        ("unlink", "d/two.txt"), ("create", "fresh", b"fresh"), ("rename", "fresh", "d/two.txt"),
        ("read", "d/two.txt"), ("rmdir", "empty"), ("rename", "mid.bin", "empty"), ("read", "empty"),
        ("listdir", "d"), ("listdir", ""),
    ],
    "rename_upper_only_directory": [
        ("mkdir", "nd"), ("create", "nd/f", b"f"), ("mkdir", "nd/inner"), ("create", "nd/inner/g", b"g"),
        ("rename", "nd", "nd2"), ("!listdir", "nd"), ("listdir", "nd2"), ("rename", "nd2", "d/nd3"),
        ("read", "d/nd3/inner/g"), ("!rename", "d/nd3", "d/nd3/inner/x"), ("mkdir", "e1"),
        ("rename", "d/nd3", "e1"), ("listdir", "e1"), ("mkdir", "e2"), ("!rename", "e1", "small.txt"),
        ("!rename", "mid.bin", "e2"), ("create", "e2/full", b""), ("!rename", "e1", "e2"),
        ("rename", "e1/inner", "sub2/inner"), ("listdir", "sub2"), ("listdir", "d"), ("listdir", ""),
    ],
    "symlink_and_readlink": [
        ("symlink", "small.txt", "s1"), ("symlink", "d", "s2"), ("symlink", "nowhere", "s3"),
        ("symlink", "../x", "d/s4"), ("symlink", "/etc/hostname", "abs"),
        ("readlink", "s1"), ("readlink", "s2"), ("readlink", "s3"), ("readlink", "d/s4"), ("readlink", "abs"),
        ("read", "s1"), ("read", "d/s4"), ("listdir", "s2"), ("!read", "s3"), ("lstat", "s3"),
        ("!symlink", "x", "small.txt"), ("!symlink", "x", "link"), ("!readlink", "small.txt"), ("!readlink", "d"),
        ("readlink", "link"), ("readlink", "dlink"), ("unlink", "link"), ("symlink", "text.txt", "link"),
        ("readlink", "link"), ("read", "link"), ("listdir", ""),
    ],
    "chmod": [
        ("chmod", "small.txt", 0o755), ("chmod", "run.sh", 0o644), ("chmod", "d", 0o700),
        ("chmod", "d/sub/deep.txt", 0o600), ("chmod", "link", 0o640), ("chmod", "empty", 0o1777),
        ("chmod", BIG, 0o444), ("create", "u", b"u"), ("chmod", "u", 0o4711),
        ("stat", "small.txt"), ("stat", "run.sh"), ("stat", "d"), ("stat", "link"), ("stat", "empty"),
        ("stat", "u"), ("read", BIG), ("listdir", "d"), ("!chmod", "nope", 0o644),
    ],
    "chown": [
        ("chown", "small.txt", 1234, 5678), ("chown", "d", 42, 43), ("chown", "link", 7, 8),
        ("chown", "d/sub/deep.txt", 0, 99), ("owner", "small.txt"), ("owner", "d"), ("owner", "link"),
        ("owner", "d/sub/deep.txt"), ("owner", "x"), ("read", "small.txt"),
    ],
    "utimens": [
        ("utime", "small.txt", (1_000_000_000_123_456_789, 1_500_000_000_987_654_321)),
        ("utime", "d", (1_100_000_000_000_000_001, 1_200_000_000_000_000_002)),
        ("utime", "run.sh", (0, 86_400_000_000_000)),
        ("utime", "link", (1_300_000_000_000_000_000, 1_400_000_000_000_000_000)),
        ("utime", BIG, (5, 6)),
        ("mtime", "small.txt"), ("mtime", "d"), ("mtime", "run.sh"), ("mtime", "link"), ("mtime", BIG),
        ("stat", "run.sh"), ("read", "small.txt"), ("listdir", "d"),
    ],
    "hard_links_in_the_writable_layer": [
        ("link", "small.txt", "h1"), ("stat", "small.txt"), ("stat", "h1"),
        ("write_at", "h1", 0, b"HELLO"), ("read", "small.txt"), ("stat", "small.txt"),
        ("append", "small.txt", b"more\n"), ("read", "h1"), ("stat", "h1"),
        ("create", "u", b"upper file"), ("link", "u", "d/u2"), ("link", "d/u2", "sub2/u3"), ("stat", "u"),
        ("write_at", "sub2/u3", 0, b"UPPER"), ("read", "u"), ("read", "d/u2"), ("stat", "d/u2"),
        ("unlink", "small.txt"), ("stat", "h1"), ("read", "h1"), ("unlink", "d/u2"), ("stat", "u"),
        ("stat", "sub2/u3"), ("link", "link", "hl"), ("lstat", "hl"), ("readlink", "hl"),
        ("link", BIG, "big.link"), ("stat", BIG), ("read", "big.link"),
        ("!link", "d", "dl"), ("!link", "small.txt", "h2"), ("!link", "u", "h1"), ("!link", "nope", "n2"),
    ],
    "opaque_directory_after_delete_and_recreate": [
        ("rmtree", "d"), ("!listdir", "d"), ("mkdir", "d"), ("listdir", "d"), ("!read", "d/one.txt"),
        ("!read", "d/sub/deep.txt"), ("!listdir", "d/sub"), ("create", "d/new", b"new"), ("listdir", "d"),
        ("listdir", "dlink"), ("mkdir", "d/sub"), ("listdir", "d/sub"), ("!read", "d/up"),
        ("rmtree", "d"), ("mkdir", "d"), ("listdir", "d"), ("rmdir", "empty"), ("mkdir", "empty"),
        ("listdir", "empty"), ("rmtree", "sub2"), ("create", "sub2", b"now a file"), ("read", "sub2"),
        ("unlink", "sub2"), ("mkdir", "sub2"), ("listdir", "sub2"), ("listdir", ""),
    ],
    "merged_listings": [
        ("create", "d/a_new", b"a"), ("write_at", "d/one.txt", 0, b"1"), ("unlink", "d/two.txt"),
        ("mkdir", "d/newdir"), ("symlink", "one.txt", "d/sl"), ("chmod", "d/sub", 0o700),
        ("create", "d/sub/more", b""), ("unlink", "d/sub/x"), ("listdir", "d"), ("listdir", "d/sub"),
        ("unlink", "x"), ("create", "x", b"new x"), ("listdir", ""), ("unlink", "x"), ("listdir", ""),
        ("create", "x", b"again"), ("rename", "x", "y"), ("listdir", ""), ("listdir", "dlink"),
    ],
    "whiteout_at_root_does_not_hide_subdirectory_names (fuse-overlayfs #151)": [
        ("unlink", "x"), ("rmdir", "empty"), ("!read", "x"), ("read", "d/sub/x"), ("read", "sub2/x"),
        ("listdir", "d/sub"), ("listdir", "sub2"), ("listdir", "sub2/empty"), ("stat", "sub2/empty"),
        ("create", "d/x", b"d/x is new"), ("mkdir", "d/empty"), ("listdir", "d"), ("listdir", ""),
    ],
    "rename_over_whiteout_then_delete_stays_gone (fuse-overlayfs #354)": [
        ("unlink", "x"), ("rename", "small.txt", "x"), ("read", "x"), ("unlink", "x"), ("!read", "x"),
        ("exists", "x"), ("!read", "small.txt"), ("listdir", ""), ("unlink", "d/sub/x"),
        ("rename", "d/sub/deep.txt", "d/sub/x"), ("unlink", "d/sub/x"), ("listdir", "d/sub"),
        ("!stat", "d/sub/x"), ("create", "x", b"third"), ("read", "x"),
    ],
}


@pytest.mark.parametrize("ops", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_conformance(mnt: Path, plain: Path, ops: list[tuple]) -> None:
    times = [op[1] for op in ops if op[0] == "utime"]
    conform(mnt, plain, ops, mtimes=tuple(times), owners=any(op[0] == "chown" for op in ops))


def test_fresh_mount_matches_the_source_tree(mnt: Path, tree: Path) -> None:
    assert snapshot(mnt) == snapshot(tree)
    assert os.access(mnt / "run.sh", os.X_OK) and not os.access(mnt / "small.txt", os.X_OK)
    assert subprocess.run([str(mnt / "run.sh")], capture_output=True, text=True).stdout == "run\n"


def test_statfs_works(mnt: Path, home: Path) -> None:
    st = os.statvfs(mnt)
    upper = os.statvfs(home)
    assert st.f_bsize > 0 and st.f_blocks > 0 and st.f_namemax == upper.f_namemax
    df = subprocess.run(["df", "-P", str(mnt)], capture_output=True, text=True)
    assert df.returncode == 0 and str(mnt) in df.stdout


def test_copy_up_happens_before_changes_and_keeps_mode(mnt: Path, home: Path) -> None:
    upper = upper_of(home, mnt)
    assert sorted(os.listdir(upper)) == []
    fd = os.open(mnt / "run.sh", os.O_RDONLY)
    os.close(fd)
    assert not (upper / "run.sh").exists(), "a read-only open must not copy up"
    with open(mnt / "run.sh", "r+b") as f:
        assert (upper / "run.sh").read_bytes() == FILES["run.sh"], "copy-up must keep the content"
        assert (upper / "run.sh").stat().st_mode & 0o7777 == 0o755, "copy-up must keep the mode"
        f.seek(2)
        f.write(b"/usr")
    os.truncate(mnt / BIG, MiB)
    assert (upper / BIG).read_bytes() == FILES[BIG][:MiB]
    os.chmod(mnt / "d" / "one.txt", 0o600)
    assert (upper / "d" / "one.txt").read_bytes() == FILES["d/one.txt"]
    os.utime(mnt / "mid.bin", ns=(10, 20))
    assert (upper / "mid.bin").read_bytes() == FILES["mid.bin"] and (upper / "mid.bin").stat().st_mtime_ns == 20


def test_rename_of_a_lower_directory_is_exdev_and_mv_copies(mnt: Path, plain: Path, home: Path) -> None:
    for old, new in (("d", "e"), ("empty", "e"), ("d/sub", "sub3"), ("sub2", "d/sub2")):
        with pytest.raises(OSError) as info:
            os.rename(mnt / old, mnt / new)
        assert info.value.errno == errno.EXDEV, (old, new)
    os.chmod(mnt / "d", 0o750)  # copied up: still a directory of the lower layer
    with pytest.raises(OSError) as info:
        os.rename(mnt / "d", mnt / "e")
    assert info.value.errno == errno.EXDEV
    os.chmod(plain / "d", 0o750)
    assert diff(snapshot(mnt), snapshot(plain)) == []
    for args in (["d", "moved"], ["empty", "moved/empty2"], ["sub2", "d2"]):
        for root in (plain, mnt):
            proc = subprocess.run(["mv", *args], cwd=root, capture_output=True, text=True)
            assert proc.returncode == 0, (root, args, proc.stderr)
    assert diff(snapshot(mnt), snapshot(plain)) == []
    assert not (mnt / "d").exists() and (mnt / "moved" / "sub" / "deep.txt").read_bytes() == b"deep\n"
    upper = upper_of(home, mnt)
    assert {".wh.d", ".wh.empty", ".wh.sub2"} <= set(os.listdir(upper))


@pytest.mark.parametrize("name", [".wh.foo", ".wh..wh..opq", ".wh.small.txt"])
def test_whiteout_names_cannot_be_created(mnt: Path, home: Path, name: str) -> None:
    attempts = {
        "create": lambda: os.close(os.open(mnt / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
        "create in a lower dir": lambda: os.close(os.open(mnt / "d" / name, os.O_WRONLY | os.O_CREAT, 0o644)),
        "mkdir": lambda: os.mkdir(mnt / name),
        "symlink": lambda: os.symlink("x", mnt / name),
        "link": lambda: os.link(mnt / "small.txt", mnt / name),
        "rename": lambda: os.rename(mnt / "mid.bin", mnt / name),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EINVAL, what
    assert name not in os.listdir(mnt)
    assert (mnt / "small.txt").read_bytes() == FILES["small.txt"] and (mnt / "mid.bin").exists()
    upper = upper_of(home, mnt)
    assert not [p for p in upper.rglob("*") if p.name.startswith(".wh.")], "no whiteout may appear"


def test_read_only_mount_gives_erofs(home: Path, tree: Path, tmp_path: Path) -> None:
    with mounted(home, "t", tmp_path / "ro", read_only=True) as ro:
        assert snapshot(ro) == snapshot(tree)
        writes = [("create", "new", b"x"), ("write_at", "small.txt", 0, b"x"), ("append", BIG, b"x"),
                  ("open_trunc", "mid.bin"), ("truncate", "small.txt", 0), ("unlink", "small.txt"),
                  ("mkdir", "nd"), ("rmdir", "empty"), ("rename", "small.txt", "s"), ("symlink", "x", "s"),
                  ("link", "small.txt", "h"), ("chmod", "run.sh", 0o600), ("utime", "x", (1, 2)),
                  ("chown", "x", 1, 1), ("open_rw", "x")]
        assert run_ops(ro, writes) == [("err", "EROFS")] * len(writes)
        assert snapshot(ro) == snapshot(tree)
        upper = upper_of(home, ro)
        assert not upper.exists() or list(upper.iterdir()) == []


def _blob_hashes(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (home / "blobs").rglob("*") if p.is_file()}


def test_writes_never_modify_the_store(home: Path, tree: Path, plain: Path, tmp_path: Path, cli: VockerRunner) -> None:
    before = _blob_hashes(home)
    db_objects = sorted(query(home, "SELECT digest, data FROM objects"))
    cli("export", "t", tmp_path / "export-before")
    everything = [(op[0].lstrip("!"), *op[1:]) for ops in SCENARIOS.values() for op in ops]
    with mounted(home, "t", tmp_path / "mnt") as mnt:
        for rel in FILES:  # change every lower file in place, in every way
            run_ops(mnt, [("write_at", rel, 1, b"CHANGED"), ("append", rel, b"+"), ("chmod", rel, 0o777),
                          ("truncate", rel, 3), ("utime", rel, (1, 1))])
        run_ops(mnt, everything)
        run_ops(mnt, [("rmtree", "d"), ("rmtree", "sub2"), ("unlink", BIG)])
    assert _blob_hashes(home) == before
    assert sorted(query(home, "SELECT digest, data FROM objects")) == db_objects
    verify = cli("verify")
    assert verify.stdout.startswith("OK:"), verify.stdout
    cli("export", "t", tmp_path / "export-after")
    assert snapshot(tmp_path / "export-after") == snapshot(tmp_path / "export-before") == snapshot(tree)


# --------------------------------------------------------------------------- named containers


def _check_oci_upper(upper: Path, tree: Path) -> dict[str, set[str]]:
    """Whiteouts are empty regular files naming a lower entry the layer does not also hold; opaque
    markers are empty files in directories of the lower layer. Returns {dir: whiteout names}."""
    found: dict[str, set[str]] = {}
    for dirpath, dirs, files in os.walk(upper):
        rel = os.path.relpath(dirpath, upper)
        for name in dirs + files:
            if not name.startswith(".wh."):
                continue
            path = Path(dirpath) / name
            assert path.is_file() and not path.is_symlink() and path.stat().st_size == 0, path
            if name == ".wh..wh..opq":
                assert (tree / rel).is_dir(), f"opaque marker in {rel}, which the image does not have"
                found.setdefault(rel, set()).add(name)
                continue
            hidden = name[len(".wh."):]
            assert os.path.lexists(tree / rel / hidden), f"whiteout {rel}/{name} hides nothing"
            assert hidden not in dirs + files, f"{rel}/{hidden} is both whited out and present"
            found.setdefault(rel, set()).add(name)
    return found


PERSISTED_CHANGES = [
    ("unlink", "small.txt"), ("unlink", "d/two.txt"), ("write_at", "mid.bin", 10, b"changed"),
    ("append", BIG, b"tail"), ("chmod", "run.sh", 0o700), ("rmtree", "d/sub"), ("mkdir", "d/sub"),
    ("create", "d/sub/fresh", b"fresh"), ("create", "new.txt", b"new"), ("symlink", "new.txt", "newlink"),
    ("unlink", "x"), ("rename", "text.txt", "x"), ("unlink", "x"),  # #354: x must stay gone
    ("rename", "sub2/y", "sub2/z"), ("rmdir", "empty"), ("mkdir", "nd"), ("create", "nd/f", b"f"),
    ("link", "new.txt", "nd/hard"), ("utime", "d/one.txt", (3_000_000_000, 4_000_000_000)),
]


def test_named_container_keeps_changes_across_remount(home: Path, tree: Path, plain: Path, tmp_path: Path,
                                                      cli: VockerRunner) -> None:
    name = "c-" + uuid.uuid4().hex[:8]
    cli("create", "t", "--name", name)
    mtimes = ("d/one.txt",)
    with mounted(home, name, tmp_path / "m1") as m1:
        conform(m1, plain, PERSISTED_CHANGES, mtimes=mtimes)
        before = snapshot(m1, mtimes=mtimes)
    assert not mounted_under(tmp_path)
    upper = home / "containers" / name / "upper"
    whiteouts = _check_oci_upper(upper, tree)
    assert whiteouts == {
        ".": {".wh.small.txt", ".wh.x", ".wh.text.txt", ".wh.empty"},
        "d": {".wh.two.txt"},
        "d/sub": {".wh..wh..opq"},
        "sub2": {".wh.y"},
    }
    assert (upper / "d" / "sub" / "fresh").read_bytes() == b"fresh"
    assert not (upper / "x").exists()
    assert (upper / "new.txt").stat().st_ino == (upper / "nd" / "hard").stat().st_ino
    with mounted(home, name, tmp_path / "m2") as m2:
        after = snapshot(m2, mtimes=mtimes)
        assert diff(after, before, ("remount", "before")) == []
        assert diff(after, snapshot(plain, mtimes=mtimes)) == []
        assert not (m2 / "x").exists() and "x" not in os.listdir(m2)
        assert os.stat(m2 / "nd" / "hard").st_nlink == 2
    assert _check_oci_upper(upper, tree) == whiteouts
    cli("rm", name)
    assert not (home / "containers" / name).exists()


def test_throwaway_container_is_discarded(home: Path, tmp_path: Path) -> None:
    with mounted(home, "t", tmp_path / "m") as m:
        (m / "new.txt").write_text("x")
        record = mount_record(home, m)
        assert record is not None
        container = home / "containers" / record[0]
        assert (container / "upper" / "new.txt").exists()
    assert not container.exists()
    assert mount_record(home, tmp_path / "m") is None
    with mounted(home, "t", tmp_path / "m") as m:
        assert not (m / "new.txt").exists()


# --------------------------------------------------------------------------- known bugs


def test_rename_directory_over_deleted_lower_directory(mnt: Path, plain: Path) -> None:
    conform(mnt, plain, [("rmtree", "d"), ("mkdir", "nd"), ("create", "nd/mine", b"mine"),
                         ("rename", "nd", "d"), ("listdir", "d"), ("!read", "d/one.txt")])


@pytest.mark.parametrize("change", [("chmod", "h1", 0o600), ("truncate", "h1", 2), ("open_trunc", "h1"),
                                    ("utime", "h1", (7, 8_000_000_000)), ("chown", "h1", 1, 2)],
                         ids=["chmod", "truncate", "open_trunc", "utimens", "chown"])
def test_hard_link_metadata_change_is_seen_through_the_other_name(mnt: Path, plain: Path, change: tuple) -> None:
    after = [("mtime", "h2")] if change[0] == "utime" else []  # creation times differ between the trees
    conform(mnt, plain, [("create", "h1", b"hello"), ("link", "h1", "h2"), ("stat", "h2"), ("read", "h2"),
                         ("owner", "h2"), change, ("stat", "h2"), ("read", "h2"), ("owner", "h2"), *after],
            mtimes=("h1", "h2") if after else ())


def test_rename_between_two_hard_links_of_one_file(mnt: Path, plain: Path, home: Path) -> None:
    conform(mnt, plain, [("create", "h1", b"one"), ("link", "h1", "h2"), ("rename", "h1", "h2"),
                         ("read", "h1"), ("read", "h2"), ("listdir", ""),
                         ("link", "small.txt", "s2"), ("rename", "small.txt", "s2"), ("read", "small.txt")])


def test_created_modes_follow_the_callers_umask(mnt: Path, plain: Path) -> None:
    old = os.umask(0)
    try:
        conform(mnt, plain, [("create", "f", b"", 0o666), ("mkdir", "dd", 0o777), ("stat", "f"), ("stat", "dd")])
    finally:
        os.umask(old)


def test_copy_up_of_parent_directories_ignores_the_daemons_umask(home: Path, plain: Path, tmp_path: Path) -> None:
    with mounted(home, "t", tmp_path / "m", umask=0o077) as m:
        conform(m, plain, [("stat", "d"), ("create", "d/sub/new", b"n"), ("stat", "d"), ("stat", "d/sub"),
                           ("write_at", "sub2/x", 0, b"S"), ("stat", "sub2"), ("chmod", "empty", 0o755),
                           ("stat", "empty")])


def test_reader_opened_before_copy_up_sees_the_write(mnt: Path, plain: Path) -> None:
    def sequence(root: Path) -> list[bytes]:
        seen = []
        reader = os.open(root / "mid.bin", os.O_RDONLY)
        try:
            seen.append(os.pread(reader, 4, 0))  # the kernel caches the first page
            writer = os.open(root / "mid.bin", os.O_WRONLY)  # copy-up
            os.pwrite(writer, b"HELLO", 500)
            os.close(writer)
            seen.append(os.pread(reader, 5, 500))
        finally:
            os.close(reader)
        seen.append((root / "mid.bin").read_bytes()[500:505])  # a new open
        return seen

    want = sequence(plain)
    assert want[1:] == [b"HELLO", b"HELLO"]
    assert sequence(mnt) == want


def test_files_removed_while_open_stay_readable_and_leave_no_trace(mnt: Path, plain: Path, home: Path) -> None:
    """libfuse renames such a file to .fuse_hidden* until its last close; the mount must not
    show that name, copy a lower file up for it, or keep it in the writable layer."""
    def sequence(root: Path) -> list[object]:
        seen: list[object] = []
        lower = os.open(root / "mid.bin", os.O_RDONLY)  # from the image
        os.unlink(root / "mid.bin")
        seen += [os.fstat(lower).st_size, os.pread(lower, 10, 990), sorted(os.listdir(root))]
        os.close(lower)
        fd = os.open(root / "new.txt", os.O_RDWR | os.O_CREAT, 0o644)  # in the writable layer
        os.write(fd, b"x" * 100)
        os.unlink(root / "new.txt")
        os.write(fd, b"y" * 50)
        seen += [os.fstat(fd).st_size, os.pread(fd, 3, 98), sorted(os.listdir(root))]
        os.close(fd)
        target = os.open(root / "text.txt", os.O_RDONLY)  # renamed over while open
        os.rename(root / "small.txt", root / "text.txt")
        seen += [os.fstat(target).st_size, os.pread(target, 20, 0), (root / "text.txt").read_bytes()[:20]]
        os.close(target)
        seen.append(sorted(os.listdir(root)))
        return seen

    assert sequence(mnt) == sequence(plain)
    upper = upper_of(home, mnt)
    left = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert not [p for p in left if ".fuse_hidden" in p or p == "mid.bin"], left
    assert ".wh.mid.bin" in left
