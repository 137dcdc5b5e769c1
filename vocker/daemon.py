"""The background process that serves one mount (started by vocker.mounting).

Run as ``python -m vocker.daemon CONFIG_JSON``. It reports readiness (or the error
that stopped it) on the file descriptor given in the config, then serves until the
mount is unmounted; with ``owner_pid`` it unmounts itself once that process is gone,
so a test or ``vocker run`` killed with -9 does not leave its mount behind.

It holds its container's lock (``lock_fd``, inherited from ``vocker mount``) until it
exits, and records its mount before mounting: whoever kills what, a live mount is
listed by ``vocker ps`` and a container nobody holds is an orphan to remove.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import readahead

if TYPE_CHECKING:
    from .store import Store
    from .view import ContainerView


def _watch_owner(owner: int, mountpoint: str) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
            return
        except PermissionError:
            continue


def _read_ahead_then_record(store: Store, view: ContainerView, image_id: str, mountpoint: str, flag: Path) -> None:
    """Read the image's profile ahead through the mount, then note what else is read at start-up."""
    log = logging.getLogger("vocker.daemon")
    recorder = view.recorder
    assert recorder is not None
    files, size, seconds = readahead.read_ahead(mountpoint, recorder.profile.plan(), flag.exists)
    if files:
        log.info("read ahead %d files (%d bytes) in %.3f s", files, size, seconds)
    time.sleep(max(0.0, readahead.RECORD_SECONDS - seconds))
    _save_profile(store, view, image_id)


def _save_profile(store: Store, view: ContainerView, image_id: str) -> None:
    recorder, view.recorder = view.recorder, None
    if recorder is not None and recorder.changed:
        try:
            readahead.save(store, image_id, recorder.profile)
        except Exception as exc:  # a cache: a mount must not fail for it
            logging.getLogger("vocker.daemon").warning("cannot save the read-ahead profile: %s", exc)


def main(config: dict[str, Any]) -> int:
    # force: a daemon forked from an application that configured logging must still log to its file
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vocker-daemon[%(process)d] %(levelname)s %(message)s",
                        stream=os.fdopen(os.dup(2), "w", buffering=1), force=True)  # fd 2 is the log file
    os.umask(0)  # the kernel already applied the caller's umask to the modes it sends
    log = logging.getLogger("vocker.daemon")
    ready_fd = config["ready_fd"]

    def report(message: str) -> None:
        try:
            os.write(ready_fd, message.encode() + b"\n")
            os.close(ready_fd)
        except OSError:
            pass

    from . import containers
    from .store import Store

    if config.get("lock_fd") is not None:  # held until exit; no program this process starts keeps it
        os.set_inheritable(config["lock_fd"], False)
    store = Store.open(Path(config["store"]), prefetch=True)
    name = config["container"]
    mountpoint = config["mountpoint"]
    view: ContainerView | None = None
    recorded = False
    try:
        if os.environ.get("VOCKER_FUSE") == "lowlevel":  # the low-level driver (fs_backends/fuse_lowlevel.py)
            from fs_backends.fuse_lowlevel import serve
        else:
            from fs_backends.fuse_linux import serve
        from .view import ContainerView

        upper = None if config["read_only"] else containers.upper_dir(store, name)
        view = ContainerView(store, config["image_id"], config["mountpoint"], upper,
                             interpreter=config["interpreter"], audit=config["audit"])
        flag = containers.unmount_flag(store, name)
        flag.unlink(missing_ok=True)  # left by an unmount that did not finish
        if not config["audit"]:  # an audit mount shows other files (no bytecode, raw templates)
            view.recorder = readahead.Recorder(readahead.load(store, config["image_id"]))
        # The control socket: a warm mount's service asks for a reset between uses, 'vocker
        # remount' for another image (vocker.swap).
        from . import swap, warm

        control: bytes | None = config["warm_control"].encode("latin-1") if config.get("warm_control") \
            else swap.control_address(store, name)
        try:
            warm.serve_control(control, view, swap.Remounter(store, view, name, config["image_id"]))  # type: ignore[arg-type]
        except OSError as exc:
            if config.get("warm_control"):
                raise
            log.warning("no control socket (remount unavailable): %s", exc)
            control = None
        if config.get("owner_pid"):
            threading.Thread(target=_watch_owner, args=(config["owner_pid"], config["mountpoint"]),
                             daemon=True).start()
        containers.record_mount(store, mountpoint, name, os.getpid(),
                                {"read_only": config["read_only"], "audit": config["audit"],
                                 "allow_other": config.get("allow_other", False), "control": control.decode("latin-1") if control else None,
                                 **({"warm": True} if config.get("warm_control") else {})})
        recorded = True
        log.info("serving container %s (image %s) at %s (driver %s)", name, config["image_id"], mountpoint,
                 serve.__module__)
        # The read-ahead goes through the mount, so its reads are served like any request. A
        # warm-up looping in here instead held the GIL while the first requests, the ones a
        # waiting user sees, queued behind it (3-4x slower `python -c pass`).

        def ready() -> None:
            report(f"ok {os.getpid()}")
            if view.recorder is not None:
                threading.Thread(target=_read_ahead_then_record, daemon=True,
                                 args=(store, view, config["image_id"], config["mountpoint"], flag)).start()

        serve(view, config["mountpoint"], name=name, read_only=config["read_only"], audit=config["audit"],
              allow_other=config.get("allow_other", False), on_ready=ready)
        _save_profile(store, view, config["image_id"])
    except BaseException as exc:  # reported to the waiting parent as one line
        log.exception("mount failed")
        report(f"error: {exc}")
        return 1
    finally:
        if view is not None:
            view.close()  # ends its compiler process
        log.info("unmounted %s", mountpoint)
        try:  # the throw-away container first: its files may be what filled the disk
            container = containers.get(store, name)
            if container is not None and not container.persistent:  # ours: we hold its lock
                containers.remove(store, name, durable=False)
            if recorded:
                containers.forget_mount(store, mountpoint, os.getpid())
        except Exception as exc:  # a later unmount or image rm removes what is left (mounting.reap_orphans)
            log.warning("cannot clean up after the mount: %s", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
