"""Commands on containers: mount, unmount, ps, create, rm, run, shell."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..digest import short
from ..errors import VockerError
from ..ui import out, table as make_table
from .common import open_store, allow_other_option, cli


@cli.command("mount")
@click.argument("ref", metavar="IMAGE|CONTAINER")
@click.argument("directory")
@click.option("--read-only", is_flag=True, help="No writable layer: writes fail with EROFS.")
@click.option("--audit", is_flag=True, help="Read-only, noexec,nosuid,nodev; raw contents, no scaffolding.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment (default: a matching one found on this machine).")
@allow_other_option
def mount_cmd(ref: str, directory: str, read_only: bool, audit: bool, python: Path | None,
              allow_other: bool) -> None:
    """Mount an image or a named container at DIRECTORY and return; a background process serves it.

    An image gets a throw-away writable layer, discarded at unmount; a named container
    (see 'vocker create') keeps its writable layer across mounts, and is mounted at one
    place at a time. A symlink as DIRECTORY mounts at its target; DIRECTORY may not be
    inside the store.

    What a mount of the image read in its first seconds is read ahead in the
    background by its next mounts, so their cold starts are nearly as fast as
    from a plain directory.
    """
    from ..mounting import mount

    record = mount(open_store(), ref, directory, read_only=read_only, audit=audit, python=python,
                   allow_other=allow_other)
    out.print(f"Mounted {ref} at {record.mountpoint} (container {record.container}, pid {record.pid})", markup=False)


@cli.command("unmount")
@click.argument("directory")  # a plain string: click.Path would stat() a hung mount and hang
@click.option("-f", "--force", is_flag=True,
              help="Also when busy (lazy) or when the daemon is dead or hung (killed; its FUSE connection "
                   "aborted as a last resort). Never looks into the mount.")
def unmount_cmd(directory: str, force: bool) -> None:
    """Unmount a container mounted with 'vocker mount' (DIRECTORY or a symlink to it)."""
    from ..mounting import unmount

    unmount(open_store(), directory, force=force)
    out.print(f"Unmounted {directory}", markup=False)


cli.add_command(unmount_cmd, "umount")


@cli.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Also list named containers that are not mounted, and warm mounts (kept for the next run).")
def ps_cmd(show_all: bool) -> None:
    """List mounted containers and whether their daemons are healthy.

    Also lists throw-away containers a killed mount left (orphaned: 'vocker unmount' or
    'vocker image rm' removes them).
    """
    from .. import containers
    from ..mounting import status

    store = open_store()
    names = {r.id: (r.tags[0] if r.tags else short(r.id)) for r in store.images()}
    table = make_table(header_style="bold")
    for col in ("CONTAINER", "IMAGE", "MOUNT POINT", "PID", "STATUS"):
        table.add_column(col, no_wrap=True)
    by_name = {c.name: c for c in containers.all_containers(store)}

    def image_of(name: str) -> str:
        c = by_name.get(name)
        return names.get(c.image_id, short(c.image_id)) if c else "?"

    mounted = set()
    for m in containers.mounts(store):  # the daemon records its mount before mounting
        mounted.add(m.container)
        state = status(m)
        if m.options.get("warm") and state == "healthy":  # kept for the next run: listed with -a
            if not show_all:
                continue
            state = "warm"
        table.add_row(m.container, image_of(m.container), m.mountpoint, str(m.pid), state)
    for name in containers.orphans(store):
        if name in by_name and name not in mounted:
            table.add_row(name, image_of(name), "-", "-", "orphaned")
    if show_all:
        for c in by_name.values():
            if c.name not in mounted and c.persistent:
                table.add_row(c.name, names.get(c.image_id, short(c.image_id)), "-", "-", "not mounted")
    out.print(table)


@cli.command("create")
@click.argument("image_ref", metavar="IMAGE")
@click.option("--name", required=True, help="Container name (letters, digits, '.', '_', '-'; at most 64).")
def create_cmd(image_ref: str, name: str) -> None:
    """Create a named container: an image plus a writable layer that persists across mounts."""
    from .. import containers

    c = containers.create(open_store(), image_ref, name)
    out.print(f"Created container {c.name} from {short(c.image_id)}", markup=False)


@cli.command("rm")
@click.argument("names", metavar="CONTAINER...", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Unmount first if mounted.")
def rm_cmd(names: tuple[str, ...], force: bool) -> None:
    """Remove containers and their writable layers."""
    from .. import containers
    from ..mounting import status, unmount

    store = open_store()
    for name in names:
        if containers.get(store, name) is None:
            raise VockerError(f"no such container: {name}")
        for m in containers.mounts(store):
            if m.container == name:
                if not force and status(m) != "stale":
                    raise VockerError(f"container {name} is mounted at {m.mountpoint}; unmount it or use --force")
                unmount(store, m.mountpoint, force=True)
        try:
            lock = containers.claim(store, name)
        except FileNotFoundError:
            lock = -1  # its directory is gone already
        if lock is None:
            raise VockerError(f"container {name} is in use (being mounted or served); try again or unmount it")
        try:
            containers.remove(store, name)
        finally:
            if lock >= 0:
                os.close(lock)
        out.print(f"Removed container {name}", markup=False)


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("ref", metavar="IMAGE|CONTAINER")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--read-only", is_flag=True, help="Mount without a writable layer.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment.")
@allow_other_option
def run_cmd(ref: str, command: tuple[str, ...], read_only: bool, python: Path | None, allow_other: bool) -> None:
    """Run COMMAND with the environment mounted and active (use -- before COMMAND).

    Mounts in a temporary directory, sets PATH and VIRTUAL_ENV, passes the exit code and
    signals through and unmounts. Changes are discarded unless REF is a named container.
    Exits 127 if COMMAND is not found, 126 if it cannot be executed (as a shell does).

    'vocker run IMAGE -- COMMAND' keeps the image's mount warm for the next run instead
    (VOCKER_WARM_IDLE seconds, default 300; 0 turns it off), its changes discarded.
    """
    from ..running import run_in

    sys.exit(run_in(open_store(), ref, list(command), read_only=read_only, python=python, allow_other=allow_other))


@cli.command("shell")
@click.argument("ref", metavar="IMAGE|CONTAINER")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment.")
@allow_other_option
def shell_cmd(ref: str, python: Path | None, allow_other: bool) -> None:
    """Open an interactive shell ($SHELL) with the environment mounted and active."""
    from ..running import run_in

    shell = os.environ.get("SHELL") or "/bin/sh"
    sys.exit(run_in(open_store(), ref, [shell], python=python, allow_other=allow_other))
