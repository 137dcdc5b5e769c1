"""Commands on images: import, list, inspect, remove, tag, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .. import refs
from ..digest import short
from ..ui import RichReporter, err, human_age, human_size, out
from .common import open_store, cli, image
from .completion import complete_images
from .output import Column, format_option, iso_time, listing, no_trunc_option, print_json, print_lines


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
@click.argument("name", metavar="[NAME[:TAG]]", required=False, shell_complete=complete_images)
@click.option("-q", "--quiet", is_flag=True, help="Only print image IDs (full), one a line.")
@no_trunc_option
@format_option
def image_ls(name: str | None, quiet: bool, no_trunc: bool, fmt: str) -> None:
    """List images, or those of one repository NAME (or NAME:TAG).

    A partial image (mounted lazily from a remote, its file contents fetched on first read)
    shows '(partial)' after its size; 'vocker pull' completes it.
    """
    store = open_store()
    records = [r for r in store.images() if name is None or any(_matches(t, name) for t in r.tags)]
    if quiet:
        print_lines(r.id for r in records)
        return
    manifests = {r.id: store.manifest(r.id) for r in records}

    def python(r: Any) -> dict[str, str] | None:
        py = manifests[r.id].python
        return {"implementation": py.implementation, "version": py.version} if py else None

    def row(r: Any) -> list[str]:
        py = python(r)
        return [r.id if no_trunc else short(r.id), ",".join(r.tags) or "<none>", manifests[r.id].kind,
                f"{py['implementation']} {py['version']}" if py else "-", str(r.files),
                human_size(r.size) + (" (partial)" if r.partial else ""), human_age(r.created)]

    listing(fmt, IMAGE_COLUMNS, records, row,
            lambda r: {"id": r.id, "tags": list(r.tags), "kind": manifests[r.id].kind, "python": python(r),
                       "files": r.files, "size": r.size, "created": iso_time(r.created), "partial": r.partial})


IMAGE_COLUMNS = (Column("IMAGE ID"), Column("TAGS", wrap=True), Column("KIND"), Column("PYTHON"),
                 Column("FILES", right=True), Column("SIZE", right=True), Column("CREATED"))


def _matches(tag: str, wanted: str) -> bool:
    """Docker's ``images NAME[:TAG]``: the repository name, and the tag if one is given."""
    name, _, version = tag.rpartition(":")
    want_name, sep, want_version = wanted.rpartition(":") if ":" in wanted.split("/")[-1] else (wanted, "", "")
    return name == want_name and (not sep or version == want_version)


cli.add_command(image_ls, "images")


@image.command("inspect")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.option("--insecure", is_flag=True, help="A remote registry: speak plain HTTP (always so for localhost).")
def image_inspect(image_ref: str, insecure: bool) -> None:
    """Show an image's manifest, provenance and installed distributions as JSON.

    IMAGE may also be a remote reference (HOST[:PORT]/NAME[:TAG], a layout directory, a URL):
    its manifest is read without pulling the image.
    """
    from ..oci.registry import is_remote_ref

    store = open_store()
    if is_remote_ref(image_ref):
        from ..oci.artifact import inspect
        from ..oci.registry import locate

        doc = inspect(*locate(image_ref, insecure=insecure))
        out.print_json(json.dumps(doc)) if out.is_terminal else print_json(doc)
        return
    image_id = store.resolve(image_ref)
    record = store.image(image_id)
    doc: dict[str, Any] = {
        "id": image_id, "tags": list(record.tags), "size": record.size, "files": record.files,
        "created": iso_time(record.created), "partial": record.partial,
        "manifest": store.manifest(image_id).to_cbor(), "provenance": record.provenance,
    }
    from ..build import build_record

    build = build_record(store, image_id)
    if build is not None:
        doc["build"] = build
    from ..layering import distributions

    if doc["manifest"].get("python") is not None:
        doc["distributions"] = distributions(store, image_id)
    out.print_json(json.dumps(doc)) if out.is_terminal else print_json(doc)


@image.command("rm")
@click.argument("image_refs", metavar="IMAGE...", nargs=-1, required=True, shell_complete=complete_images)
def image_rm(image_refs: tuple[str, ...]) -> None:
    """Remove images (or just the given tag when the image has others). Run 'vocker gc' to free space."""
    from ..mounting import reap_orphans

    from ..warm import release

    store = open_store()
    reap_orphans(store)  # throw-away containers left by a killed mount would keep their image
    release(store, {store.resolve(ref) for ref in image_refs})  # so would unused warm mounts
    for ref in image_refs:
        image_id, deleted = store.remove(ref)
        out.print(f"{'Deleted' if deleted else 'Untagged'}: {image_id if deleted else refs.normalize_tag(ref)}",
                  markup=False)


cli.add_command(image_rm, "rmi")


@image.command("prune")
def image_prune() -> None:
    """Delete untagged images that no container uses, then free what no image needs (gc).

    A failed 'build --test' leaves such an image. Tagged images stay.
    """
    from ..prune import prune_images
    from .upkeep import collect

    store = open_store()
    pruned = prune_images(store)
    result = collect(store)
    out.print(f"Deleted {len(pruned.images)} untagged image(s); freed {human_size(result.bytes)}", markup=False)


@cli.command("tag")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.argument("new_tag", metavar="NAME[:TAG]")
def tag_cmd(image_ref: str, new_tag: str) -> None:
    """Give an image another name."""
    out.print(open_store().tag(image_ref, new_tag), markup=False)


@cli.command("export")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
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
