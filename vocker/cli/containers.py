"""Commands on containers: mount, unmount, ps, create, rm, run, shell."""

from __future__ import annotations

import copy
import os
import sys
from typing import Any
from pathlib import Path

import click

from ..digest import short
from ..errors import VockerError
from ..ui import human_size, out
from .common import RUN_FAILED, allow_other_option, cli, container, open_store, own_failures_exit
from .completion import complete_containers, complete_images, complete_refs
from .output import Column, format_option, listing, no_trunc_option, print_lines


@cli.command("mount")
@click.argument("ref", metavar="IMAGE|CONTAINER", shell_complete=complete_refs)
@click.argument("directory")
@click.option("--read-only", is_flag=True, help="No writable layer: writes fail with EROFS.")
@click.option("--audit", is_flag=True, help="Read-only, noexec,nosuid,nodev; raw contents, no scaffolding.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment (default: a matching one found on this machine).")
@allow_other_option
@click.option("--insecure", is_flag=True, help="A remote REF: speak plain HTTP (always so for localhost).")
def mount_cmd(ref: str, directory: str, read_only: bool, audit: bool, python: Path | None,
              allow_other: bool, insecure: bool) -> None:
    """Mount an image or a named container at DIRECTORY and return; a background process serves it.

    An image gets a throw-away writable layer, discarded at unmount; a named container
    (see 'vocker create') keeps its writable layer across mounts, and is mounted at one
    place at a time. A symlink as DIRECTORY mounts at its target; DIRECTORY may not be
    inside the store.

    What a mount of the image read in its first seconds is read ahead in the
    background by its next mounts, so their cold starts are nearly as fast as
    from a plain directory.

    IMAGE may be a remote reference (HOST[:PORT]/NAME[:TAG], a layout directory, a URL): the
    mount is lazy. Only the image's manifest, trees and pack indexes are fetched (it is then a
    partial image, tagged as 'vocker pull' tags it); each file's content is fetched on its first
    read, checked and kept (a file over 1 MiB by the 128 KiB chunks read). A read the server does not answer fails with EIO after
    VOCKER_LAZY_WAIT seconds (default 20). 'vocker pull' completes the image.
    """
    from ..mounting import mount
    from ..oci.lazy import local_ref

    store = open_store()
    ref, lazy = local_ref(store, ref, insecure)
    record = mount(store, ref, directory, read_only=read_only, audit=audit, python=python, allow_other=allow_other)
    partial = lazy is not None and store.image(lazy.image_id).partial
    out.print(f"Mounted {ref} at {record.mountpoint} (container {record.container}, pid {record.pid})"
              f"{'; partial image: file contents are fetched on first read' if partial else ''}", markup=False)


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


umount_cmd = copy.copy(unmount_cmd)
umount_cmd.hidden = True  # one name per command in the help; the old spelling still works
cli.add_command(umount_cmd, "umount")


@cli.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Also list named containers that are not mounted, and warm mounts (kept for the next run).")
@click.option("-q", "--quiet", is_flag=True, help="Only print container names, one a line.")
@no_trunc_option
@format_option
def ps_cmd(show_all: bool, quiet: bool, no_trunc: bool, fmt: str) -> None:
    """List mounted containers and whether their daemons are healthy.

    Also lists throw-away containers a killed mount left (orphaned: 'vocker unmount' or
    'vocker image rm' removes them).
    """
    from .. import containers
    from ..mounting import status

    store = open_store()
    names = {r.id: (r.tags[0] if r.tags else None) for r in store.images()}
    by_name = {c.name: c for c in containers.all_containers(store)}
    rows: list[dict[str, Any]] = []

    def add(name: str, mountpoint: str | None, pid: int | None, state: str) -> None:
        c = by_name.get(name)
        rows.append({"container": name, "image": names.get(c.image_id) if c else None,
                     "image_id": c.image_id if c else None, "mountpoint": mountpoint, "pid": pid,
                     "status": state, "persistent": c.persistent if c else None})

    mounted = set()
    for m in containers.mounts(store):  # the daemon records its mount before mounting
        mounted.add(m.container)
        state = status(m)
        if m.options.get("warm") and state == "healthy":  # kept for the next run: listed with -a
            if not show_all:
                continue
            state = "warm"
        add(m.container, m.mountpoint, m.pid, state)
    for name in containers.orphans(store):
        if name in by_name and name not in mounted:
            add(name, None, None, "orphaned")
    if show_all:
        for c in by_name.values():
            if c.name not in mounted and c.persistent:
                add(c.name, None, None, "not mounted")
    if quiet:
        print_lines(r["container"] for r in rows)
        return

    def image_shown(r: dict[str, Any]) -> str:
        if r["image"]:
            return str(r["image"])
        return "?" if r["image_id"] is None else r["image_id"] if no_trunc else short(r["image_id"])

    listing(fmt, PS_COLUMNS, rows, lambda r: [r["container"], image_shown(r), r["mountpoint"] or "-",
                                              "-" if r["pid"] is None else str(r["pid"]), r["status"]],
            lambda r: r)


PS_COLUMNS = (Column("CONTAINER"), Column("IMAGE"), Column("MOUNT POINT"), Column("PID", right=True),
              Column("STATUS"))


@cli.command("create")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.option("--name", required=True, help="Container name (letters, digits, '.', '_', '-'; at most 64).")
def create_cmd(image_ref: str, name: str) -> None:
    """Create a named container: an image plus a writable layer that persists across mounts."""
    from .. import containers

    c = containers.create(open_store(), image_ref, name)
    out.print(f"Created container {c.name} from {short(c.image_id)}", markup=False)


@cli.command("rm")
@click.argument("names", metavar="CONTAINER...", nargs=-1, required=True, shell_complete=complete_containers)
@click.option("-f", "--force", is_flag=True, help="Unmount first if mounted.")
def rm_cmd(names: tuple[str, ...], force: bool) -> None:
    """Remove containers and their writable layers."""
    from .. import containers
    from ..mounting import status, unmount

    store = open_store()
    for name in names:
        containers.require(store, name)
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


@cli.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("ref", metavar="IMAGE|CONTAINER", shell_complete=complete_refs)
@click.argument("command", metavar="COMMAND [ARG]...", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-e", "--env", "env", metavar="KEY=VAL", multiple=True,
              help="Set a variable for COMMAND (repeatable); KEY alone passes this shell's value.")
@click.option("-w", "--workdir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Working directory of COMMAND (default: the current one).")
@click.option("--read-only", is_flag=True, help="Mount without a writable layer.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment.")
@click.option("--with", "with_", metavar="SPEC", multiple=True,
              help="Run on IMAGE plus a cached layer installing SPEC (repeatable; also 'IMAGE --with SPEC... --').")
@allow_other_option
@click.option("--insecure", is_flag=True, help="A remote IMAGE: speak plain HTTP (always so for localhost).")
@own_failures_exit(RUN_FAILED)
def run_cmd(ref: str, command: tuple[str, ...], env: tuple[str, ...], workdir: Path | None, read_only: bool,
            python: Path | None, with_: tuple[str, ...], allow_other: bool, insecure: bool) -> None:
    """Run COMMAND with the environment mounted and active, and exit with its exit code.

    Options go before IMAGE: everything after it is COMMAND's ('vocker run app python -h'
    shows Python's help). Mounts in a temporary directory named after the image, sets
    PATH and VIRTUAL_ENV, passes signals through and unmounts. Changes are discarded
    unless IMAGE is a named container. A bare 'python' or 'pip' that the environment
    lacks is refused rather than run from the host (a full path runs anything).

    Exits 127 if COMMAND is not found, 126 if it cannot be executed (as a shell does),
    125 if vocker itself fails (no such image, mount failed).

    'vocker run IMAGE COMMAND' (no options) keeps the image's mount warm for the next run
    instead of unmounting it (VOCKER_WARM_IDLE seconds, default 300; 0 turns it off), its
    changes discarded.

    '--with SPEC' (as uv run --with) runs on IMAGE plus a layer that installs SPEC over it,
    built once and cached (by IMAGE's ID and the pinned set): the next run installs nothing.
    A version it replaces is gone, not shadowed: metadata, pip list, scripts and imports
    all see one version.

    IMAGE may be a remote reference: mounted lazily, as 'vocker mount' does, so COMMAND
    starts once the files it reads are fetched.
    """
    from ..oci.lazy import local_ref
    from ..running import run_in

    store = open_store()
    ref, _ = local_ref(store, ref, insecure)
    extra, rest = _with_after_image(command)
    sys.exit(run_in(store, ref, rest, read_only=read_only, python=python, allow_other=allow_other,
                    env=_variables(env), cwd=workdir, with_=with_ + extra))


def _with_after_image(command: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """``IMAGE --with SPEC... -- COMMAND``: the SPECs given after IMAGE, and the command."""
    if not command or not (command[0] == "--with" or command[0].startswith("--with=")):
        return (), list(command)
    if "--" not in command:
        raise click.UsageError("'IMAGE --with SPEC...' needs '--' before COMMAND")
    end = command.index("--")
    specs = [s.removeprefix("--with=") for s in command[:end] if s != "--with"]
    if not specs or not command[end + 1:]:
        raise click.UsageError("'--with' needs a SPEC, and '--' a COMMAND after it")
    return tuple(specs), list(command[end + 1:])


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    """docker run's -e: KEY=VAL, or KEY alone for this process's value (skipped when unset)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key or "\0" in pair:
            raise click.BadParameter(f"expected KEY=VAL, not {pair!r}", param_hint="'-e'")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


@cli.command("shell")
@click.argument("ref", metavar="IMAGE|CONTAINER", shell_complete=complete_refs)
@click.option("-e", "--env", "env", metavar="KEY=VAL", multiple=True, help="Set a variable in the shell (repeatable).")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment.")
@allow_other_option
@own_failures_exit(RUN_FAILED)
def shell_cmd(ref: str, env: tuple[str, ...], python: Path | None, allow_other: bool) -> None:
    """Open an interactive shell ($SHELL) with the environment mounted and active.

    The environment is activated after your ~/.bashrc or ~/.zshrc (bash, zsh, fish,
    sh), so it wins over a Python they put first on PATH; the prompt shows the image's
    name. Exits with the shell's exit code, 125 if vocker itself fails.
    """
    from ..running import run_in

    shell = os.environ.get("SHELL") or "/bin/sh"
    sys.exit(run_in(open_store(), ref, [shell], python=python, allow_other=allow_other, env=_variables(env),
                    interactive_shell=True))


@container.command("prune")
def container_prune() -> None:
    """Remove throw-away containers that nothing mounts (a killed mount leaves them).

    Named containers stay: remove one with 'vocker rm'.
    """
    from ..prune import prune_containers

    pruned = prune_containers(open_store())
    out.print(f"Removed {pruned.containers} throw-away container(s), freed {human_size(pruned.container_bytes)}",
              markup=False)
