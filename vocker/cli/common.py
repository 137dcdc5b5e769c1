"""What the command modules share: the top-level groups, the store, and option sets."""

from __future__ import annotations

import functools
import inspect
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


class Command(click.Command):
    """A command whose summary in its group's help is its first sentence, whole: click's
    default cuts it at the terminal's width, mid-sentence ("...")."""

    def get_short_help_str(self, limit: int = 45) -> str:
        if self.short_help:
            return inspect.cleandoc(self.short_help)
        words = inspect.cleandoc(self.help or "").split("\n\n")[0].split()
        for i, word in enumerate(words):
            if word.endswith("."):
                return " ".join(words[:i + 1])
        return " ".join(words)


class Group(click.Group):
    """A group (as `vocker` and `vocker image`) that prints its help to stdout and exits 0
    when given no command, as docker and git do; its commands and subgroups are of these classes."""

    command_class = Command
    group_class = type

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def get_short_help_str(self, limit: int = 45) -> str:
        return Command.get_short_help_str(self, limit)  # type: ignore[arg-type]


#: docker run's code for a failure of the tool itself, never the command's own.
RUN_FAILED = 125


class OwnFailure(Exception):
    """A failure of vocker itself in a command whose exit code is otherwise another program's
    (``run``, ``shell``): shown as usual, but exiting ``code``."""

    def __init__(self, cause: Exception, code: int) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.code = code


def own_failures_exit(code: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make every failure of vocker itself in the command exit ``code`` (docker run's 125), so
    it never collides with the exit codes of the command it runs. Not found (127) and not
    executable (126) keep theirs, as a shell's; bad usage caught by click stays 2."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            from ..errors import CommandNotRunError

            try:
                return fn(*args, **kwargs)
            except (CommandNotRunError, click.ClickException):
                raise
            except Exception as exc:
                raise OwnFailure(exc, code) from exc
        return run
    return wrap


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="vocker")
@with_store_options
def cli() -> None:
    """Reproducible Python environments as images in a content-addressed store.

    The store: .vocker/ in the current directory if it exists, else $VOCKER_HOME
    (default: the user data directory). --local/--global choose; 'vocker config' tells.
    """


@cli.group(cls=Group)
def image() -> None:
    """Create, list, inspect and remove images."""


@cli.group(cls=Group)
def container() -> None:
    """Manage containers (most commands are top-level: ps, create, rm, mount, run)."""


@cli.group(cls=Group)
def system() -> None:
    """Look after the store as a whole."""


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
