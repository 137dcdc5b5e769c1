"""Shell completion through click's own mechanism: ``vocker completion SHELL`` prints the
script; the shell then runs ``vocker`` with ``_VOCKER_COMPLETE`` set to ask for words.

Commands and options complete from the CLI's definition; image and container arguments
from the store, read only (completing never creates a store) and silent on any error.
"""

from __future__ import annotations

from typing import Any

import click

from .common import cli

COMPLETE_VAR = "_VOCKER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def _store() -> Any:
    """The store in use, or None when there is none yet (completion must not make one)."""
    from ..home import resolve_home
    from ..store import Store

    root, _why = resolve_home()
    return Store.open() if (root / "vocker.db").exists() else None


def image_words() -> list[str]:
    """What an IMAGE argument may be: every tag, a name alone for its ``latest``, short IDs."""
    store = _store()
    if store is None:
        return []
    from ..digest import short

    words = []
    for record in store.images():
        for tag in record.tags:
            words += [tag.removesuffix(":latest"), tag] if tag.endswith(":latest") else [tag]
        words.append(short(record.id))
    return words


def container_words() -> list[str]:
    """Named containers (throw-away ones have generated names nobody types)."""
    store = _store()
    if store is None:
        return []
    from .. import containers

    return [c.name for c in containers.all_containers(store) if c.persistent]


def _completer(*sources: Any) -> Any:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        try:
            words = [w for source in sources for w in source()]
        except Exception:  # a damaged or locked store: no suggestions rather than a traceback in the shell
            return []
        return sorted({w for w in words if w.startswith(incomplete)})
    return complete


complete_images = _completer(image_words)
complete_containers = _completer(container_words)
complete_refs = _completer(image_words, container_words)


def complete(instruction: str) -> int:
    """Answer the shell's request (``bash_complete``, ``zsh_source``, ...)."""
    from click.shell_completion import shell_complete

    return shell_complete(cli, {}, "vocker", COMPLETE_VAR, instruction)


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    It completes commands, options, image names and tags, and container names. Load it
    from your shell's start-up file:

    \b
      bash:  eval "$(vocker completion bash)"      (in ~/.bashrc)
      zsh:   eval "$(vocker completion zsh)"       (in ~/.zshrc)
      fish:  vocker completion fish > ~/.config/fish/completions/vocker.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "vocker", COMPLETE_VAR).source())
