"""What the command modules share: the top-level groups, the store, and option sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from .. import __version__
from ..store import Store

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def open_store() -> Store:
    return Store.open()


def _store_mode(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from ..home import set_mode

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


index_options = _options(
    click.option("--index-url", "-i", metavar="URL", help="Base URL of the package index (default: pip/uv config)."),
    click.option("--extra-index-url", metavar="URL", multiple=True, help="Another index to use (repeatable)."),
    click.option("--find-links", "-f", metavar="DIR|URL", multiple=True,
                 help="A directory of wheels or a page of links (repeatable)."),
    click.option("--no-index", is_flag=True, help="Ignore package indexes (use --find-links only)."),
    click.option("--offline", is_flag=True, help="No network: only the uv cache and local wheels."),
)


def index_from_options(index_url: str | None, extra_index_url: tuple[str, ...], find_links: tuple[str, ...], no_index: bool,
           offline: bool):  # type: ignore[no-untyped-def]
    from ..build import IndexOptions

    links = tuple(str(Path(f).absolute()) if os.path.isdir(f) else f for f in find_links)
    return IndexOptions(index_url, extra_index_url, links, no_index, offline)


allow_other_option = click.option(
    "--allow-other", is_flag=True,
    help="Let other users (a service user) use the mount too; file permissions still apply. As non-root "
         "it needs 'user_allow_other' in /etc/fuse.conf.")
