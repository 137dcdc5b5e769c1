"""The background process that serves one mount (started by vocker.mounting).

Run as ``python -m vocker.daemon CONFIG_JSON``. It reports readiness (or the error
that stopped it) on the file descriptor given in the config, then serves until the
mount is unmounted; with ``owner_pid`` it unmounts itself once that process is gone,
so a test or ``vocker run`` killed with -9 does not leave its mount behind.
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
from typing import Any


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

    store = Store.open(Path(config["store"]), prefetch=True)
    name = config["container"]
    try:
        from fs_backends.fuse_linux import serve
        from .view import ContainerView

        upper = None if config["read_only"] else containers.upper_dir(store, name)
        view = ContainerView(store, config["image_id"], config["mountpoint"], upper,
                             interpreter=config["interpreter"], audit=config["audit"])
        if config.get("owner_pid"):
            threading.Thread(target=_watch_owner, args=(config["owner_pid"], config["mountpoint"]),
                             daemon=True).start()
        log.info("serving container %s (image %s) at %s", name, config["image_id"], config["mountpoint"])
        # No background cache warm-up: it would hold the GIL while the first requests, the
        # ones a waiting user sees, queue behind it (3-4x slower `python -c pass`).
        serve(view, config["mountpoint"], name=name, read_only=config["read_only"], audit=config["audit"],
              on_ready=lambda: report(f"ok {os.getpid()}"))
    except BaseException as exc:  # reported to the waiting parent as one line
        log.exception("mount failed")
        report(f"error: {exc}")
        return 1
    finally:
        log.info("unmounted %s", config["mountpoint"])
        record = containers.mount_of(store, config["mountpoint"])
        if record is not None and record.pid == os.getpid():
            containers.forget_mount(store, config["mountpoint"])
        container = containers.get(store, name)
        if container is not None and not container.persistent and record is not None and record.pid == os.getpid():
            containers.remove(store, name, durable=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
