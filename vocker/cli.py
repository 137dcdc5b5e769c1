"""The ``vocker`` command line: a thin edge over the core modules."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__, interrupts, refs
from .digest import short
from .errors import VockerError
from .store import Store
from .ui import RichReporter, err, human_age, human_size, out, table as make_table

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _store() -> Store:
    return Store.open()


def _store_mode(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from .home import set_mode

        set_mode(param.name)


def _options(*options: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One decorator for a group of click options shared by several commands (in the order given)."""
    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


with_store_options = _options(
    click.option("--local", is_flag=True, expose_value=False, callback=_store_mode, is_eager=True,
                 help="Use the project store .vocker/ in the current directory (created if missing)."),
    click.option("--global", "global", is_flag=True, expose_value=False, callback=_store_mode, is_eager=True,
                 help="Use the user store ($VOCKER_HOME or the user data directory)."),
)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="vocker")
@with_store_options
def cli() -> None:
    """Reproducible Python environments as images in a content-addressed store.

    The store: .vocker/ in the current directory if it exists, else $VOCKER_HOME
    (default: the user data directory). --local/--global choose; 'vocker config' tells.
    """


@cli.group()
def image() -> None:
    """Create, list, inspect and remove images."""


@image.command("import")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=True))
@click.option("-t", "--tag", metavar="NAME[:TAG]", help="Tag the image (TAG defaults to 'latest').")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Interpreter the venv was made with (default: the one pyvenv.cfg names).")
@click.option("--rehash", is_flag=True,
              help="Read and hash every file, even those unchanged since the last import of this path.")
def image_import(directory: Path, tag: str | None, python: Path | None, rehash: bool) -> None:
    """Import a venv (or any directory tree) as an image.

    A venv is stored without its location: the same packages installed anywhere give
    the same image ID. A directory without pyvenv.cfg is stored as a plain tree.
    """
    from .importer import import_tree
    from .venv import is_venv

    tag = refs.new_tag(tag) if tag else None
    if directory.is_dir() and not is_venv(directory):
        err.print(f"{directory} has no pyvenv.cfg: importing it as a plain tree", markup=False)
    result = import_tree(_store(), directory, tag, python=python, reporter=RichReporter(), rehash=rehash)
    for line in result.escaping_links:
        err.print(f"vocker: warning: symlink {line} points outside the image: mounts and exports will not "
                  "serve it (audits show it as a file)", markup=False)
    what = "Imported" if result.new else "Already in store:"
    out.print(f"{what} {result.kind} {directory} as {result.tag or result.image_id}", markup=False)
    out.print(f"  {result.image_id}", markup=False)
    unchanged = f" ({result.unchanged} unchanged since the last import, not re-read)" if result.unchanged else ""
    out.print(f"  {result.files} files{unchanged}, {human_size(result.size)}; {result.new_blobs} new blobs "
              f"({human_size(result.new_stored_bytes)} stored) in {result.seconds:.2f}s", markup=False)


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs.")
def image_ls(quiet: bool) -> None:
    """List images."""
    store = _store()
    records = store.images()
    if quiet:
        for r in records:
            out.print(r.id, markup=False)
        return
    table = make_table(header_style="bold")
    for col in ("IMAGE ID", "TAGS", "KIND", "PYTHON", "FILES", "SIZE", "CREATED"):
        table.add_column(col, no_wrap=col != "TAGS")
    for r in records:
        manifest = store.manifest(r.id)
        py = f"{manifest.python.implementation} {manifest.python.version}" if manifest.python else "-"
        table.add_row(short(r.id), ", ".join(r.tags) or "<none>", manifest.kind, py, str(r.files),
                      human_size(r.size), human_age(r.created))
    out.print(table)


cli.add_command(image_ls, "images")


@image.command("inspect")
@click.argument("image_ref", metavar="IMAGE")
def image_inspect(image_ref: str) -> None:
    """Show an image's manifest and provenance as JSON."""
    store = _store()
    image_id = store.resolve(image_ref)
    record = store.image(image_id)
    doc: dict[str, Any] = {
        "id": image_id, "tags": list(record.tags), "size": record.size, "files": record.files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        "manifest": store.manifest(image_id).to_cbor(), "provenance": record.provenance,
    }
    from .build import build_record

    build = build_record(store, image_id)
    if build is not None:
        doc["build"] = build
    out.print_json(json.dumps(doc)) if out.is_terminal else click.echo(json.dumps(doc, indent=2))


@image.command("rm")
@click.argument("image_refs", metavar="IMAGE...", nargs=-1, required=True)
def image_rm(image_refs: tuple[str, ...]) -> None:
    """Remove images (or just the given tag when the image has others). Run 'vocker gc' to free space."""
    from .mounting import reap_orphans

    store = _store()
    reap_orphans(store)  # throw-away containers left by a killed mount would keep their image
    for ref in image_refs:
        image_id, deleted = store.remove(ref)
        out.print(f"{'Deleted' if deleted else 'Untagged'}: {image_id if deleted else refs.normalize_tag(ref)}",
                  markup=False)


cli.add_command(image_rm, "rmi")


@cli.command("tag")
@click.argument("image_ref", metavar="IMAGE")
@click.argument("new_tag", metavar="NAME[:TAG]")
def tag_cmd(image_ref: str, new_tag: str) -> None:
    """Give an image another name."""
    out.print(_store().tag(image_ref, new_tag), markup=False)


@cli.command("export")
@click.argument("image_ref", metavar="IMAGE")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--audit", is_flag=True,
              help="Write the raw stored contents for inspection: no scaffolding, no bytecode, no exec bits; "
                   "runs nothing.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment (default: a matching one found on this machine).")
def export_cmd(image_ref: str, directory: Path, audit: bool, python: Path | None) -> None:
    """Materialise an image as a working venv in DIRECTORY (which must not exist or be empty)."""
    from .exporter import export_image

    result = export_image(_store(), image_ref, directory, audit=audit, python=python, reporter=RichReporter())
    out.print(f"Exported {short(result.image_id)} to {result.dest} ({result.files} files, "
              f"{human_size(result.size)}) in {result.seconds:.2f}s", markup=False)
    if result.interpreter:
        out.print(f"  python: {result.interpreter}; {result.pycs} pycs ({result.compiled} newly compiled)",
                  markup=False)


@cli.command("verify")
def verify_cmd() -> None:
    """Check the store database, then re-hash every blob and tree the images need; exit 1 naming each problem."""
    from .maintenance import verify

    checked, problems = verify(_store(), reporter=RichReporter())
    for p in problems:
        out.print(p.line(), markup=False)
    if problems:
        err.print(f"vocker: verify found {len(problems)} problem(s) in {checked} objects", markup=False)
        sys.exit(1)
    out.print(f"OK: {checked} objects verified", markup=False)


@cli.command("gc")
def gc_cmd() -> None:
    """Delete blobs and trees no image needs (waits for running imports, exports and builds).

    Deletes nothing, and says so, when the store is inconsistent (run 'vocker verify').
    """
    from .maintenance import gc

    store = _store()
    with store.lock_exclusive(blocking=False) as got:
        if got:
            result = gc(store)
    if not got:
        err.print("waiting for running imports/exports to finish...", markup=False)
        with store.lock_exclusive():
            result = gc(store)
    out.print(f"Removed {result.blobs + result.orphans} blobs ({human_size(result.bytes)}), "
              f"{result.objects} trees/manifests, {result.pycs} cached pycs", markup=False)


@cli.command("df")
def df_cmd() -> None:
    """Show space used: logical vs stored size, dedup and compression ratios.

    Stored size includes the metadata database (small files live inline in it); the
    compression ratio is that of the blob files alone.
    """
    from .maintenance import usage

    store = _store()
    u = usage(store)
    table = make_table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in (("store", str(store.root)), ("images", str(u.images)), ("files", str(u.files)),
                         ("logical size", human_size(u.logical)), ("unique content", human_size(u.unique)),
                         ("stored on disk", human_size(u.stored)), ("  metadata database", human_size(u.database)),
                         ("bytecode cache", human_size(u.cache)),
                         ("dedup ratio", f"{u.dedup_ratio:.2f}x"),
                         ("compression ratio", f"{u.compression_ratio:.2f}x")):
        table.add_row(label, value)
    out.print(table)


index_options = _options(
    click.option("--index-url", "-i", metavar="URL", help="Base URL of the package index (default: pip/uv config)."),
    click.option("--extra-index-url", metavar="URL", multiple=True, help="Another index to use (repeatable)."),
    click.option("--find-links", "-f", metavar="DIR|URL", multiple=True,
                 help="A directory of wheels or a page of links (repeatable)."),
    click.option("--no-index", is_flag=True, help="Ignore package indexes (use --find-links only)."),
    click.option("--offline", is_flag=True, help="No network: only the uv cache and local wheels."),
)


def _index(index_url: str | None, extra_index_url: tuple[str, ...], find_links: tuple[str, ...], no_index: bool,
           offline: bool):  # type: ignore[no-untyped-def]
    from .build import IndexOptions

    links = tuple(str(Path(f).absolute()) if os.path.isdir(f) else f for f in find_links)
    return IndexOptions(index_url, extra_index_url, links, no_index, offline)


@cli.command("build")
@click.argument("specs", metavar="[SPEC]...", nargs=-1)
@click.option("-r", "--requirements", type=click.Path(path_type=Path, dir_okay=False),
              help="requirements.txt, an existing lock, or pyproject.toml.")
@click.option("--python", metavar="3.X|PATH", help="Interpreter to build for (default: the one running vocker).")
@click.option("-t", "--tag", metavar="NAME[:TAG]", help="Tag the image (TAG defaults to 'latest').")
@click.option("--lock", "lock_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the lock (default: requirements.lock beside the input).")
@click.option("--lock-only", is_flag=True, help="Resolve and write the lock; build nothing.")
@click.option("--upgrade", "-U", is_flag=True, help="Re-resolve even if the lock is up to date with its input.")
@click.option("--test", "test_cmd", metavar="CMD",
              help="Shell command run inside the built environment (mounted) before tagging; failing tags nothing.")
@index_options
@with_store_options
def build_cmd(specs: tuple[str, ...], requirements: Path | None, python: str | None, tag: str | None,
              lock_path: Path | None, lock_only: bool, upgrade: bool, test_cmd: str | None, **index: Any) -> None:
    """Build an image from requirements: resolve a lock, install exactly it, import.

    The cache key is the pinned lock + interpreter + platform: building the same lock
    again returns the stored image without installing anything.
    """
    from .build import BuildRequest, build

    tag = refs.new_tag(tag) if tag else None
    if specs and requirements:
        raise click.UsageError("give either SPECs or -r FILE, not both")
    if requirements is not None and requirements.suffix == ".toml" and requirements.name != "pyproject.toml":
        raise click.UsageError("-r takes a requirements file, a lock or pyproject.toml")
    req = BuildRequest(tuple(specs), requirements, python, lock_path, _index(**index), upgrade)
    store = _store()

    def run_test(image_id: str) -> int:
        from .running import run_in

        err.print(f"testing: {test_cmd}", markup=False)
        return run_in(store, image_id, ["/bin/sh", "-c", test_cmd or "true"])

    result = build(store, req, tag=tag, lock_only=lock_only, test=run_test if test_cmd else None,
                   reporter=RichReporter(), on_step=lambda m: err.print(m, markup=False))
    where = f" -> {result.lock_path}" if result.lock_path else ""
    out.print(f"lock: {'resolved' if result.resolved else 'up to date'}{where}", markup=False)
    if lock_only:
        return
    state = "cached: nothing installed" if result.cached else "built"
    out.print(f"{state}: {tag or result.image_id} ({result.image_id}) in {result.seconds:.2f}s", markup=False)


@cli.command("lookup")
@click.argument("lockfile", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--python", metavar="3.X|PATH", help="Interpreter the image would be for (default: vocker's).")
@with_store_options
def lookup_cmd(lockfile: Path, python: str | None) -> None:
    """Is there a stored image for this lock? Prints it (exit 0) or says no (exit 1)."""
    from . import locks
    from .build import lookup, options
    from .pythons import find_requested

    lock = locks.parse(lockfile.read_text(encoding="utf-8"), str(lockfile))
    info = find_requested(python)
    key = locks.cache_key(lock, info, options())
    store = _store()
    image_id = lookup(store, key)
    if image_id is None:
        out.print(f"no image for {lockfile} (python {info['version']}, {info['platform']})", markup=False)
        sys.exit(1)
    record = store.image(image_id)
    out.print(f"{image_id} {', '.join(record.tags) or '<untagged>'}", markup=False)


@cli.command("audit")
@click.argument("image_ref", metavar="IMAGE")
@index_options
@with_store_options
def audit_cmd(image_ref: str, **index: Any) -> None:
    """Rebuild an image from its recorded lock in a fresh place; exit 1 if the ID differs."""
    from .build import audit

    explicit = index["index_url"] or index["extra_index_url"] or index["find_links"] or index["no_index"]
    result = audit(_store(), image_ref, _index(**index) if explicit or index["offline"] else None,
                   on_step=lambda m: err.print(m, markup=False))
    if result.matches:
        out.print(f"OK: rebuilding gives the same image {result.image_id}", markup=False)
        return
    out.print(f"MISMATCH: the image is {result.image_id}, the rebuild gives {result.rebuilt_id}", markup=False)
    for line in result.differences:
        out.print(f"  {line}", markup=False)
    sys.exit(1)


@cli.command("config")
@with_store_options
def config_cmd() -> None:
    """Show which store is in use and why."""
    from .home import resolve_home

    root, why = resolve_home()
    table = make_table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("store", str(root))
    table.add_row("because", why)
    table.add_row("exists", "yes" if (root / "vocker.db").exists() else "no (created on first use)")
    out.print(table)


allow_other_option = click.option(
    "--allow-other", is_flag=True,
    help="Let other users (a service user) use the mount too; file permissions still apply. As non-root "
         "it needs 'user_allow_other' in /etc/fuse.conf.")


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
    from .mounting import mount

    record = mount(_store(), ref, directory, read_only=read_only, audit=audit, python=python,
                   allow_other=allow_other)
    out.print(f"Mounted {ref} at {record.mountpoint} (container {record.container}, pid {record.pid})", markup=False)


@cli.command("unmount")
@click.argument("directory")  # a plain string: click.Path would stat() a hung mount and hang
@click.option("-f", "--force", is_flag=True,
              help="Also when busy (lazy) or when the daemon is dead or hung (killed; its FUSE connection "
                   "aborted as a last resort). Never looks into the mount.")
def unmount_cmd(directory: str, force: bool) -> None:
    """Unmount a container mounted with 'vocker mount' (DIRECTORY or a symlink to it)."""
    from .mounting import unmount

    unmount(_store(), directory, force=force)
    out.print(f"Unmounted {directory}", markup=False)


cli.add_command(unmount_cmd, "umount")


@cli.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also list named containers that are not mounted.")
def ps_cmd(show_all: bool) -> None:
    """List mounted containers and whether their daemons are healthy.

    Also lists throw-away containers a killed mount left (orphaned: 'vocker unmount' or
    'vocker image rm' removes them).
    """
    from . import containers
    from .mounting import status

    store = _store()
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
        table.add_row(m.container, image_of(m.container), m.mountpoint, str(m.pid), status(m))
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
    from . import containers

    c = containers.create(_store(), image_ref, name)
    out.print(f"Created container {c.name} from {short(c.image_id)}", markup=False)


@cli.command("rm")
@click.argument("names", metavar="CONTAINER...", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Unmount first if mounted.")
def rm_cmd(names: tuple[str, ...], force: bool) -> None:
    """Remove containers and their writable layers."""
    from . import containers
    from .mounting import status, unmount

    store = _store()
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
    """
    from .running import run_in

    sys.exit(run_in(_store(), ref, list(command), read_only=read_only, python=python, allow_other=allow_other))


@cli.command("shell")
@click.argument("ref", metavar="IMAGE|CONTAINER")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Host interpreter for the environment.")
@allow_other_option
def shell_cmd(ref: str, python: Path | None, allow_other: bool) -> None:
    """Open an interactive shell ($SHELL) with the environment mounted and active."""
    from .running import run_in

    shell = os.environ.get("SHELL") or "/bin/sh"
    sys.exit(run_in(_store(), ref, [shell], python=python, allow_other=allow_other))


def _one_line(exc: BaseException) -> tuple[str, int]:
    """The message and exit code for an error; never a traceback."""
    from sqlite3 import Error as DatabaseError

    from .db import damaged

    if isinstance(exc, VockerError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on device{where}; nothing was recorded", 1
        if exc.errno == errno.EROFS:
            return f"read-only file system{where}", 1
        return f"{exc.strerror or exc}{where}", 1
    if damaged(exc):
        return f"the store database is damaged ({exc}); 'vocker verify' tells more", 1
    if isinstance(exc, DatabaseError):
        return f"store database error: {exc}", 1
    return f"internal error: {type(exc).__name__}: {exc} (set VOCKER_DEBUG=1 for a traceback)", 70


def main(argv: list[str] | None = None) -> None:
    """Run one command: one line on stderr for any error; 130 for Ctrl-C, saying what is recorded."""
    try:
        interrupts.track()
        code = _run(list(sys.argv[1:] if argv is None else argv))
        if interrupts.swallowed():
            raise KeyboardInterrupt  # lost in C code on the way: the command still ends as interrupted
        interrupts.ignore()  # done: a Ctrl-C during the interpreter's exit would be a traceback or a kill
    except KeyboardInterrupt:
        interrupts.ignore()  # a second Ctrl-C must not cut the line short
        err.print(f"vocker: {interrupts.message()}", markup=False)
        code = 130
    sys.exit(code)


def _run(argv: list[str]) -> int | str | None:
    """The command's exit code, having printed the one line of its error if it failed.
    A KeyboardInterrupt goes on up to main(), from anywhere (also from these handlers)."""
    try:
        # Not cli.main(): it turns Ctrl-C into click's Abort after printing a blank line.
        with cli.make_context("vocker", argv) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # a command's own exit code (verify, run, lookup)
        return exc.code
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        err.print(f"vocker: error: {exc.format_message()}{hint}", markup=False)
        return 2
    except click.Abort:
        err.print("vocker: aborted", markup=False)
        return 1
    except click.ClickException as exc:
        err.print(f"vocker: error: {exc.format_message()}", markup=False)
        return exc.exit_code
    except Exception as exc:
        if os.environ.get("VOCKER_DEBUG"):
            raise
        message, code = _one_line(exc)
        err.print(f"vocker: error: {message}", markup=False)
        return code
