"""The command line as people and scripts use it: help, listings in a pipe and on a terminal,
JSON, exit codes, completion, run's arguments, the shell's activation, prune.

Tests that mount set TMPDIR to their tmp_path, so that `vocker run`'s temporary mount
points are under it and conftest's ``no_leftover_mounts`` finds (and clears) what a
failing test leaves.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS, _find_vocker_exe  # noqa: E402

LONG_TAG = "a-rather-long-repository-name/with/several/components:and-a-rather-long-tag-1.0"


def plain_tree(path: Path, seed: int) -> Path:
    """A small tree with one blob-sized file whose content depends on ``seed``."""
    (path / "pkg").mkdir(parents=True)
    (path / "pkg" / "data.bin").write_bytes(os.urandom(4000) + bytes([seed]))
    (path / "pkg" / "small.txt").write_text(f"tree {seed}\n")
    return path


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if "plain tree" not in line]
    assert len(lines) == 1 and lines[0].startswith("vocker: error: "), proc.stderr
    assert all(w in lines[0] for w in words), proc.stderr


def on_terminal(argv: list[str], env: dict[str, str], typed: bytes = b"", timeout: float = 60,
                columns: int = 80) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal of ``columns`` columns, typing ``typed``;
    its exit code and everything it wrote (the terminal's echo included)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        try:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    output = b""
    status = -1
    try:
        if typed:
            os.write(fd, typed)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child has gone and the terminal is closed
                    break
                if not data:
                    break
                output += data
            elif (reaped := os.waitpid(pid, os.WNOHANG)) != (0, 0):
                pid, status = 0, reaped[1]  # gone (with the terminal still open): keep its status
                break
    finally:
        os.close(fd)
        if pid:
            try:
                # the terminal can close before the command is done (vocker unmounts after its shell)
                until = time.monotonic() + 30
                while (reaped := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < until:
                    time.sleep(0.05)
                _, status = reaped
                if reaped == (0, 0):
                    os.kill(pid, 9)
                    _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
    return (os.waitstatus_to_exitcode(status) if status >= 0 else -1), output.decode("utf-8", "replace")


def needs_mounts(test):  # type: ignore[no-untyped-def]
    """conftest's MOUNTS for one test: skipped without FUSE, cleaned of mounts left under tmp_path."""
    for mark in MOUNTS:
        test = mark(test)
    return test


def terminal_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(VOCKER_HOME=str(home), TERM="xterm", **extra)
    return env


# --------------------------------------------------------------------------- help


def test_no_arguments_print_the_help_on_stdout_and_exit_0(vocker) -> None:
    for args in ((), ("image",), ("container",), ("system",)):
        proc = vocker(*args, check=False)
        assert (proc.returncode, proc.stderr) == (0, ""), (args, proc.returncode, proc.stderr)
        assert proc.stdout.startswith("Usage: vocker") and "Commands:" in proc.stdout, proc.stdout


def summaries(help_text: str) -> dict[str, str]:
    """The command -> summary list of a group's help, continuation lines joined."""
    found: dict[str, str] = {}
    last = None
    for line in help_text.split("Commands:", 1)[1].splitlines():
        m = re.match(r"  (\S+)\s+(.*)", line)
        if m and not line.startswith("    "):
            last = m.group(1)
            found[last] = m.group(2).strip()
        elif line.strip() and last:
            found[last] += " " + line.strip()
    return found


def test_help_lists_one_name_per_command_with_whole_one_line_summaries(vocker) -> None:
    for group in ((), ("image",)):
        help_text = vocker(*group, "--help", env={"COLUMNS": "80"}).stdout
        found = summaries(help_text)
        assert found, help_text
        for name, summary in found.items():
            assert not summary.endswith("...") and summary[-1] in ".?)", (name, summary)
    top = summaries(vocker("--help").stdout)
    assert "unmount" in top and "umount" not in top  # hidden, one name in the help...
    assert vocker("umount", "--help").stdout.startswith("Usage: vocker umount")  # ...the old one still works
    assert {"completion", "container", "system"} <= set(top)
    assert "prune" in summaries(vocker("image", "--help").stdout)


def test_help_on_a_terminal_keeps_whole_summaries(vocker_home: Path) -> None:
    exe = str(_find_vocker_exe())
    code, text = on_terminal([exe, "--help"], terminal_env(vocker_home), columns=80)
    assert code == 0 and "Commands:" in text, text
    assert "..." not in text.split("Commands:", 1)[1], text


# --------------------------------------------------------------------------- listings


def test_images_in_a_pipe_are_whole_rows_and_json_has_stable_keys(vocker, tmp_path: Path) -> None:
    vocker("image", "import", plain_tree(tmp_path / "one", 1), "-t", LONG_TAG)
    vocker("image", "import", plain_tree(tmp_path / "two", 2), "-t", "short:v2")
    vocker("tag", "short:v2", "short:latest")
    narrow = {"COLUMNS": "40"}  # a pipe is not a terminal: its width must not matter
    listed = vocker("images", env=narrow).stdout
    lines = listed.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "TAGS", "KIND", "PYTHON", "FILES", "SIZE", "CREATED"], listed
    assert len(lines) == 3 and LONG_TAG in listed and "…" not in listed, listed
    assert all(line == line.rstrip() and "\t" not in line for line in lines), repr(listed)
    assert any(line.split()[1] == "short:latest,short:v2" for line in lines[1:]), listed

    doc = json.loads(vocker("images", "--format", "json", env=narrow).stdout)
    assert [set(d) for d in doc] == [{"id", "tags", "kind", "python", "files", "size", "created", "partial"}] * 2
    by_tag = {t: d for d in doc for t in d["tags"]}
    assert by_tag["short:v2"]["tags"] == ["short:latest", "short:v2"] and by_tag[LONG_TAG]["kind"] == "tree"
    assert by_tag[LONG_TAG]["id"].startswith("sha256:") and len(by_tag[LONG_TAG]["id"]) == 71
    assert by_tag[LONG_TAG]["python"] is None and by_tag[LONG_TAG]["files"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", by_tag[LONG_TAG]["created"])

    short_id = by_tag["short:v2"]["id"]
    assert vocker("images", "-q", "short").stdout.split() == [short_id]  # NAME filters by repository
    assert vocker("images", "-q", "short:v2").stdout.split() == [short_id]
    assert vocker("images", "-q", "short:nope").stdout == ""
    assert vocker("image", "ls", "-q").stdout.split() == [d["id"] for d in doc]
    full = vocker("images", "--no-trunc", "short").stdout.splitlines()
    assert full[1].split()[0] == short_id, full
    assert vocker("images", "short").stdout.splitlines()[1].split()[0] == short_id.removeprefix("sha256:")[:12]


def test_ps_and_df_and_config_take_format_json(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "import", plain_tree(tmp_path / "one", 1), "-t", "one")
    vocker("create", "one", "--name", "devbox")
    assert json.loads(vocker("ps", "--format", "json").stdout) == []
    rows = json.loads(vocker("ps", "-a", "--format", "json").stdout)
    assert [set(r) for r in rows] == [{"container", "image", "image_id", "mountpoint", "pid", "status",
                                       "persistent"}]
    assert rows[0]["container"] == "devbox" and rows[0]["image"] == "one:latest" and rows[0]["pid"] is None
    assert rows[0]["status"] == "not mounted" and rows[0]["image_id"].startswith("sha256:")
    assert vocker("ps", "-a", "-q").stdout == "devbox\n"
    piped = vocker("ps", "-a", env={"COLUMNS": "30"}).stdout.splitlines()
    assert piped[0].split()[:2] == ["CONTAINER", "IMAGE"] and piped[1].split()[:4] == ["devbox", "one:latest", "-", "-"]
    assert all(line == line.rstrip() for line in piped)

    df = json.loads(vocker("df", "--format", "json").stdout)
    assert set(df) == {"store", "images", "files", "logical", "unique", "stored", "database", "bytecode_cache",
                       "reclaimable", "dedup_ratio", "compression_ratio"}
    assert df["images"] == 1 and df["files"] == 2 and df["store"] == str(vocker_home) and df["reclaimable"] == 0
    assert json.loads(vocker("config", "--format", "json").stdout) == {
        "store": str(vocker_home), "because": "$VOCKER_HOME", "exists": True}


def test_images_on_a_terminal_are_a_table(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "import", plain_tree(tmp_path / "one", 1), "-t", "one")
    code, text = on_terminal([str(_find_vocker_exe()), "images"], terminal_env(vocker_home), columns=120)
    assert code == 0 and "IMAGE ID" in text and "one:latest" in text, text
    code, text = on_terminal([str(_find_vocker_exe()), "images", "--format", "json"], terminal_env(vocker_home))
    assert code == 0 and json.loads(text)[0]["tags"] == ["one:latest"], text


# --------------------------------------------------------------------------- prune and df


def test_prune_deletes_untagged_images_and_says_what_it_freed(vocker, vocker_home: Path, tmp_path: Path) -> None:
    vocker("image", "import", plain_tree(tmp_path / "kept", 1), "-t", "kept")
    vocker("image", "import", plain_tree(tmp_path / "loose", 2))  # untagged, as a failed build --test leaves
    vocker("image", "import", plain_tree(tmp_path / "used", 3))
    used = [d for d in json.loads(vocker("images", "--format", "json").stdout) if d["files"] and not d["tags"]]
    vocker("create", used[-1]["id"], "--name", "holder")  # a container keeps its untagged image
    in_use = used[-1]["id"]
    before = json.loads(vocker("df", "--format", "json").stdout)
    assert before["reclaimable"] > 4000, before  # the loose image's blob
    assert "reclaimable" in vocker("df").stdout

    pruned = vocker("image", "prune").stdout
    assert re.fullmatch(r"Deleted 1 untagged image\(s\); freed \d+(\.\d)? k?B\n", pruned), pruned
    left = json.loads(vocker("images", "--format", "json").stdout)
    assert sorted(d["id"] == in_use or d["tags"] == ["kept:latest"] for d in left) == [True, True], left
    assert json.loads(vocker("df", "--format", "json").stdout)["reclaimable"] == 0
    assert vocker("system", "prune").stdout.startswith("Removed 0 throw-away container(s), 0 untagged image(s)")
    assert vocker("container", "prune").stdout.startswith("Removed 0 throw-away container(s)")
    assert vocker("verify").returncode == 0


# --------------------------------------------------------------------------- exit codes


def test_no_such_image_or_container_is_one_exit_code_everywhere(vocker, tmp_path: Path) -> None:
    for args in (("image", "inspect", "nope"), ("export", "nope", tmp_path / "dest"), ("tag", "nope", "other"),
                 ("image", "rm", "nope"), ("rm", "nope"), ("create", "nope", "--name", "c"),
                 ("mount", "nope", tmp_path / "mnt")):
        one_line_error(vocker(*args, check=False), 1, "no such")
    one_line_error(vocker("images", "--no-such-option", check=False), 2, "--no-such-option")
    one_line_error(vocker("run", "--no-such-option", "img", "true", check=False), 2)
    one_line_error(vocker("image", "import", tmp_path, "-t", "Bad Name", check=False), 2, "invalid image name")


# --------------------------------------------------------------------------- completion


def test_completion_scripts_and_words(vocker, vocker_home: Path, tmp_path: Path) -> None:
    bash = vocker("completion", "bash").stdout
    assert "_VOCKER_COMPLETE=bash_complete" in bash and "complete -o nosort -F _vocker_completion vocker" in bash
    assert vocker("completion", "zsh").stdout.startswith("#compdef vocker")
    assert "complete --no-files --command vocker" in vocker("completion", "fish").stdout
    one_line_error(vocker("completion", "tcsh", check=False), 2)

    def words(line: str) -> list[str]:
        typed = line.split(" ")
        proc = vocker(env={"_VOCKER_COMPLETE": "bash_complete", "COMP_WORDS": line,
                           "COMP_CWORD": str(len(typed) - 1)})
        return [w.split(",", 1)[1] for w in proc.stdout.splitlines() if w]

    assert words("vocker ") and "completion" in words("vocker ")  # nothing stored yet: still commands
    assert words("vocker run ") == []
    assert not (vocker_home / "vocker.db").exists()  # completing made no store
    vocker("image", "import", plain_tree(tmp_path / "t", 1), "-t", "app:v1")
    vocker("tag", "app:v1", "app")
    vocker("image", "import", plain_tree(tmp_path / "u", 2), "-t", "tools")
    vocker("create", "app", "--name", "devbox")
    assert words("vocker ru") == ["run"]
    assert words("vocker image i") == ["import", "inspect"]
    assert "--format" in words("vocker ps --")
    assert words("vocker run a") == ["app", "app:latest", "app:v1"]
    assert words("vocker rm ") == ["devbox"]
    assert {"app", "tools", "devbox"} <= set(words("vocker shell "))
    assert words("vocker image rm t") == ["tools", "tools:latest"]
    assert words("vocker export app:") == ["app:latest", "app:v1"]


# --------------------------------------------------------------------------- run and shell


@pytest.fixture
def env_image(make_venv, vocker, tmp_path: Path) -> str:
    """A venv without pip (as `vocker build` makes) imported as ``img``."""
    vocker("image", "import", make_venv(tmp_path / "env", packages=("alpha==1.0",)), "-t", "img")
    return "img"


def fake_tools(where: Path, marker: Path) -> Path:
    """A directory holding a ``python`` and a ``pip`` that are not the environment's."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("python", "pip"):
        (where / name).write_text(f"#!/bin/sh\necho FAKE-{name} \"$@\"\necho {name} >> {marker}\n")
        (where / name).chmod(0o755)
    return where


@needs_mounts
def test_run_passes_everything_after_the_image_to_the_command(env_image: str, vocker, tmp_path: Path) -> None:
    tmp = {"TMPDIR": str(tmp_path)}
    proc = vocker("run", env_image, "python", "-h", env=tmp)
    assert proc.stdout.startswith("usage: ") and "-c cmd" in proc.stdout, proc.stdout  # Python's help, not vocker's
    work = tmp_path / "work"
    work.mkdir()
    script = 'echo "$FOO|$KEPT|$(pwd)|$VIRTUAL_ENV_PROMPT|$(basename "$VIRTUAL_ENV")"'
    proc = vocker("run", "-e", "FOO=a=b", "-e", "KEPT", "-e", "UNSET_ONE", "-w", work, env_image, "sh", "-c", script,
                  env={**tmp, "KEPT": "kept"})
    assert proc.stdout == f"a=b|kept|{work}|(img) |img\n", proc.stdout
    proc = vocker("run", env_image, "--", "python", "-c", "import sys, alpha; print(sys.argv[1:])", "-x", env=tmp)
    assert proc.stdout == "['-x']\n"
    activated = vocker("run", env_image, "sh", "-c", '. "$VIRTUAL_ENV/bin/activate"; echo "$VIRTUAL_ENV_PROMPT"',
                       env=tmp).stdout
    assert activated.strip() in ("(img)", "img"), activated  # the activate script names the image too
    vocker("tag", env_image, "img:v1")
    proc = vocker("run", "img:v1", "sh", "-c", 'echo "$VIRTUAL_ENV_PROMPT"; command -v python', env=tmp)
    prompt, python = proc.stdout.splitlines()
    assert prompt == "(img:v1) " and python.endswith("/img-v1/bin/python"), proc.stdout  # PATH not split at ':'


@needs_mounts
def test_run_exit_codes_do_not_collide_with_the_command(env_image: str, vocker, tmp_path: Path) -> None:
    tmp = {"TMPDIR": str(tmp_path)}
    one_line_error(vocker("run", "nope", "true", check=False, env=tmp), 125, "no such image: nope")
    one_line_error(vocker("run", env_image, "no-such-command", check=False, env=tmp), 127)
    assert vocker("run", env_image, "sh", "-c", "exit 125", check=False, env=tmp).returncode == 125
    assert vocker("run", env_image, "sh", "-c", "exit 3", check=False, env=tmp).returncode == 3
    one_line_error(vocker("shell", "nope", check=False, env={**tmp, "SHELL": "/bin/sh"}), 125, "no such image")


@needs_mounts
def test_run_refuses_a_pip_from_outside_the_environment(env_image: str, vocker, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    fake = fake_tools(tmp_path / "fakebin", marker)
    env = {"TMPDIR": str(tmp_path), "PATH": f"{fake}:{os.environ['PATH']}"}
    proc = vocker("run", env_image, "pip", "install", "rich", check=False, env=env)
    one_line_error(proc, 127, "pip is not in the environment img")
    assert not marker.exists()
    assert vocker("run", env_image, "python", "-c", "import alpha", env=env).returncode == 0  # the image's own
    assert vocker("run", env_image, fake / "pip", "install", "rich", env=env).stdout == "FAKE-pip install rich\n"
    assert marker.read_text() == "pip\n"  # an explicit path still runs


#: Each shell's start-up file, written as pyenv/conda init write theirs: another python first on PATH.
HOSTILE_RC = {
    "bash": (".bashrc", 'export PATH="{fake}:$PATH"\nPS1="hostile$ "\n'),
    "zsh": (".zshrc", 'export PATH="{fake}:$PATH"\nPS1="hostile$ "\n'),
    "fish": (".config/fish/config.fish",
             'set -gx PATH "{fake}" $PATH\nfunction fish_prompt; printf "hostile\\$ "; end\n'),
}


@needs_mounts
@pytest.mark.parametrize("shell", sorted(HOSTILE_RC))
def test_shell_activation_wins_over_a_hostile_rc_file(shell: str, env_image: str, vocker_home: Path,
                                                      tmp_path: Path) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} is not installed (scripts/setup.sh installs it)")
    home = tmp_path / "home"
    marker = tmp_path / "ran"
    fake = fake_tools(home / "fakebin", marker)
    rc, text = HOSTILE_RC[shell]
    (home / rc).parent.mkdir(parents=True, exist_ok=True)
    (home / rc).write_text(text.format(fake=fake))
    env = terminal_env(vocker_home, HOME=str(home), SHELL=exe, TMPDIR=str(tmp_path))
    typed = (b"echo \"where=$(command -v python)\"\n"
             b"python -c 'import sys, alpha; print(\"prefix=\" + sys.prefix)'\n"
             b"pip install rich\n"
             b"exit 7\n")
    code, text = on_terminal([str(_find_vocker_exe()), "shell", env_image], env, typed)
    assert code == 7, text  # the shell's exit code
    where = re.search(r"where=(/\S+)", text)
    prefix = re.search(r"prefix=(/\S+)", text)
    assert where and prefix, text
    assert where.group(1) == f"{prefix.group(1)}/bin/python" and prefix.group(1).endswith("/img"), text
    assert "(img) hostile$ " in text, text  # the prompt shows the image, and the rc file still ran
    assert "pip is not in the environment img" in text and not marker.exists(), text


@needs_mounts
def test_container_prune_removes_what_a_killed_mount_left(env_image: str, vocker, tmp_path: Path) -> None:
    import signal

    vocker("create", env_image, "--name", "keep")
    vocker("mount", env_image, tmp_path / "mnt")
    (tmp_path / "mnt" / "written.bin").write_bytes(os.urandom(64 << 10))
    [row] = json.loads(vocker("ps", "--format", "json").stdout)
    assert row["persistent"] is False and row["status"] == "healthy", row
    os.kill(row["pid"], signal.SIGKILL)  # the daemon dies: a throw-away container nothing holds
    wait = time.monotonic() + 10
    while json.loads(vocker("ps", "--format", "json").stdout)[0]["status"] != "stale" and time.monotonic() < wait:
        time.sleep(0.1)
    pruned = vocker("container", "prune").stdout
    m = re.fullmatch(r"Removed 1 throw-away container\(s\), freed (\d+\.\d) kB\n", pruned)
    assert m and float(m.group(1)) >= 65, pruned  # its writable layer
    assert json.loads(vocker("ps", "-a", "--format", "json").stdout)[0]["container"] == "keep"  # named: kept
    assert len(json.loads(vocker("ps", "-a", "--format", "json").stdout)) == 1
    assert vocker("container", "prune").stdout.startswith("Removed 0 ")
