"""Compiling sources into cached bytecode: many compiler processes, results in order,
and progress a user sees during the one slow step of a first mount."""

from __future__ import annotations

import marshal
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from vocker.bytecode import compile_sources, shipped_mtime


class RecordingReporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def begin(self, label: str, total: int) -> None:
        self.events.append(("begin", (label, total)))

    def advance(self, amount: int) -> None:
        self.events.append(("advance", amount))

    def end(self) -> None:
        self.events.append(("end", None))


def test_shipped_mtime_is_the_creation_time_but_always_a_past_second() -> None:
    # a pyc matches its source by whole-second mtime and size: an edit in the recorded second
    # that keeps the size would run stale bytecode, so the recorded second is never "now"
    assert shipped_mtime(1_000.7, now=5_000.2) == 1_000
    assert shipped_mtime(5_000.1, now=5_000.9) == 4_999  # created this very second
    assert shipped_mtime(9_000.0, now=5_000.9) == 4_999  # a clock that ran ahead


def test_compile_sources_keeps_order_across_many_processes_and_reports_every_byte() -> None:
    sources = [f"value = {i}\n".encode() for i in range(700)]
    sources[123] = b"def broken(:\n"  # does not compile: None in its place, the rest unaffected
    reporter = RecordingReporter()
    bodies = compile_sources(sys.executable, sources, jobs=2, reporter=reporter)
    assert len(bodies) == len(sources) and bodies[123] is None
    for i, body in enumerate(bodies):
        if i != 123:
            namespace: dict[str, object] = {}
            exec(marshal.loads(body), namespace)  # type: ignore[arg-type]
            assert namespace["value"] == i
    kinds = [k for k, _ in reporter.events]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert reporter.events[0][1] == ("Compiling bytecode", sum(map(len, sources)))
    advances = [v for k, v in reporter.events if k == "advance"]
    assert len(advances) > 2  # several compiler processes, so the bar moves
    assert sum(advances) == sum(map(len, sources))  # type: ignore[arg-type]


def run_on_a_terminal(cmd: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin/stdout/stderr; its exit code and all it printed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no output from {cmd} in {timeout} s")
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)


def test_first_mount_shows_bytecode_progress_on_a_terminal(make_venv, vocker, vocker_home: Path,
                                                            tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma==1.0"))
    vocker("image", "import", venv, "-t", "fresh")
    mnt = tmp_path / "mnt"
    env = {**os.environ, "VOCKER_HOME": str(vocker_home), "COLUMNS": "100", "TERM": "xterm"}
    try:
        code, shown = run_on_a_terminal([str(vocker.exe), "mount", "fresh", str(mnt)], env)
        assert code == 0, shown
        assert "Compiling bytecode" in shown and "Mounted fresh" in shown, shown
    finally:
        vocker("unmount", mnt, check=False)
    try:
        code, shown = run_on_a_terminal([str(vocker.exe), "mount", "fresh", str(mnt)], env)
        assert code == 0 and "Compiling bytecode" not in shown, shown  # compiled once per image
    finally:
        vocker("unmount", mnt, check=False)
