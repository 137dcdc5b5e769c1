"""Warm mounts: a throw-away container's mount kept between uses, pristine for each.

A fresh mount is a fresh set of inodes: the kernel's page cache of the last run is gone and
every byte goes through Python again. A warm mount stays (vocker.runservice owns it); between
two uses its daemon empties the writable layer and drops the kernel's cached names,
attributes and pages of exactly what that layer had changed, so the next run sees the image
as it is while the image's own pages stay cached.

The daemon side (:func:`serve_control`, :func:`reset`) answers on an abstract Unix socket
(only its own user may connect); :func:`release` is what gc, image rm and system prune call
first, so that no warm mount keeps an image or a store busy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store
    from .swap import Remounter
    from .view import ContainerView

#: How long a reset waits for the files the last run left open in the writable layer to close
#: (the kernel releases them after the process exits); past it the mount is retired instead.
RESET_WAIT = 2.0
log = logging.getLogger("vocker.warm")


def reset(view: ContainerView) -> bool:
    """Empty the view's writable layer and drop what the kernel cached of it; False (nothing
    changed) while a file of that layer stays open."""
    deadline = time.monotonic() + RESET_WAIT
    while (changes := view.discard_changes()) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    for parts, entry in changes:  # outside the view's lock: resolving a parent may ask the mount
        if view.invalidate is not None:
            view.invalidate(parts)
        if entry and view.invalidate_entry is not None:
            view.invalidate_entry(parts)
    if len(changes) > 1:
        log.info("reset: dropped %d changed paths", len(changes) - 1)
    return True


def same_user(conn: socket.socket) -> bool:
    """Whether the peer of a Unix socket runs as this process's user (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1] == os.getuid()


def serve_control(address: bytes, view: ContainerView, remount: Remounter | None = None) -> None:
    """Answer on ``address`` (a daemon thread): ``reset`` with ``ok``, or ``busy`` when it could not
    (a reset also puts a remounted warm mount back on its image); ``remount IMAGE_ID`` with what
    ``remount`` answers (vocker.swap), or ``error: ...``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(4)

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                request = b""
                try:
                    if not same_user(conn):
                        continue
                    conn.settimeout(10)
                    request = conn.recv(256).strip()
                    if request == b"reset":
                        done = reset(view)
                        if done and remount is not None:
                            remount.restore()
                        conn.sendall(b"ok\n" if done else b"busy\n")
                    elif request.startswith(b"remount ") and remount is not None:
                        conn.sendall(remount(request[len(b"remount "):].decode()).encode() + b"\n")
                    else:
                        conn.sendall(b"error: unknown request\n")
                except Exception as exc:  # the service retires a mount whose reset failed
                    log.warning("%s failed: %s", request[:8].decode(errors="replace") or "request", exc)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"error: {exc}\n".encode())

    threading.Thread(target=loop, daemon=True, name="warm-control").start()


def control(address: bytes, command: str, timeout: float = 10.0) -> str:
    """Send a command to a warm mount's daemon: its one-line answer ("" when it is gone)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(command.encode() + b"\n")
            return sock.recv(4096).decode(errors="replace").strip()
    except OSError:
        return ""


def release(store: Store, image_ids: set[str] | None = None) -> int:
    """Unmount the unused warm mounts (of ``image_ids``, or all): the service's, and those a killed
    service left stale. What is in use stays, as any mount does. How many went."""
    from . import containers
    from .mounting import status, unmount
    from .runclient import connect, request

    released = 0
    sock = connect(store.root, start=False)
    if sock is not None:
        with sock:
            with contextlib.suppress(OSError, ValueError):
                released += int(request(sock, {"op": "release", "images": sorted(image_ids) if image_ids else None})
                                .get("released", 0))  # type: ignore[call-overload]
    for m in containers.mounts(store):
        container = containers.get(store, m.container)
        if (m.options.get("warm") and (image_ids is None or (container is not None and container.image_id in image_ids))
                and status(m) == "stale"):
            with contextlib.suppress(Exception):
                unmount(store, m.mountpoint, force=True)
                released += 1
    return released
