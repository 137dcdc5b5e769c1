"""Start an interactive shell with an environment active *after* the user's start-up files.

An environment set only in the shell's inherited variables loses to a ``~/.bashrc`` or
``~/.zshrc`` that puts another Python first on PATH (pyenv, conda init). So the shell
is started with a start-up file of ours that runs the user's own first and then
activates the environment: its ``bin`` first on PATH, its name in the prompt, and
``python``/``pip`` names the environment lacks answered by one error line instead of
silently running the host's (an explicit path still runs anything).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

#: Names that must not silently resolve outside the environment.
GUARDED = ("python", "python3", "pip", "pip3")


def missing_names(root: Path) -> list[str]:
    """The guarded names the environment's ``bin`` does not have."""
    return [n for n in GUARDED if not os.access(root / "bin" / n, os.X_OK)]


def refusal(name: str, prompt: str) -> str:
    """The one line for a guarded name missing from the environment (run and shell say the same)."""
    return (f"vocker: error: {name} is not in the environment {prompt}; not running one from outside it "
            f"(give its full path to do that)")


def interactive(shell: str, root: Path, prompt: str, rcdir: Path) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment variables for an interactive ``shell`` in which the
    environment at ``root`` wins; start-up files go into ``rcdir`` (the caller removes it).
    A shell this does not know is started as it is, with only the inherited variables."""
    kind = os.path.basename(shell)
    missing = missing_names(root)
    if kind == "fish":
        lines = [f"set -gx VIRTUAL_ENV {_q(root)}", f"set -gx VIRTUAL_ENV_PROMPT {_q(f'({prompt}) ')}",
                 f"set -gx PATH {_q(root / 'bin')} $PATH",
                 "functions -c fish_prompt _vocker_fish_prompt 2>/dev/null",
                 "function fish_prompt; printf '%s' $VIRTUAL_ENV_PROMPT; _vocker_fish_prompt; end"]
        lines += [f"function {n}; echo {_q(refusal(n, prompt))} >&2; return 127; end" for n in missing]
        return [shell, "-i", "--init-command", "; ".join(lines)], {}
    activate = "\n".join([
        f"VIRTUAL_ENV={_q(root)}; export VIRTUAL_ENV",
        f"VIRTUAL_ENV_PROMPT={_q(f'({prompt}) ')}; export VIRTUAL_ENV_PROMPT",
        f"PATH={_q(root / 'bin')}:\"$PATH\"; export PATH",
        'PS1="$VIRTUAL_ENV_PROMPT${PS1-}"',
        "hash -r 2>/dev/null",
        *(f"{n}() {{ echo {_q(refusal(n, prompt))} >&2; return 127; }}" for n in missing),
    ]) + "\n"
    if kind == "bash":
        rc = rcdir / "bashrc"
        rc.write_text('[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"\n' + activate, encoding="utf-8")
        return [shell, "--rcfile", str(rc), "-i"], {}
    if kind == "zsh":
        # zsh reads $ZDOTDIR/.zshenv and .zshrc: ours run the user's (from their ZDOTDIR) first.
        user = os.environ.get("ZDOTDIR") or os.path.expanduser("~")
        (rcdir / ".zshenv").write_text(
            f"ZDOTDIR={_q(user)}\n[[ -f \"$ZDOTDIR/.zshenv\" ]] && source \"$ZDOTDIR/.zshenv\"\n"
            f"_vocker_user_zdotdir=$ZDOTDIR\nZDOTDIR={_q(rcdir)}\n", encoding="utf-8")
        (rcdir / ".zshrc").write_text(
            "ZDOTDIR=$_vocker_user_zdotdir\nunset _vocker_user_zdotdir\n"
            "[[ -f \"$ZDOTDIR/.zshrc\" ]] && source \"$ZDOTDIR/.zshrc\"\n" + activate, encoding="utf-8")
        return [shell, "-i"], {"ZDOTDIR": str(rcdir)}
    if kind in ("sh", "dash", "ash", "ksh", "mksh"):
        rc = rcdir / "shrc"  # POSIX: an interactive sh reads the file $ENV names
        user_env = os.environ.get("ENV")
        rc.write_text((f'. {_q(user_env)}\n' if user_env and os.path.isfile(user_env) else "") + activate,
                      encoding="utf-8")
        return [shell, "-i"], {"ENV": str(rc)}
    return [shell], {}


def _q(value: object) -> str:
    return shlex.quote(str(value))
