"""POSIX names and special files in a mounted container, each compared with a plain directory.

Every test mounts a named container of a venv image (``vocker create`` + ``vocker mount``) and
exports the same image into a plain directory; the same operations run in both, below
site-packages, and the results (value or errno) and the resulting trees must be equal:

* names longer than 255 bytes are ENAMETOOLONG, in lookups and creations (issue 12, item 5);
* the longest relative path that works on disk works in a mount too: the daemon works
  relative to descriptors of its writable layer, not to its absolute path (item 6);
* directories without image contents (re-created, opaque, upper-only) can be renamed; only
  directories merged with the image's are refused with EXDEV, as kernel overlayfs does with
  ``redirect_dir=off``: those scenarios also run on a real kernel overlay mount (item 7);
* FIFOs and Unix sockets can be created, in the writable layer (item 9).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS, VockerRunner, _find_vocker_exe  # noqa: E402
from mounthelp import compare_ops, diff, force_cleanup, run_ops, snapshot  # noqa: E402

pytestmark = MOUNTS

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"
#: extra image contents in site-packages: a setuptools-like package (the issue's reproducer)
#: and an empty directory
EXTRA = {"_distutils_hack/__init__.py": b"# hack\n", "_distutils_hack/override.py": b"__import__('_distutils_hack')\n"}
EMPTY = "emptydir"

_PRISTINE: dict[str, Path] = {}


# --------------------------------------------------------------------------- fixtures


@attrs.frozen
class Env:
    mnt: Path      # the mounted named container
    plain: Path    # the same image exported into a plain directory
    upper: Path    # the container's writable layer
    cli: VockerRunner

    @property
    def msite(self) -> Path:
        return self.mnt / SITE

    @property
    def psite(self) -> Path:
        return self.plain / SITE

    @contextlib.contextmanager
    def remounted(self) -> Iterator[Path]:
        """Unmount, then mount the container again (what was persisted, read back)."""
        self.cli("unmount", self.mnt)
        self.cli("mount", "c", self.mnt)
        yield self.mnt


@pytest.fixture
def env(make_venv, tmp_path_factory: pytest.TempPathFactory, vocker, vocker_home: Path,
        tmp_path: Path) -> Iterator[Env]:
    if not _PRISTINE:
        base = tmp_path_factory.mktemp("posix-pristine")
        venv = make_venv(base / "src", packages=("alpha==1.0", "gamma"))
        for rel, data in EXTRA.items():
            (venv / SITE / rel).parent.mkdir(parents=True, exist_ok=True)
            (venv / SITE / rel).write_bytes(data)
        (venv / SITE / EMPTY).mkdir()
        home = base / "home"
        home.mkdir()
        VockerRunner(home, _find_vocker_exe())("image", "import", venv, "-t", "img")
        _PRISTINE.update(home=home)
    shutil.copytree(_PRISTINE["home"], vocker_home, dirs_exist_ok=True, symlinks=True)
    vocker("create", "img", "--name", "c")
    vocker("export", "img", tmp_path / "plain")
    vocker("mount", "c", tmp_path / "mnt")
    try:
        yield Env(tmp_path / "mnt", tmp_path / "plain", vocker_home / "containers" / "c" / "upper", vocker)
    finally:
        vocker("unmount", tmp_path / "mnt", check=False)
        force_cleanup(tmp_path)


# --------------------------------------------------------------------------- operations


def _fifo_roundtrip(p: Callable[[str], str], rel: str) -> Any:
    """Write through a FIFO from one thread, read from another."""
    out: list[bytes] = []

    def writer() -> None:
        with open(p(rel), "wb") as f:
            f.write(b"through the pipe\n")

    t = threading.Thread(target=writer)
    t.start()
    with open(p(rel), "rb") as f:
        out.append(f.read())
    t.join(10)
    return out[0]


def _ftype(p: Callable[[str], str], rel: str) -> str:
    return stat.filemode(os.lstat(p(rel)).st_mode)


EXTRA_OPS: dict[str, Callable[..., Any]] = {
    "mkfifo": lambda p, rel, mode=0o644: os.mkfifo(p(rel), mode),
    "mknod": lambda p, rel, mode: os.mknod(p(rel), mode),
    "fifo_roundtrip": _fifo_roundtrip,
    "ftype": _ftype,
}


@contextlib.contextmanager
def inside(root: Path | str) -> Iterator[None]:
    """Work in ``root``: paths relative to it may then be as long as on any disk (PATH_MAX counts
    only what is passed, not the directory's own path)."""
    old = os.getcwd()
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(old)


def run(root: Path | str, ops: list[tuple]) -> list[tuple]:
    """mounthelp.run_ops, with relative paths and the special-file operations of this module."""
    results = []
    with inside(root):
        for op in ops:
            if op[0] in EXTRA_OPS:
                try:
                    results.append(("ok", EXTRA_OPS[op[0]](lambda rel: rel or ".", *op[1:])))
                except OSError as exc:
                    results.append(("err", errno.errorcode.get(exc.errno or 0, str(exc.errno))))
            else:
                results += run_ops(".", [op])
    return results


def picture(root: Path | str) -> dict[str, tuple]:
    """mounthelp.snapshot of a tree whose paths may be longer than PATH_MAX with ``root`` in front.

    Bytecode is shown without its bytes: a pyc names the path its source was compiled at,
    which is the mount point in a mount and the export's directory in the plain copy."""
    with inside(root):
        tree = snapshot(".")
    return {rel: item[:2] if "__pycache__/" in rel else item for rel, item in tree.items()}


def conform(mroot: Path, proot: Path, ops: list[tuple]) -> list[tuple]:
    """Same results and same final trees in the mount and the plain directory (``!``: an op
    that fails on the plain directory, so a scenario cannot pass by a typo)."""
    expect_err = [op[0].startswith("!") for op in ops]
    ops = [(op[0].lstrip("!"), *op[1:]) for op in ops]
    want = run(proot, ops)
    bad = [f"#{i} {op!r} -> {w!r}" for i, (op, w, e) in enumerate(zip(ops, want, expect_err)) if (w[0] == "err") != e]
    assert not bad, "scenario does not do what it says on the plain directory:\n" + "\n".join(bad)
    got = run(mroot, ops)
    problems = compare_ops(ops, got, want) + diff(picture(mroot), picture(proot))
    assert not problems, "mount and plain directory differ:\n" + "\n".join(problems)
    return got


# --------------------------------------------------------------------------- kernel overlayfs


_OVERLAY_SCRIPT = textwrap.dedent("""
    import os, pickle, subprocess, sys
    tests, lower, scratch, sub, ops_file = sys.argv[1:]
    sys.path.insert(0, tests)
    from test_posix_names import picture, run
    merged = os.path.join(scratch, "merged")
    options = f"lowerdir={lower},upperdir={scratch}/upper,workdir={scratch}/work,redirect_dir=off"
    if os.getuid() != 0:  # in a user namespace of its own
        options += ",userxattr"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=True)
    with open(ops_file, "rb") as f:
        ops = pickle.load(f)
    root = os.path.join(merged, sub)
    results = run(root, ops)
    with open(ops_file, "wb") as f:
        pickle.dump((results, picture(root)), f)
""")


def in_kernel_overlay(lower: Path, scratch: Path, ops: list[tuple]) -> tuple[list[tuple], dict]:
    """Run ``ops`` below SITE in a kernel overlayfs mount (redirect_dir=off) of ``lower`` made in a
    private mount namespace; its results and the resulting tree."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a kernel overlay mount")
    for name in ("upper", "work", "merged"):
        (scratch / name).mkdir(parents=True)
    ops_file = scratch / "ops.pickle"
    ops_file.write_bytes(pickle.dumps([(op[0].lstrip("!"), *op[1:]) for op in ops]))
    namespace = ["unshare", "-m"] if os.getuid() == 0 else ["unshare", "-Urm"]
    proc = subprocess.run([*namespace, sys.executable, "-c", _OVERLAY_SCRIPT, str(Path(__file__).parent),
                           str(lower), str(scratch), SITE, str(ops_file)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "mount" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"kernel overlayfs cannot be mounted here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return pickle.loads(ops_file.read_bytes())


# --------------------------------------------------------------------------- item 5: long names


def test_names_longer_than_255_bytes_are_enametoolong(env: Env) -> None:
    long, ok = "a" * 256, "b" * 255
    wide, wide_ok = "é" * 128, "é" * 127  # 256 and 254 bytes in UTF-8
    conform(env.msite, env.psite, [
        ("!stat", long), ("!lstat", long), ("!stat", f"{long}/x"), ("!stat", f"alpha/{long}"), ("!read", long),
        ("!stat", wide), ("!listdir", long), ("!create", long, b"x"), ("!create", f"alpha/{wide}", b"x"),
        ("!create", f"{EMPTY}/{long}", b"x"), ("!mkdir", long), ("!mkdir", f"gamma/{wide}"),
        ("!symlink", "alpha", long), ("!link", "alpha/__init__.py", long),
        ("!rename", "alpha/__init__.py", long), ("!rename", long, "x"), ("!unlink", long), ("!rmdir", long),
        ("!chmod", long, 0o600), ("!truncate", long, 0), ("!readlink", long), ("!create", f".wh.{long}", b""),
        ("create", ok, b"255 bytes are fine"), ("stat", ok), ("read", ok), ("mkdir", wide_ok),
        ("create", f"{wide_ok}/{ok}", b"y"), ("rename", ok, f"{wide_ok}/{'c' * 255}"), ("listdir", wide_ok),
        ("!create", f"{wide_ok}/{ok}/{long}", b""), ("listdir", ""),
    ])


# --------------------------------------------------------------------------- item 6: long paths


DEPTH, NAME_LEN = 20, 200  # 20 levels of 200-byte names and a file: a 4090-byte relative path


def _deep_ops(root: Path) -> list[Any]:
    """Create, write, read, stat, change and remove files at the end of a ~4090-byte path
    relative to ``root``; the result of each step, or its errno."""
    dirs = ["/".join(f"{i:02d}" + "d" * (NAME_LEN - 2) for i in range(n + 1)) for n in range(DEPTH)]
    deep = dirs[-1]
    leaf = f"{deep}/{'f' * (4090 - len(deep) - 1)}"
    assert len(leaf.encode()) == 4090
    out: list[Any] = []
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def step(fn: Callable[[], Any]) -> None:
        try:
            out.append(("ok", fn()))
        except OSError as exc:
            out.append(("err", errno.errorcode.get(exc.errno or 0)))

    def write(rel: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_EXCL) -> int:
        fd = os.open(rel, flags, 0o644, dir_fd=top)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def read(rel: str) -> bytes:
        fd = os.open(rel, os.O_RDONLY, dir_fd=top)
        try:
            return os.read(fd, 1 << 16)
        finally:
            os.close(fd)

    def stat_of(rel: str) -> tuple:
        st = os.stat(rel, dir_fd=top, follow_symlinks=False)
        return (stat.filemode(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_nlink)

    def listing(rel: str) -> list[str]:
        fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=top)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def truncate(rel: str, n: int) -> None:
        fd = os.open(rel, os.O_WRONLY, dir_fd=top)
        try:
            os.ftruncate(fd, n)
        finally:
            os.close(fd)

    try:
        for d in dirs:
            step(lambda d=d: os.mkdir(d, 0o755, dir_fd=top))
        step(lambda: write(leaf, b"at the end of a long path\n"))
        step(lambda: read(leaf))
        step(lambda: stat_of(leaf))
        step(lambda: write(leaf, b" appended", os.O_WRONLY | os.O_APPEND))
        step(lambda: truncate(leaf, 20))
        step(lambda: os.chmod(leaf, 0o600, dir_fd=top))
        step(lambda: os.utime(leaf, ns=(10**18, 2 * 10**18), dir_fd=top, follow_symlinks=False))
        step(lambda: os.stat(leaf, dir_fd=top).st_mtime_ns)
        step(lambda: stat_of(leaf))
        step(lambda: os.symlink("f" * 10, f"{deep}/s", dir_fd=top))
        step(lambda: os.readlink(f"{deep}/s", dir_fd=top))
        step(lambda: os.link(leaf, f"{deep}/h", src_dir_fd=top, dst_dir_fd=top, follow_symlinks=False))
        step(lambda: stat_of(f"{deep}/h"))
        step(lambda: os.rename(leaf, f"{deep}/g", src_dir_fd=top, dst_dir_fd=top))
        step(lambda: os.mkfifo(f"{deep}/fifo", dir_fd=top))
        step(lambda: listing(deep))
        step(lambda: read(f"{deep}/g"))
        step(lambda: os.rename(dirs[-2], "moved", src_dir_fd=top, dst_dir_fd=top))  # an upper-only directory
        step(lambda: listing("moved"))
        step(lambda: os.rename("moved", dirs[-2], src_dir_fd=top, dst_dir_fd=top))
        for name in ("g", "h", "s", "fifo"):
            step(lambda name=name: os.unlink(f"{deep}/{name}", dir_fd=top))
        step(lambda: os.mkdir(f"{deep}/{'e' * 4}", dir_fd=top))
        for d in reversed([*dirs, f"{deep}/{'e' * 4}"]):
            step(lambda d=d: os.rmdir(d, dir_fd=top))
        step(lambda: listing("."))
    finally:
        os.close(top)
    return out


def test_a_4090_byte_relative_path_works_as_on_disk(env: Env) -> None:
    want = _deep_ops(env.plain)
    assert all(r[0] == "ok" for r in want), want
    got = _deep_ops(env.mnt)
    assert got == want
    assert diff(picture(env.msite), picture(env.psite)) == []
    assert len(str(env.upper).encode()) + 1 + 4090 > 4095, "the layer's own path must matter in this test"


def test_a_long_path_below_a_directory_of_the_image(env: Env) -> None:
    """Copy-up, whiteouts and opaque markers at the end of a long path (the lower directory is
    made in the writable layer as the path is created)."""
    long = "/".join(f"{i:02d}" + "q" * 198 for i in range(19))  # 3818 bytes
    conform(env.msite / "gamma", env.psite / "gamma", [
        ("mkdir", long.split("/")[0]), *[("mkdir", "/".join(long.split("/")[:n])) for n in range(2, 20)],
        ("create", f"{long}/{'x' * 200}", b"x"), ("rename", "data/info.txt", f"{long}/info"),
        ("read", f"{long}/info"), ("!read", "data/info.txt"), ("listdir", "data"),
        ("rename", f"{long}/info", "data/info.txt"), ("read", "data/info.txt"), ("listdir", long),
    ])


# --------------------------------------------------------------------------- item 7: renaming directories


RENAMES = [
    # the issue's reproducer: a directory re-created in the writable layer (opaque)
    ("rmtree", "_distutils_hack"), ("mkdir", "_distutils_hack"), ("create", "_distutils_hack/mine.py", b"m"),
    ("rename", "_distutils_hack", "x"), ("listdir", "x"), ("!stat", "_distutils_hack"), ("!stat", "x/override.py"),
    # a directory that replaced a deleted file
    ("unlink", "gamma/data/info.txt"), ("mkdir", "gamma/data/info.txt"), ("create", "gamma/data/info.txt/f", b"f"),
    ("rename", "gamma/data/info.txt", "gamma/moved"), ("listdir", "gamma/data"), ("listdir", "gamma/moved"),
    # a new directory moved over an empty image directory, then on
    ("mkdir", "nd"), ("create", "nd/f", b"f"), ("rename", "nd", EMPTY), ("listdir", EMPTY),
    ("rename", EMPTY, "again"), ("listdir", "again"), ("!stat", EMPTY), ("!stat", "nd"),
    # an opaque directory moved where the image has a deleted directory: its contents stay hidden
    ("rmtree", "gamma/sub"), ("rename", "x", "gamma/sub"), ("listdir", "gamma/sub"), ("!stat", "gamma/sub/mod1.py"),
]
RENAMES_ON = [
    ("rename", "gamma/sub", "x2"), ("listdir", "x2"), ("!stat", "gamma/sub"), ("listdir", "gamma"),
    # and into a directory of the image, by a name the image does not have
    ("rename", "x2", "alpha/inner"), ("listdir", "alpha"), ("listdir", "alpha/inner"),
    ("rename", "again", "alpha/inner/again"), ("unlink", "gamma/moved/f"),
    ("rmdir", "gamma/moved"), ("listdir", "gamma"), ("listdir", ""),
]
#: merged with the image's directories: refused by kernel overlayfs without redirect_dir, and here
MERGED = [("rename", "alpha", "alpha2"), ("rename", "gamma/data", "data2"), ("rename", "gamma", "alpha/g")]


def test_directories_without_image_contents_can_be_renamed(env: Env, tmp_path: Path) -> None:
    want, tree = in_kernel_overlay(env.plain, tmp_path / "kernel", [*RENAMES, *RENAMES_ON, *MERGED, ("listdir", "")])
    upper = env.upper / SITE
    got = conform(env.msite, env.psite, RENAMES)
    assert sorted(os.listdir(upper / "gamma" / "sub")) == [".wh..wh..opq", "mine.py"]  # made opaque where needed
    assert not (upper / EMPTY).exists() and os.listdir(upper / "again") == ["f"]  # no marker where none is needed
    got += conform(env.msite, env.psite, RENAMES_ON)
    got += run(env.msite, [*MERGED, ("listdir", "")])
    assert got == want and got[-4:-1] == [("err", "EXDEV")] * 3
    assert diff(picture(env.msite), tree, ("mount", "overlayfs")) == []
    names = set(os.listdir(upper))
    assert {".wh._distutils_hack", f".wh.{EMPTY}"} <= names
    assert not {".wh.x", ".wh.x2", ".wh.again", ".wh.nd"} & names, "no whiteout hides nothing"
    assert ".wh.sub" in os.listdir(upper / "gamma")
    assert sorted(os.listdir(upper / "alpha" / "inner")) == ["again", "mine.py"]
    before = picture(env.msite)
    with env.remounted():
        assert diff(picture(env.msite), before, ("remount", "before")) == []


def test_the_issues_reproducer(env: Env) -> None:
    site = env.msite
    subprocess.run(["rm", "-rf", site / "_distutils_hack"], check=True)
    (site / "_distutils_hack").mkdir()
    proc = subprocess.run([sys.executable, "-c", f"import os; os.rename({str(site / '_distutils_hack')!r}, "
                                                 f"{str(site / 'x')!r})"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(site / "x") == [] and not (site / "_distutils_hack").exists()


# --------------------------------------------------------------------------- item 9: FIFOs and sockets


def test_fifos_and_regular_mknod_as_on_disk(env: Env) -> None:
    conform(env.msite, env.psite, [
        ("mkfifo", "fifo"), ("ftype", "fifo"), ("fifo_roundtrip", "fifo"), ("mkfifo", "alpha/pipe", 0o600),
        ("ftype", "alpha/pipe"), ("fifo_roundtrip", "alpha/pipe"), ("!mkfifo", "fifo"), ("!mkfifo", "alpha"),
        ("!mkfifo", "nope/fifo"), ("mknod", "regular", stat.S_IFREG | 0o640), ("stat", "regular"),
        ("rename", "fifo", "gamma/fifo2"), ("ftype", "gamma/fifo2"), ("listdir", "alpha"), ("listdir", "gamma"),
        ("unlink", "alpha/pipe"), ("!stat", "alpha/pipe"), ("listdir", ""),
    ])


def test_device_nodes_are_refused_with_eperm(env: Env) -> None:
    for kind in (stat.S_IFCHR, stat.S_IFBLK):
        with pytest.raises(OSError) as info:
            os.mknod(env.msite / "dev", kind | 0o600, os.makedev(1, 3))
        assert info.value.errno == errno.EPERM
    assert not (env.msite / "dev").exists() and not (env.upper / SITE / "dev").exists()


_SERVER = textwrap.dedent("""
    import os, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("server.sock")  # relative: the directory is the working directory
    s.listen(1)
    print("ready", flush=True)
    conn, _ = s.accept()
    conn.sendall(conn.recv(100).upper())
    conn.close()
    s.close()
""")


def _serve_and_connect(where: Path) -> list[Any]:
    server = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=where, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        seen: list[Any] = [stat.filemode(os.lstat(where / "server.sock").st_mode)]
        dirfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)  # a short address whatever the directory's path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(10)
                c.connect(f"/proc/self/fd/{dirfd}/server.sock")
                c.sendall(b"hello over a unix socket")
                seen.append(c.recv(100))
        finally:
            os.close(dirfd)
        seen.append(server.wait(10))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    seen.append(sorted(os.listdir(where)))
    os.unlink(where / "server.sock")
    seen.append(sorted(os.listdir(where)))
    return seen


def test_a_server_binds_a_unix_socket_in_the_mount(env: Env) -> None:
    want = _serve_and_connect(env.psite / "alpha")
    assert want[0].startswith("s") and want[1:3] == [b"HELLO OVER A UNIX SOCKET", 0]
    assert _serve_and_connect(env.msite / "alpha") == want
    assert diff(picture(env.msite), picture(env.psite)) == []


FIFO_OVER_IMAGE = [
    ("unlink", "alpha/__init__.py"), ("mkfifo", "alpha/__init__.py"), ("ftype", "alpha/__init__.py"),
    ("listdir", "alpha"), ("rmtree", "gamma/sub"), ("mkdir", "gamma/sub"), ("mkfifo", "gamma/sub/mod1.py"),
    ("listdir", "gamma/sub"), ("mkfifo", "gamma/data/info.txt.new"), ("rename", "gamma/data/info.txt.new",
                                                                       "gamma/data/info.txt"),
    ("ftype", "gamma/data/info.txt"), ("fifo_roundtrip", "gamma/data/info.txt"),
]


def test_a_fifo_replacing_a_deleted_image_file(env: Env, tmp_path: Path) -> None:
    want, tree = in_kernel_overlay(env.plain, tmp_path / "kernel", FIFO_OVER_IMAGE)
    assert conform(env.msite, env.psite, FIFO_OVER_IMAGE) == want
    assert diff(picture(env.msite), tree, ("mount", "overlayfs")) == []
    upper = env.upper / SITE
    assert stat.S_ISFIFO(os.lstat(upper / "alpha" / "__init__.py").st_mode)
    assert not (upper / "alpha" / ".wh.__init__.py").exists()
    assert sorted(os.listdir(upper / "gamma" / "sub")) == [".wh..wh..opq", "mod1.py"]
    before = picture(env.msite)
    with env.remounted():
        assert diff(picture(env.msite), before, ("remount", "before")) == []
        conform(env.msite, env.psite, [("unlink", "alpha/__init__.py"), ("!stat", "alpha/__init__.py"),
                                       ("listdir", "alpha"), ("unlink", "gamma/data/info.txt"),
                                       ("!stat", "gamma/data/info.txt")])
    assert {".wh.__init__.py"} <= set(os.listdir(upper / "alpha"))
