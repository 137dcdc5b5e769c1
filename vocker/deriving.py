"""Derive an image in one command: install (or uninstall) packages into an image and commit.

The installer (uv, or pip where uv cannot run: vocker.build.installer) runs against the
environment's own interpreter, through a mount of a throw-away container of the image, so it
sees exactly the image's packages and writes only into the writable layer; vocker.layering's
commit then stores that change as one canonical layer. ``build --from`` and ``run --with`` lock
the addition first and look the result up by (base image ID + pinned set + interpreter), the
plain build's key with the base added, so the second time installs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import attrs

from . import cbor, containers, locks
from .build import (BuildRequest, BuildResult, IndexOptions, Progress, _run, _run_uv, gate, installer, lock_for,
                    lookup, options, pip_config, record_build)
from .digest import digest_bytes
from .errors import UsageError
from .layering import Derived, NothingToCommit, commit
from .mounting import mount, unmount
from .progress import Reporter
from .pythons import find_interpreter
from .store import Store


@contextlib.contextmanager
def _mounted_for_change(store: Store, ref: str) -> Iterator[tuple[str, str]]:
    """(container, mount point) to change: a container's own mount (mounted here if it is not),
    or a throw-away container of an image, removed at the end."""
    container = containers.get(store, ref)
    if container is not None:
        live = next((m for m in containers.mounts(store) if m.container == container.name), None)
        if live is not None:
            if live.options.get("read_only"):
                raise UsageError(f"container {container.name} is mounted read-only at {live.mountpoint}")
            yield container.name, live.mountpoint
            return
    else:
        store.resolve(ref)  # no such image: the one error line, before anything is made
    parent = Path(tempfile.mkdtemp(prefix="vocker-derive-"))
    record = None
    try:
        record = mount(store, ref, parent / "env", owner_pid=os.getpid())
        yield record.container, record.mountpoint
    finally:
        if record is not None:
            try:
                unmount(store, record.mountpoint)
            except Exception:
                unmount(store, record.mountpoint, force=True)
        with contextlib.suppress(OSError):
            (parent / "env").rmdir()
            parent.rmdir()


def run_installer(mountpoint: str, args: list[str], *, uninstall: bool = False,
                  index: IndexOptions = IndexOptions()) -> None:
    """``uv pip install|uninstall`` (or pip's) against the environment mounted at ``mountpoint``."""
    python = str(Path(mountpoint, "bin", "python"))
    what = f"cannot {'uninstall' if uninstall else 'install'} {' '.join(args)}"
    if installer() == "uv":  # copies: the mount is another file system than uv's cache
        _run_uv(["pip", "uninstall" if uninstall else "install", "--quiet", "--python", python, *args,
                 *([] if uninstall else ["--link-mode", "copy", *index.uv_args()])], what)
        return
    action = ["uninstall", "--yes"] if uninstall else ["install", *index.uv_args()]
    _run([sys.executable, "-m", "pip", "--python", python, *action, "--quiet", "--disable-pip-version-check",
          *args], what)


def change(store: Store, ref: str, args: list[str], tag: str | None, *, uninstall: bool = False,
           index: IndexOptions = IndexOptions(), message: str | None = None,
           reporter: Reporter | None = None, created_by: str | None = None) -> Derived:
    """Install (or uninstall) ``args`` in IMAGE|CONTAINER ``ref`` and commit the change as one
    layer on its image. A container keeps the change in its writable layer too."""
    if not args:
        raise UsageError(f"nothing to {'uninstall' if uninstall else 'install'}: give at least one SPEC")
    verb = "uninstall" if uninstall else "install"
    with _mounted_for_change(store, ref) as (name, where):
        manifest = store.manifest(containers.get(store, name).image_id)  # type: ignore[union-attr]
        if manifest.python is None:
            raise UsageError(f"{ref} is not a venv image: there is no interpreter to {verb} with")
        run_installer(where, args, uninstall=uninstall, index=index)
        try:
            return commit(store, name, tag, message if message is not None else f"{verb} {' '.join(args)}",
                          reporter=reporter, created_by=created_by or verb)
        except NothingToCommit:
            raise NothingToCommit(f"nothing to commit: {verb}ing {' '.join(args)} changes no file of {ref}") from None


def base_interpreter(store: Store, image_id: str) -> dict[str, str]:
    """The host interpreter a venv image runs with (its own, as a mount finds it)."""
    manifest = store.manifest(image_id)
    if manifest.python is None:
        raise UsageError(f"image {image_id[7:19]} is not a venv image: nothing to install into")
    return find_interpreter(manifest.python, store.image(image_id).provenance.get("base_interpreter"))


def build_from(store: Store, base_ref: str, req: BuildRequest, *, tag: str | None = None, lock_only: bool = False,
               test: Callable[[str], int] | None = None, reporter: Reporter | None = None,
               on_step: Callable[[str], None] = lambda _msg: None, progress: Progress | None = None) -> BuildResult:
    """A layer installing the locked addition on top of an image, cached by (base image ID +
    pinned set + interpreter + options): the same addition on the same base installs nothing.
    ``test`` gates it as it gates a plain build (vocker.build.gate)."""
    started = time.perf_counter()
    if req.python is not None:
        raise UsageError("--python and --from do not go together: the base image's interpreter is used")
    base_id = store.resolve(base_ref)
    python = base_interpreter(store, base_id)
    lock_text, lock_path, resolved = lock_for(req, python, on_step, progress)
    lock = locks.parse(lock_text, str(lock_path or "lock"))
    key = locks.cache_key(lock, python, {**options(), "from": base_id})
    if lock_only:
        return BuildResult(None, False, lock_path, lock_text, key, resolved, time.perf_counter() - started)
    image_id = lookup(store, key)
    cached, new = image_id is not None, False
    if image_id is None:
        on_step(f"installing {len(lock.pins)} locked distributions on {base_ref} with {installer()}")
        with tempfile.TemporaryDirectory(prefix="vocker-from-") as tmp:
            lock_file = Path(tmp, "requirements.lock")
            lock_file.write_text(lock_text, encoding="utf-8")
            try:
                made = change(store, base_id, ["--require-hashes", "-r", str(lock_file)], None, index=req.index,
                              message=f"build --from: {lock.header.get('input') or len(lock.pins)}",
                              reporter=reporter, created_by="build")
                image_id, new = made.image_id, made.new
            except NothingToCommit:  # the base has the addition already: it is the result
                image_id = base_id
    gate(store, image_id, new, test)
    info = {"python": {k: python[k] for k in ("implementation", "version", "soabi", "platform")},
            "options": options(), "from": base_id, "input": lock.header.get("input", str(lock_path or "")),
            "pins": len(lock.pins), "index": attrs.asdict(req.index)}
    record_build(store, key, image_id, lock_text, info, tag, cached=cached)
    return BuildResult(image_id, cached, lock_path, lock_text, key, resolved, time.perf_counter() - started)


def with_layer(store: Store, ref: str, specs: tuple[str, ...] | list[str], index: IndexOptions = IndexOptions(),
               on_step: Callable[[str], None] = lambda _msg: None) -> BuildResult:
    """``run --with``: the image ``ref`` plus a cached layer installing ``specs`` (untagged).

    As ``uv run --with`` reuses the environment it made for the same requirements, the layer
    made for the same SPECs on the same image (and interpreter, options, indexes) is reused
    without resolving again; ``vocker build --from`` re-locks."""
    started = time.perf_counter()
    base_id = store.resolve(ref)
    python = base_interpreter(store, base_id)
    facts = {k: python[k] for k in ("implementation", "version", "soabi", "platform")}
    explicit = index.index_url or index.extra_index_urls or index.find_links or index.no_index
    where = attrs.asdict(index if explicit else attrs.evolve(pip_config(), offline=index.offline))
    key = digest_bytes(cbor.dumps({"with": sorted(specs), "from": base_id, "python": facts, "options": options(),
                                   "index": json.dumps(where, sort_keys=True)}))
    image_id = lookup(store, key)
    if image_id is not None:
        return BuildResult(image_id, True, None, "", key, False, time.perf_counter() - started)
    result = build_from(store, base_id, BuildRequest(specs=tuple(specs), index=index), on_step=on_step)
    assert result.image_id is not None
    record_build(store, key, result.image_id, result.lock_text,
                 {"python": facts, "options": options(), "from": base_id, "with": sorted(specs)}, None)
    return result
