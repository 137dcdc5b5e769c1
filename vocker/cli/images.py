"""Commands on images: import, list, inspect, remove, tag, export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from .. import refs
from ..digest import short
from ..ui import RichReporter, err, human_age, human_size, out, table as make_table
from .common import open_store, cli, image


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
    from ..importer import import_tree
    from ..venv import is_venv

    tag = refs.new_tag(tag) if tag else None
    if directory.is_dir() and not is_venv(directory):
        err.print(f"{directory} has no pyvenv.cfg: importing it as a plain tree", markup=False)
    result = import_tree(open_store(), directory, tag, python=python, reporter=RichReporter(), rehash=rehash)
    for line in result.escaping_links:
        err.print(f"vocker: warning: symlink {line} points outside the image: mounts and exports will not "
                  "serve it (audits show it as a file)", markup=False)
    for line in result.editables:
        err.print(f"vocker: warning: {line} is an editable install: the image refers to files outside itself, "
                  "which other machines (and later changes) do not share", markup=False)
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
    store = open_store()
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
    store = open_store()
    image_id = store.resolve(image_ref)
    record = store.image(image_id)
    doc: dict[str, Any] = {
        "id": image_id, "tags": list(record.tags), "size": record.size, "files": record.files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
        "manifest": store.manifest(image_id).to_cbor(), "provenance": record.provenance,
    }
    from ..build import build_record

    build = build_record(store, image_id)
    if build is not None:
        doc["build"] = build
    out.print_json(json.dumps(doc)) if out.is_terminal else click.echo(json.dumps(doc, indent=2))


@image.command("rm")
@click.argument("image_refs", metavar="IMAGE...", nargs=-1, required=True)
def image_rm(image_refs: tuple[str, ...]) -> None:
    """Remove images (or just the given tag when the image has others). Run 'vocker gc' to free space."""
    from ..mounting import reap_orphans

    store = open_store()
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
    out.print(open_store().tag(image_ref, new_tag), markup=False)


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
    from ..exporter import export_image

    result = export_image(open_store(), image_ref, directory, audit=audit, python=python, reporter=RichReporter())
    out.print(f"Exported {short(result.image_id)} to {result.dest} ({result.files} files, "
              f"{human_size(result.size)}) in {result.seconds:.2f}s", markup=False)
    if result.interpreter:
        out.print(f"  python: {result.interpreter}; {result.pycs} pycs ({result.compiled} newly compiled)",
                  markup=False)
