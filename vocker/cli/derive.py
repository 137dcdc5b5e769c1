"""Commands that derive an image in one step: install and uninstall packages, then commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .. import refs
from ..ui import RichReporter, out
from .common import cli, index_from_options, index_options, open_store
from .completion import complete_refs

if TYPE_CHECKING:
    from ..build import IndexOptions


def _derive(ref: str, specs: tuple[str, ...], tag: str, message: str | None, uninstall: bool,
            index: IndexOptions) -> None:
    from ..deriving import change

    result = change(open_store(), ref, list(specs), refs.new_tag(tag), uninstall=uninstall, index=index,
                    message=message, reporter=RichReporter())
    what = "Derived" if result.new else "Already in store (the same change):"
    out.print(f"{what} {result.tag} from {ref} ({result.layers} layers) in {result.seconds:.2f}s", markup=False)
    out.print(f"  {result.image_id}", markup=False)


@cli.command("install")
@click.argument("ref", metavar="IMAGE|CONTAINER", shell_complete=complete_refs)
@click.argument("specs", metavar="SPEC...", nargs=-1, required=True)
@click.option("-t", "--tag", metavar="NAME[:TAG]", required=True, help="Name of the new image.")
@click.option("-m", "--message", help="What the change is (default: the install command).")
@index_options
def install_cmd(ref: str, specs: tuple[str, ...], tag: str, message: str | None, **index: Any) -> None:
    """Install packages into an image and save the result as a new image: one more layer.

    uv (pip where uv cannot run) installs SPECs with the image's own interpreter into a
    throw-away container of IMAGE, which is then committed as 'vocker commit' does: the same
    install on the same image gives the same image ID. A CONTAINER is installed into (and
    keeps the change) and committed on its image.
    """
    _derive(ref, specs, tag, message, False, index_from_options(**index))


@cli.command("uninstall")
@click.argument("ref", metavar="IMAGE|CONTAINER", shell_complete=complete_refs)
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("-t", "--tag", metavar="NAME[:TAG]", required=True, help="Name of the new image.")
@click.option("-m", "--message", help="What the change is (default: the uninstall command).")
def uninstall_cmd(ref: str, names: tuple[str, ...], tag: str, message: str | None) -> None:
    """Uninstall packages from an image and save the result as a new image: one more layer.

    What is removed is gone from the new image (whiteouts in its top layer); the image it
    came from is unchanged.
    """
    from ..build import IndexOptions

    _derive(ref, names, tag, message, True, IndexOptions())
