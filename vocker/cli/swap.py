"""Swap the image under a live mount: remount."""

from __future__ import annotations

import click

from ..ui import out
from .common import cli, open_store
from .completion import complete_images


@cli.command("remount")
@click.argument("directory")  # a plain string: click.Path would stat() the mount
@click.argument("image_ref", metavar="IMAGE", shell_complete=complete_images)
def remount_cmd(directory: str, image_ref: str) -> None:
    """Switch a mounted container to another image with the same Python, in place.

    The writable layer stays; files already open keep reading what they opened; new
    lookups see IMAGE. Only the paths that differ between the two images are dropped from
    the kernel's caches, so a swap costs the size of the change. The container belongs to
    IMAGE from then on (a named one also at its next mount). Another Python, or no such
    image: refused, and the mount stays as it was.
    """
    from ..swap import remount

    done = remount(open_store(), directory, image_ref)
    out.print(f"Remounted {done.mountpoint} on {image_ref} ({done.changed} paths differ) in "
              f"{done.seconds * 1000:.0f} ms", markup=False)
