"""The per-user service that owns a store's warm mounts (started on demand by vocker.runclient).

Run as ``python -m vocker.runservice STORE_ROOT IDLE_SECONDS``. It listens on an abstract Unix
socket (vocker.runclient.service_address: one service per user and store, and a second one
started at the same time finds the name taken and exits). A client asks for a lease of an
image and gets the mount point of one of its warm mounts, made on first need (at most
POOL_SIZE per image: runs at the same time each get their own); the lease lasts as long as the
client's connection. When it ends, the mount's daemon empties its writable layer (vocker.warm)
and the mount waits for the next lease; one unused for IDLE_SECONDS is unmounted, and the
service exits once it has no mount left.

Its mount daemons unmount themselves when it dies (they have it as owner), so a kill -9 leaves
at most records that ``vocker ps`` shows stale and ``vocker unmount --force`` clears. It is
single-threaded, so a mount forks its daemon with everything imported (tens of milliseconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

import attrs

from . import containers, warm
from .errors import VockerError
from .mounting import fuse_mounts, mount, pid_alive, unmount
from .runclient import read_line, service_address, warm_root
from .store import Store

#: Warm mounts per image: runs of one image at the same time use separate mounts.
POOL_SIZE = 4
log = logging.getLogger("vocker.runservice")


@attrs.define(eq=False)
class Warm:
    image_id: str
    mountpoint: str
    pid: int
    control: bytes
    lease: socket.socket | None = None
    since: float = attrs.field(factory=time.monotonic)  # unused since


@attrs.define(eq=False)
class Service:
    store: Store
    idle: float
    listener: socket.socket
    selector: selectors.BaseSelector = attrs.field(factory=selectors.DefaultSelector)
    pool: list[Warm] = attrs.field(factory=list)

    def serve(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            expiries = [w.since + self.idle - now for w in self.pool if w.lease is None]
            events = self.selector.select(max(0.0, min(expiries, default=self.idle)))
            # ends of leases first: a client that connects as another leaves may get its mount
            for key, _ in sorted(events, key=lambda e: e[0].fileobj is self.listener):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._end_lease(key.data)
            now = time.monotonic()
            for w in [w for w in self.pool if w.lease is None and now - w.since >= self.idle]:
                self._retire(w)
            if not self.pool and len(self.selector.get_map()) == 1:
                return  # nothing kept, nobody connected: the next client starts a service again

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            if not warm.same_user(conn):
                conn.close()
                return
            conn.settimeout(5)
            message = read_line(conn, "closed")
            reply = self._lease(conn, str(message["ref"])) if message.get("op") == "lease" else \
                {"released": self.release(set(message["images"]) if message.get("images") else None)}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError, KeyError) as exc:
            log.warning("bad request: %s", exc)
            conn.close()
            return
        if "mountpoint" not in reply:
            conn.close()

    def _lease(self, conn: socket.socket, ref: str) -> dict[str, object]:
        try:
            if containers.get(self.store, ref) is not None:
                return {"fallback": "a named container"}
            image_id = self.store.resolve(ref)
        except VockerError as exc:
            return {"fallback": str(exc)}
        for w in sorted(self.pool, key=lambda w: -w.since):
            if w.image_id == image_id and w.lease is None:
                if pid_alive(w.pid) and w.mountpoint in fuse_mounts():
                    break
                self._retire(w)  # unmounted or killed under us
        else:
            try:
                w = self._new(image_id)
            except VockerError as exc:
                log.warning("cannot make a warm mount of %s: %s", ref, exc)
                return {"fallback": str(exc)}
            if w is None:
                return {"fallback": "every warm mount of the image is in use"}
            self.pool.append(w)
        w.lease = conn
        self.selector.register(conn, selectors.EVENT_READ, w)
        return {"mountpoint": w.mountpoint, "image_id": image_id}

    def _new(self, image_id: str) -> Warm | None:
        taken = {w.mountpoint for w in self.pool}
        if sum(w.image_id == image_id for w in self.pool) >= POOL_SIZE:
            return None
        root = warm_root(self.store.root)
        for n in range(2 * POOL_SIZE):
            mountpoint = os.path.realpath(root / f"{image_id.removeprefix('sha256:')[:12]}-{n}")
            if mountpoint in taken:
                continue
            if mountpoint in fuse_mounts():  # left by a killed service or daemon
                with contextlib.suppress(VockerError):
                    unmount(self.store, mountpoint, force=True)
                if mountpoint in fuse_mounts():
                    continue
            control = f"\0vocker-warm-{os.getuid()}-{os.getpid()}-{image_id[7:19]}-{n}".encode()
            keep = [self.listener.fileno(), self.selector.fileno(),  # type: ignore[attr-defined]
                    *(w.lease.fileno() for w in self.pool if w.lease is not None)]
            record = mount(self.store, image_id, mountpoint, owner_pid=os.getpid(), warm_control=control,
                           close_fds=tuple(keep))
            log.info("warm mount of %s at %s (pid %d)", image_id, mountpoint, record.pid)
            return Warm(image_id, record.mountpoint, record.pid, control)
        return None

    def _end_lease(self, w: Warm) -> None:
        assert w.lease is not None
        self.selector.unregister(w.lease)
        w.lease.close()
        w.lease = None
        w.since = time.monotonic()
        answer = warm.control(w.control, "reset")
        if answer != "ok":
            log.warning("warm mount %s not reset (%s): retired", w.mountpoint, answer or "its daemon is gone")
            self._retire(w)

    def _retire(self, w: Warm) -> None:
        """Unmount (lazily if something still works there) and forget a warm mount."""
        if w in self.pool:
            self.pool.remove(w)
        if w.lease is not None:
            self.selector.unregister(w.lease)
            w.lease.close()
        try:
            unmount(self.store, w.mountpoint)
        except VockerError:
            with contextlib.suppress(VockerError):
                unmount(self.store, w.mountpoint, force=True)
        with contextlib.suppress(OSError):
            os.rmdir(w.mountpoint)

    def release(self, image_ids: set[str] | None) -> int:
        idle = [w for w in self.pool if w.lease is None and (image_ids is None or w.image_id in image_ids)]
        for w in idle:
            self._retire(w)
        return len(idle)

    def close(self) -> None:
        for w in list(self.pool):
            self._retire(w)
        self.listener.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vocker-warm[%(process)d] %(levelname)s %(message)s")
    root, idle = Path(argv[0]), float(argv[1])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(service_address(root))
    except OSError:  # another service of this store runs: the client reaches that one
        return 0
    listener.listen(64)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    service = Service(Store.open(root), idle, listener)
    log.info("serving warm mounts of %s (idle time %.0f s)", root, idle)
    try:
        service.serve()
    finally:
        service.close()
        log.info("exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
