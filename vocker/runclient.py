"""The thin side of warm mounts: lease one from the per-user service, and `vocker run` through it.

Only the standard library (and vocker.home) is imported here, so `vocker run IMG -- CMD` on a
warm mount costs a Python start and a round trip to the service (vocker.runservice), not the
imports of the store, the CLI and FUSE. The service, started on demand, resolves the image,
keeps its mounts and empties a mount's writable layer when its lease ends: the lease is this
process's connection, so it ends however this process does (kill -9 included).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping

#: How long a warm mount is kept unused, in seconds (VOCKER_WARM_IDLE; 0 turns warm mounts off).
DEFAULT_IDLE = 300.0
START_TIMEOUT = 20.0


def idle_seconds() -> float:
    """VOCKER_WARM_IDLE, or the default; 0 (or anything unreadable as a number >= 0) is off."""
    try:
        return max(0.0, float(os.environ.get("VOCKER_WARM_IDLE", DEFAULT_IDLE)))
    except ValueError:
        return 0.0


def warm_root(store_root: Path) -> Path:
    """Where a store's warm mounts (and the service's log) live: per user and store, under
    $XDG_RUNTIME_DIR (emptied at logout), or the store's warm/ when there is none."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime, "vocker", "warm-" + _key(store_root))
    return store_root / "warm"


def _key(store_root: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(store_root))).hexdigest()[:16]


def service_address(store_root: Path) -> bytes:
    """The service's abstract Unix socket: no file to go stale, free again the moment its holder
    dies; only the same user may use it (the service checks SO_PEERCRED)."""
    return f"\0vocker-warm-{os.getuid()}-{_key(store_root)}".encode()


def connect(store_root: Path, *, start: bool) -> socket.socket | None:
    """A connection to the store's service, starting it if needed (``start``); None if none runs."""
    deadline = time.monotonic() + START_TIMEOUT
    started = False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(service_address(store_root))
            return sock
        except OSError:
            sock.close()
        if not start or time.monotonic() > deadline:
            return None
        if not started:
            _start_service(store_root)
            started = True
        time.sleep(0.01)


def _start_service(store_root: Path) -> None:
    root = warm_root(store_root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(root / "warm.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "vocker.runservice", str(store_root), str(idle_seconds())],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def request(sock: socket.socket, message: dict[str, object]) -> dict[str, object]:
    """One JSON line each way."""
    sock.sendall(json.dumps(message).encode() + b"\n")
    return read_line(sock, "the warm-mount service closed the connection")


def read_line(sock: socket.socket, closed: str) -> dict[str, object]:
    """One JSON line from ``sock`` (the protocol of the service and its clients)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(closed)
        data += chunk
    return json.loads(data)


@contextlib.contextmanager
def lease(store_root: Path, ref: str) -> Iterator[Path | None]:
    """A warm mount of ``ref`` (an image) for the block, or None when there is none to have (warm
    mounts off, a named container, the image's pool busy, the service failing): the caller then
    mounts as usual. Leaving the block empties the mount for the next user."""
    sock = connect(store_root, start=True) if idle_seconds() > 0 else None
    if sock is None:
        yield None
        return
    with sock:
        try:
            reply = request(sock, {"op": "lease", "ref": ref})
        except (OSError, ValueError):
            reply = {}
        yield Path(str(reply["mountpoint"])) if "mountpoint" in reply else None


# -- vocker run, the thin way ------------------------------------------------------------


def activated_env(root: Path, base: Mapping[str, str] | None = None, prompt: str | None = None) -> dict[str, str]:
    """What `source bin/activate` would set, for a child process."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(root)
    env["VIRTUAL_ENV_PROMPT"] = f"({prompt or root.name}) "
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    return env


def prompt_name(ref: str) -> str:
    """The environment's name in prompts and as its mount point's name: the image's name
    as the user gave it (``app`` for ``app:latest``), a container's name, or a short ID."""
    from .digest import short
    from .refs import id_prefix

    if id_prefix(ref) is not None:
        return short(ref if ref.startswith("sha256:") else f"sha256:{ref}")
    name = ref.removesuffix(":latest").rsplit("/", 1)[-1]
    return name if name not in ("", ".", "..") else "env"


def wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the command, passing the signals a terminal or a supervisor sends on to it;
    its exit code, 128+N when signal N ended it (as a shell tells it)."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {s: signal.signal(s, lambda sig, _frame: proc.send_signal(sig)) for s in forwarded}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code if code >= 0 else 128 - code


def thin_run(argv: list[str]) -> int | None:
    """``vocker run IMAGE [--] COMMAND...`` on a warm mount: the exit code, or None to leave the
    command to the full CLI (an option, warm mounts off, no warm mount to have, a bare
    python/pip the environment lacks, which the CLI refuses in one line)."""
    if len(argv) < 3 or argv[0] != "run" or argv[1].startswith("-") or argv[2].startswith("--with") \
            or idle_seconds() <= 0:
        return None
    command = argv[3:] if argv[2] == "--" else argv[2:]
    if not command:
        return None
    from .home import default_home

    return run_warm(default_home(), argv[1], command, prompt_name(argv[1]))


def run_warm(store_root: Path, ref: str, command: list[str], prompt: str) -> int | None:
    """Run ``command`` on a warm mount of image ``ref``: its exit code, or None when there is no
    warm mount to have (or a bare python/pip the environment lacks, which the CLI refuses)."""
    from .shells import GUARDED

    with lease(store_root, ref) as root:
        if root is None:
            return None
        env = activated_env(root, prompt=prompt)
        if command[0] in GUARDED and not os.access(root / "bin" / command[0], os.X_OK):
            return None
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as exc:  # as vocker.errors.CommandNotRunError tells it
            sys.stderr.write(f"vocker: error: cannot run {command[0]}: {exc.strerror}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        return wait_forwarding(proc)
