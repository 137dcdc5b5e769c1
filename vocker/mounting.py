"""Mount, unmount and check containers (the process side of the mount layer).

``mount`` starts a daemon (vocker.daemon) and returns once the kernel mount is in
place; ``unmount`` asks the kernel to unmount, which ends the daemon. A daemon
that died or hangs is handled with ``force``: kill it, lazy-unmount, and as a last
resort abort the FUSE connection — never a reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from . import containers
from .containers import MountRecord
from .errors import UsageError, VockerError
from .pythons import find_interpreter
from .store import Store

READY_TIMEOUT = 60.0
#: How long unmount retries a busy mount (the daemon's read-ahead closes its files within one read).
BUSY_GRACE = 0.5

#: Daemons this (multi-threaded) process started as children, kept so they can be reaped.
_spawned: list[subprocess.Popen] = []


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def fuse_mounts() -> dict[str, tuple[str, str]]:
    """mount point -> (major:minor, fs type) for FUSE mounts, read without touching the mounts."""
    out = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if rfields and rfields[0].startswith("fuse"):
                    out[_unescape(fields[4])] = (fields[2], rfields[0])
    except FileNotFoundError:
        pass
    return out


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


def _check_mountpoint(path: Path) -> str:
    path = path.absolute()
    if str(path) in fuse_mounts():
        raise UsageError(f"{path} is already a mount point")
    if path.exists() and not path.is_dir():
        raise UsageError(f"mount point is not a directory: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create mount point {path}: {exc.strerror or exc}") from None
    if any(path.iterdir()):
        raise UsageError(f"mount point is not empty: {path}")
    return os.path.realpath(path)


def mount(store: Store, ref: str, path: Path, *, read_only: bool = False, audit: bool = False,
          owner_pid: int | None = None, python: Path | None = None) -> MountRecord:
    """Mount a container (by name) or a fresh throw-away container of an image (by ref)."""
    if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        raise VockerError("FUSE is not available: install fuse3 (apt-get install fuse3) and make sure /dev/fuse exists")
    mountpoint = _check_mountpoint(path)
    container = containers.get(store, ref)
    if container is not None:
        for m in containers.mounts(store):
            if m.container == container.name and status(m) != "stale":
                raise UsageError(f"container {container.name} is already mounted at {m.mountpoint}")
    image_id = container.image_id if container is not None else store.resolve(ref)
    manifest = store.manifest(image_id)
    interpreter = None
    if manifest.kind == "venv" and not audit:
        assert manifest.python is not None
        interpreter = find_interpreter(manifest.python, store.image(image_id).provenance.get("base_interpreter"), python)
    if container is None:
        container = containers.create(store, image_id, None)
    read_only = read_only or audit
    log_path = containers.container_dir(store, container.name) / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    config = {"store": str(store.root), "container": container.name, "image_id": image_id,
              "mountpoint": mountpoint, "read_only": read_only, "audit": audit, "interpreter": interpreter,
              "owner_pid": owner_pid, "ready_fd": w}
    try:
        _start_daemon(store, config, log_path, r, w)
        message = _wait_ready(r)
    finally:
        os.close(r)
    if not message.startswith("ok "):
        if not container.persistent:
            containers.remove(store, container.name, durable=False)
        raise VockerError(f"mount failed: {message.removeprefix('error: ')} (log: {log_path})")
    pid = int(message.split()[1])
    options = {"read_only": read_only, "audit": audit}
    containers.record_mount(store, mountpoint, container.name, pid, options)
    return MountRecord(mountpoint, container.name, pid, time.time(), options)


def _start_daemon(store: Store, config: dict[str, object], log_path: Path, r: int, w: int) -> None:
    """Start the serving process, which reports "ok PID" or "error: ..." on the pipe.

    A single-threaded caller (the CLI) double-forks, so the daemon starts with every
    module already imported (a mount takes tens of milliseconds, not a Python start-up)
    and is re-parented to init. Forking a multi-threaded process is unsafe, so there
    the daemon is a fresh interpreter instead.
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
        proc = subprocess.Popen([sys.executable, "-m", "vocker.daemon", json.dumps(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, pass_fds=(w,), start_new_session=True)
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
        return "the mount daemon exited or did not become ready in time"
    return text


def _fusermount(mountpoint: str, lazy: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint],
                          capture_output=True, text=True)


def _busy(result: subprocess.CompletedProcess[str]) -> bool:
    """fusermount3 tells EBUSY only in its message."""
    return result.returncode != 0 and "busy" in result.stderr.lower()


def _abort_connection(mountpoint: str) -> None:
    dev = fuse_mounts().get(mountpoint, ("", ""))[0]
    minor = dev.split(":")[-1]
    if minor:
        with contextlib.suppress(OSError):
            Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")


def _locate(store: Store, path: str) -> str:
    """The recorded spelling of a mount point, without stat()ing the mount (it may hang)."""
    given = os.path.abspath(path)
    known = set(fuse_mounts()) | {m.mountpoint for m in containers.mounts(store)}
    if given in known:
        return given
    resolved = os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given))
    return resolved


def unmount(store: Store, path: Path | str, *, force: bool = False) -> MountRecord | None:
    mountpoint = _locate(store, str(path))
    record = containers.mount_of(store, mountpoint)
    mounted = mountpoint in fuse_mounts()
    if record is None and not mounted:
        raise UsageError(f"not a vocker mount: {path}")
    if record is None and not fuse_mounts()[mountpoint][1].endswith("vocker"):
        raise UsageError(f"not a vocker mount: {path}")
    if mounted:
        if force and record is not None and pid_alive(record.pid) and not responsive(mountpoint, 1.0):
            _abort_connection(mountpoint)  # hung daemon: fail every pending request
        if record is not None:
            with contextlib.suppress(OSError):  # stop the daemon's read-ahead, whose open files make the mount busy
                containers.unmount_flag(store, record.container).touch()
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
        deadline = time.monotonic() + (2 if force else 10)
        while pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        if pid_alive(record.pid) and force:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        containers.forget_mount(store, mountpoint)
        container = containers.get(store, record.container)
        if container is not None and not container.persistent:
            containers.remove(store, container.name, durable=False)
    return record


@contextlib.contextmanager
def mounted(store: Store, ref: str, path: Path | None = None, *, read_only: bool = False,
            python: Path | None = None) -> Iterator[Path]:
    """Mount for the duration of a block (in a new temporary directory by default); always unmounts.

    The daemon also unmounts by itself if this process dies, even by kill -9.
    """
    made = path is None
    where = Path(tempfile.mkdtemp(prefix="vocker-")) if path is None else path
    record = mount(store, ref, where, read_only=read_only, owner_pid=os.getpid(), python=python)
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
