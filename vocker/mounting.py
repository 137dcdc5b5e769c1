"""Mount, unmount and check containers (the process side of the mount layer).

``mount`` starts a daemon (vocker.daemon) and returns once the kernel mount is in
place; ``unmount`` asks the kernel to unmount, which ends the daemon. A daemon
that died or hangs is handled with ``force``: lazy-unmount, kill it, and as a last
resort abort the FUSE connection — never a reboot, and never a look into the mount
(a stat of a hung mount waits forever).

The daemon holds its container's lock (containers.claim) for its whole life and records
its mount before mounting, so a kill -9 anywhere leaves either a recorded mount or a
container nobody holds, which ``reap_orphans`` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from . import containers, fusecheck
from .containers import MountRecord
from .db import Error as DatabaseError
from .errors import FuseUnavailableError, NotFoundError, UsageError, VockerError
from .pythons import find_interpreter
from .store import Store

READY_TIMEOUT = 60.0
#: Where the kernel's fusectl file system shows FUSE connections (mounted on demand).
FUSECTL = "/sys/fs/fuse/connections"
#: How long unmount retries a busy mount (the daemon's read-ahead closes its files within one read).
BUSY_GRACE = 0.5
#: Where libfuse's fusermount3 reads whether users other than root may mount with allow_other.
FUSE_CONF = "/etc/fuse.conf"

#: Daemons this (multi-threaded) process started as children, kept so they can be reaped.
_spawned: list[subprocess.Popen] = []


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fuse_mounts() -> dict[str, tuple[str, str, str]]:
    """mount point -> (major:minor, fs type, source) for FUSE mounts, read without touching the mounts."""
    out = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if rfields and rfields[0].startswith("fuse"):
                    source = _unescape(rfields[1]) if len(rfields) > 1 else ""
                    out[_unescape(fields[4])] = (fields[2], rfields[0], source)
    except FileNotFoundError:
        pass
    return out


def resolve_mountpoint(path: Path | str) -> str:
    """The absolute path a mount point names, symlinks resolved, without looking into any mount.

    mount and unmount both use it, so a symlink names its target for both. The parent is
    resolved with realpath; the last component is followed only while it is a symlink and not
    a mount point, as a stat of a mount point waits for its daemon (which may hang).
    """
    path = os.path.abspath(path)
    mounts = fuse_mounts()
    for _ in range(40):  # the kernel's limit of symlinks in one lookup
        parent, name = os.path.split(path)
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        path = os.path.join(os.path.realpath(parent), name)
        if path in mounts or not os.path.islink(path):
            return path
        path = os.path.join(os.path.dirname(path), os.readlink(path).rstrip("/") or "/")
    raise UsageError(f"too many levels of symbolic links: {path}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def responsive(path: str, timeout: float = 2.0) -> bool:
    """stat() the mount in a thread: a hung daemon must not hang the caller."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.stat(path)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def status(record: MountRecord) -> str:
    if not pid_alive(record.pid) or record.mountpoint not in fuse_mounts():
        return "stale"
    return "healthy" if responsive(record.mountpoint) else "hung"


def _check_mountpoint(store: Store, mountpoint: str) -> None:
    """Refuse (or create) the resolved mount point: an empty directory outside the store."""
    root = os.path.realpath(store.root)
    warm = os.path.join(root, "warm") + "/"  # the store's warm mounts (vocker.runclient.warm_root): served from elsewhere
    if mountpoint == root or (mountpoint.startswith(root.rstrip("/") + "/") and not mountpoint.startswith(warm)):
        # the daemon would serve requests on the files it serves from (its own upper/: a deadlock)
        raise UsageError(f"mount point {mountpoint} is inside the store {root}")
    if mountpoint in fuse_mounts():
        raise UsageError(f"{mountpoint} is already a mount point")
    path = Path(mountpoint)
    if path.exists() and not path.is_dir():
        raise UsageError(f"mount point is not a directory: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create mount point {path}: {exc.strerror or exc}") from None
    if any(path.iterdir()):
        raise UsageError(f"mount point is not empty: {path}")


def _claim_named(store: Store, name: str) -> int:
    """The named container's lock, or the error that it is mounted (one mount per container)."""
    try:
        lock = containers.claim(store, name)
    except FileNotFoundError:
        raise VockerError(f"container {name} has lost its directory {containers.container_dir(store, name)}; "
                          "remove it with 'vocker rm'") from None
    if lock is None:
        where = [m.mountpoint for m in containers.mounts(store) if m.container == name]
        raise UsageError(f"container {name} is already mounted" + (f" at {where[0]}" if where else ""))
    if containers.get(store, name) is None:  # removed while we waited for nothing
        os.close(lock)
        raise NotFoundError(f"no such container: {name}")
    return lock


def user_allow_other(conf: str = FUSE_CONF) -> bool:
    """Whether fusermount3 lets a user other than root mount with allow_other (a line
    ``user_allow_other`` in /etc/fuse.conf, as fusermount3 reads it)."""
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount(store: Store, ref: str, path: Path | str, *, read_only: bool = False, audit: bool = False,
          owner_pid: int | None = None, python: Path | None = None, allow_other: bool = False,
          warm_control: bytes | None = None, close_fds: tuple[int, ...] = ()) -> MountRecord:
    """Mount a container (by name) or a fresh throw-away container of an image (by ref).

    ``allow_other``: other users may use the mount too (file permissions still apply); the
    daemon, which runs as its owner, reads the private store for them. ``warm_control``: a
    warm mount (vocker.warm), whose daemon empties its writable layer when asked on this
    abstract socket; ``close_fds``: the caller's descriptors a forked daemon must not keep.
    """
    if allow_other and os.geteuid() != 0 and not user_allow_other():
        raise VockerError(f"--allow-other needs a line 'user_allow_other' in {FUSE_CONF} (root may add it: it lets "
                          "users share their FUSE mounts), or a mount made by root")
    unavailable = fusecheck.problem()
    if unavailable:
        raise FuseUnavailableError(unavailable)
    mountpoint = resolve_mountpoint(path)
    _check_mountpoint(store, mountpoint)
    container = containers.get(store, ref)
    lock: int | None = None
    try:
        if container is not None:
            lock = _claim_named(store, container.name)
        image_id = container.image_id if container is not None else store.resolve(ref)
        manifest = store.manifest(image_id)
        interpreter = None
        if manifest.kind == "venv" and not audit:
            assert manifest.python is not None
            interpreter = find_interpreter(manifest.python, store.image(image_id).provenance.get("base_interpreter"),
                                           python)
        if container is None:
            container, lock = containers.create_throwaway(store, image_id)
        assert lock is not None
        read_only = read_only or audit
        log_path = containers.container_dir(store, container.name) / "daemon.log"
        r, w = os.pipe()
        options = {"read_only": read_only, "audit": audit, "allow_other": allow_other,
                   **({"warm": True} if warm_control else {})}
        config = {"store": str(store.root), "container": container.name, "image_id": image_id,
                  "mountpoint": mountpoint, "read_only": read_only, "audit": audit, "interpreter": interpreter,
                  "owner_pid": owner_pid, "ready_fd": w, "lock_fd": lock, "allow_other": allow_other,
                  "warm_control": warm_control.decode("latin-1") if warm_control else None,
                  "close_fds": list(close_fds)}
        try:
            _start_daemon(store, config, log_path, r, w, lock)
            message = _wait_ready(r)
        finally:
            os.close(r)
        if not message.startswith("ok "):
            if message.startswith("error: ") and not container.persistent:  # the daemon gave up: nobody uses it
                containers.remove(store, container.name, durable=False)
            # a throw-away container's log went with it: name the log only where it stays
            where = f" (log: {log_path})" if log_path.exists() else ""
            raise VockerError(f"mount failed: {message.removeprefix('error: ')}{where}")
        # the daemon recorded the mount itself, before mounting
        return MountRecord(mountpoint, container.name, int(message.split()[1]), time.time(), options)
    finally:
        if lock is not None:
            os.close(lock)  # the daemon keeps its own copy for its life


def _start_daemon(store: Store, config: dict[str, object], log_path: Path, r: int, w: int, lock: int) -> None:
    """Start the serving process, which reports "ok PID" or "error: ..." on the pipe.

    A single-threaded caller (the CLI) double-forks, so the daemon starts with every
    module already imported (a mount takes tens of milliseconds, not a Python start-up)
    and is re-parented to init. Forking a multi-threaded process is unsafe, so there
    the daemon is a fresh interpreter instead. Either way it inherits the container's lock.
    """
    if hasattr(os, "fork") and threading.active_count() == 1:
        # No SQLite connection may be open across fork: the child would inherit the
        # library's lock bookkeeping without the locks, and this process's exit would
        # then delete the WAL the daemon is still writing to (its writes lost).
        store.close()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked processes
            code = 1
            try:
                os.setsid()
                if os.fork() == 0:
                    os.close(r)
                    for fd in config.pop("close_fds", ()):  # type: ignore[attr-defined]
                        with contextlib.suppress(OSError):
                            os.close(fd)
                    null = os.open(os.devnull, os.O_RDWR)
                    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    os.dup2(null, 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    from . import daemon
                    code = daemon.main(config)
                else:
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        os.waitpid(child, 0)
        return
    _spawned[:] = [p for p in _spawned if p.poll() is None]  # reap daemons that have exited since
    with open(log_path, "ab") as log:
        config = {k: v for k, v in config.items() if k != "close_fds"}  # a new process inherits none of them
        proc = subprocess.Popen([sys.executable, "-m", "vocker.daemon", json.dumps(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, pass_fds=(w, lock), start_new_session=True)
    os.close(w)
    _spawned.append(proc)


def _wait_ready(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:  # every writer is gone: the daemon exited
                break
            data += chunk
            if data.endswith(b"\n"):
                break
    text = data.decode(errors="replace").strip()
    if not text:
        return ("error: the mount daemon exited before it was ready" if time.monotonic() < deadline
                else "the mount daemon did not become ready in time")
    return text


def _fusermount(mountpoint: str, lazy: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint],
                          capture_output=True, text=True)


def _busy(result: subprocess.CompletedProcess[str]) -> bool:
    """fusermount3 tells EBUSY only in its message."""
    return result.returncode != 0 and "busy" in result.stderr.lower()


def _abort_connection(dev: str) -> bool:
    """Fail every request of a FUSE connection (by the mount's major:minor), mounting fusectl if needed.

    The last resort for a daemon that even SIGKILL does not end (stuck in the kernel on a
    request of its own mount); whether the abort was written.
    """
    major, _, minor = dev.partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return False
    abort = Path(FUSECTL, str(int(major) << 20 | int(minor)), "abort")  # the kernel's dev_t, as fusectl names it
    if not abort.exists():
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True)
    try:
        abort.write_text("1")
        return True
    except OSError:
        return False


def _wait_exit(store: Store, record: MountRecord, seconds: float) -> bool:
    """Wait until the daemon is gone: dead, and its container's lock released (it is released only
    when the last of its threads has exited, after the pid already reads as a zombie)."""
    def gone() -> bool:
        return not pid_alive(record.pid) and not containers.is_held(store, record.container)

    deadline = time.monotonic() + seconds
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.005)
    return gone()


def unmount(store: Store, path: Path | str, *, force: bool = False) -> MountRecord | None:
    """Unmount a vocker mount (recorded, or seen in /proc/self/mountinfo) and clean up after it.

    Nothing here looks into the mount: with ``force`` a hung daemon is unmounted lazily,
    killed, and if even that does not end it, its FUSE connection is aborted.
    """
    mountpoint = resolve_mountpoint(path)
    record = containers.mount_of(store, mountpoint)
    live = fuse_mounts().get(mountpoint)
    if record is None and (live is None or live[1] != "fuse.vocker"
                           or containers.get(store, live[2].removeprefix("vocker:")) is None):
        raise UsageError(f"not a vocker mount of this store: {path}")  # another store's is not ours to end
    if live is not None:
        name = record.container if record is not None else live[2].removeprefix("vocker:")
        with contextlib.suppress(OSError):  # stop the daemon's read-ahead, whose open files make the mount busy
            containers.unmount_flag(store, name).touch()
        result = _fusermount(mountpoint, lazy=False)
        deadline = time.monotonic() + BUSY_GRACE
        while _busy(result) and time.monotonic() < deadline:
            time.sleep(0.002)  # the read-ahead stops within one read
            result = _fusermount(mountpoint, lazy=False)
        if result.returncode != 0 and mountpoint in fuse_mounts():
            if not force:
                raise VockerError(f"{mountpoint} is busy (open files or a process working there); "
                                  "close them or use --force for a lazy unmount" if _busy(result)
                                  else f"cannot unmount {mountpoint}: {result.stderr.strip()}")
            _fusermount(mountpoint, lazy=True)
    if record is not None:
        if not _wait_exit(store, record, 2 if force else 10):
            if not force:
                raise VockerError(f"the mount daemon (pid {record.pid}) of {mountpoint} did not exit; "
                                  "use --force to kill it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            if not _wait_exit(store, record, 2) and live is not None and _abort_connection(live[0]):
                _wait_exit(store, record, 2)
    try:
        if record is not None:
            containers.forget_mount(store, mountpoint, record.pid)
        reap_orphans(store)
    except (OSError, DatabaseError) as exc:  # a full disk: say what is done and what is left
        raise VockerError(f"unmounted {mountpoint}, but cannot update the store ({exc}); 'vocker unmount' or "
                          "'vocker image rm' cleans up once it can") from None
    return record


def reap_orphans(store: Store) -> list[str]:
    """Remove throw-away containers no process holds (left by a killed mount command or daemon).

    Their mount records go too, and a mount of them still in the kernel is detached.
    """
    reaped = []
    for name in containers.orphans(store):
        for m in containers.mounts(store):
            if m.container == name:
                if fuse_mounts().get(m.mountpoint, ("", ""))[1] == "fuse.vocker":
                    _fusermount(m.mountpoint, lazy=True)
                containers.forget_mount(store, m.mountpoint, m.pid)
        if containers.reap(store, name):
            reaped.append(name)
    return reaped


@contextlib.contextmanager
def mounted(store: Store, ref: str, path: Path | None = None, *, read_only: bool = False,
            python: Path | None = None, allow_other: bool = False) -> Iterator[Path]:
    """Mount for the duration of a block (in a new temporary directory by default); always unmounts.

    The daemon also unmounts by itself if this process dies, even by kill -9.
    """
    made = path is None
    where = Path(tempfile.mkdtemp(prefix="vocker-")) if path is None else path
    record = mount(store, ref, where, read_only=read_only, owner_pid=os.getpid(), python=python,
                   allow_other=allow_other)
    try:
        yield Path(record.mountpoint)
    finally:
        try:
            unmount(store, record.mountpoint)
        except VockerError:
            unmount(store, record.mountpoint, force=True)  # still busy: lazy, as the block is over
        if made:
            with contextlib.suppress(OSError):
                where.rmdir()
