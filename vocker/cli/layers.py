"""Commands on layers: commit a container, diff a container or two images, image history, squash."""

from __future__ import annotations

import click

from .. import refs
from ..digest import short
from ..ui import RichReporter, human_size, out
from .common import cli, image, open_store
from .completion import complete_containers, complete_images
from .output import Column, format_option, listing, print_json

@cli.command("commit")
@click.argument("container", shell_complete=complete_containers)
@click.option("-t", "--tag", metavar="NAME[:TAG]", required=True, help="Name of the new image.")
@click.option("-m", "--message", default="", help="What the change is (shown by 'vocker image history').")
def commit_cmd(container: str, tag: str, message: str) -> None:
    """Save a container's changes as a new image: its image plus one layer.

    The layer is normalised as an import is (the mount point cut out of scripts and text
    files, bytecode left out, no times or owners), so the same change gives the same image
    ID wherever and whenever it was made. A mounted container is committed as of one moment:
    the processes using the mount are paused while it is read (as docker commit does). The
    message is recorded beside the image, not in its ID.
    """
    from ..layering import commit

    result = commit(open_store(), container, refs.new_tag(tag), message, reporter=RichReporter())
    what = "Committed" if result.new else "Already in store (the same change):"
    out.print(f"{what} container {container} as {result.tag} ({result.layers} layers) in {result.seconds:.2f}s",
              markup=False)
    out.print(f"  {result.image_id}", markup=False)


@cli.command("diff")
@click.argument("container", shell_complete=complete_containers)
@format_option
def diff_cmd(container: str, fmt: str) -> None:
    """List what a container changed in its image: A added, C changed, D deleted."""
    from ..layering import container_changes

    found = container_changes(open_store(), container)
    if fmt == "json":
        print_json([{"path": c.path, "status": c.status, "kind": c.kind.name.lower()} for c in found])
        return
    for c in found:
        click.echo(f"{c.status} /{c.path}")


@image.command("diff")
@click.argument("image_a", metavar="A", shell_complete=complete_images)
@click.argument("image_b", metavar="B", shell_complete=complete_images)
@format_option
@click.option("--packages", "packages_only", is_flag=True, help="Only the package summary.")
def image_diff_cmd(image_a: str, image_b: str, fmt: str, packages_only: bool) -> None:
    """Show what differs from image A to image B: packages (from *.dist-info names), then paths.

    Equal directories are skipped by their digests, so two large images that differ in one
    package compare in the time that package takes.
    """
    from ..layering import image_changes

    paths, packages = image_changes(open_store(), image_a, image_b)
    if fmt == "json":
        print_json({"packages": packages,
               "paths": [{"path": c.path, "status": c.status, "kind": c.kind.name.lower()} for c in paths]})
        return
    for line in packages:
        click.echo(line)
    if not packages_only:
        for c in paths:
            click.echo(f"{c.status} /{c.path}")
    if not paths:
        click.echo("The images have the same files.")


@image.command("history")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@format_option
def image_history_cmd(image_ref: str, fmt: str) -> None:
    """List an image's layers, lowest first: size, what created each, and its message."""
    from ..layering import layer_infos

    store = open_store()
    infos = layer_infos(store, store.resolve(image_ref))
    columns = (Column("LAYER"), Column("SIZE", right=True), Column("FILES", right=True),
               Column("DELETED", right=True), Column("CREATED BY"), Column("CREATED"), Column("MESSAGE", wrap=True))
    listing(fmt, columns, infos,
            lambda i: (short(i.digest), human_size(i.size), str(i.files), str(i.deleted), i.created_by or "-",
                       i.created or "-", i.message or "-"),
            lambda i: {"layer": i.digest, "files": i.files, "deleted": i.deleted, "size": i.size,
                       "created_by": i.created_by, "message": i.message, "created": i.created})


@image.command("squash")
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
@click.option("-t", "--tag", metavar="NAME[:TAG]", required=True, help="Name of the squashed image.")
def image_squash_cmd(image_ref: str, tag: str) -> None:
    """Make a one-layer image with the same files as IMAGE.

    Its ID is that of importing a venv with those files: squashing a derived image gives
    the same ID as a plain import of the same environment.
    """
    from ..layering import squash

    result = squash(open_store(), image_ref, refs.new_tag(tag))
    what = "Squashed" if result.new else "Already in store:"
    out.print(f"{what} {image_ref} as {result.tag} (1 layer) in {result.seconds:.2f}s", markup=False)
    out.print(f"  {result.image_id}", markup=False)
