"""Compiling sources into cached bytecode: many compiler processes, results in order,
progress while an export compiles, and a mount that compiles only what is imported."""

from __future__ import annotations

import contextlib
import marshal
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mounthelp import force_cleanup, query
from vocker import locking
from vocker.bytecode import Compiler, compile_sources, shipped_mtime
from vocker.digest import digest_bytes
from vocker.errors import VockerError
from vocker.imagelayer import COMPILE_MAX_BYTES


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


def test_a_kept_compiler_answers_in_order_and_survives_its_process_dying() -> None:
    compiler = Compiler(sys.executable)
    try:
        first = compiler([b"x = 1\n", b"def broken(:\n", b"y = [x for x in 'ab']\n"])
        assert first[1] is None
        assert [type(marshal.loads(b)).__name__ for b in (first[0], first[2])] == ["code", "code"]
        compiler._proc.kill()  # type: ignore[union-attr]
        compiler._proc.wait()  # type: ignore[union-attr]
        again = compiler([b"x = 1\n"])  # a new process, the same answer
        assert again == [first[0]]
        proc = compiler._proc
    finally:
        compiler.close()
    assert proc is not None and proc.poll() is not None  # closing ends the process


def test_a_source_the_compiler_dies_on_counts_as_not_compiling_but_a_broken_compiler_is_an_error(
        tmp_path: Path) -> None:
    fake = tmp_path / "python"  # a Python whose compile() dies on one source, mid-answer
    fake.write_text(f"#!{sys.executable}\nimport builtins, os, sys\nreal = builtins.compile\n"
                    "def compile(source, *args, **kwargs):\n"
                    "    if b'KILLS THE COMPILER' in source:\n        os._exit(3)\n"
                    "    return real(source, *args, **kwargs)\n"
                    "builtins.compile = compile\nexec(sys.argv[-1])\n")
    fake.chmod(0o755)
    compiler = Compiler(str(fake))
    try:
        good, bad, after = compiler([b"x = 1\n", b"# KILLS THE COMPILER\n", b"y = 2\n"])
        assert bad is None and good is not None and after is not None  # its neighbours still compile
    finally:
        compiler.close()
    for broken in ("/bin/false", str(tmp_path / "missing")):  # never answers; cannot start
        with pytest.raises(VockerError):  # not "does not compile": that would be recorded for good
            Compiler(broken)([b"x = 1\n"])


@pytest.fixture
def fresh_mount(make_venv, vocker, vocker_home: Path, tmp_path: Path):
    """An image nothing was ever compiled for; the mount point to use; always unmounted."""
    venv = make_venv(tmp_path / "env", packages=("alpha==1.0", "gamma==1.0"))
    alpha = next(venv.glob("lib/python*/site-packages/alpha"))
    alpha.joinpath("broken.py").write_text("def broken(:\n")
    alpha.joinpath("huge.py").write_text("VALUE = 1\n" * 120_000)  # over COMPILE_MAX_BYTES
    vocker("image", "import", venv, "-t", "fresh")
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs") == [(0,)]
    mnt = tmp_path / "mnt"
    try:
        yield venv, mnt
    finally:
        vocker("unmount", mnt, check=False)
        force_cleanup(tmp_path)


def _compiled(home: Path, venv: Path, package: str) -> set[bool]:
    """For each source of ``package``: whether the store has bytecode for it."""
    done = {row[0] for row in query(home, "SELECT source FROM pycs")}
    sources = (venv / "lib").glob(f"python*/site-packages/{package}/**/*.py")
    return {digest_bytes(p.read_bytes()) in done for p in sources}


def test_a_mount_compiles_only_what_is_imported_and_an_export_shows_its_compiling(
        fresh_mount, vocker, vocker_home: Path, tmp_path: Path) -> None:
    venv, mnt = fresh_mount
    env = {**os.environ, "VOCKER_HOME": str(vocker_home), "COLUMNS": "100", "TERM": "xterm"}
    code, shown = run_on_a_terminal([str(vocker.exe), "mount", "fresh", str(mnt)], env)
    assert code == 0 and "Mounted fresh" in shown and "Compiling" not in shown, shown
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs") == [(0,)]  # a first mount compiles nothing

    py = [str(mnt / "bin" / "python"), "-c", "import alpha, gamma; print(alpha.VALUE)"]
    writes = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    subprocess.run(py, check=True, capture_output=True, env=writes)  # a rejected pyc would be rewritten
    huge = next(venv.glob("lib/python*/site-packages/alpha/huge.py"))
    assert huge.stat().st_size > COMPILE_MAX_BYTES
    assert _compiled(vocker_home, venv, "alpha") == {True, False}
    assert digest_bytes(huge.read_bytes()) not in {r[0] for r in query(vocker_home, "SELECT source FROM pycs")}
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs WHERE NOT ok") == [(1,)]  # broken.py, recorded as such
    site = next(mnt.glob("lib/python*/site-packages"))
    assert sorted(os.listdir(site / "alpha" / "__pycache__")) == [f"__init__.{sys.implementation.cache_tag}.pyc"]
    assert subprocess.run([str(mnt / "bin" / "python"), "-c", "import alpha.huge as h; print(h.VALUE)"],
                          check=True, capture_output=True, text=True).stdout == "1\n"  # Python compiles it
    assert _compiled(vocker_home, venv, "gamma/sub") == {False}  # gamma.sub was not imported
    pycache = list((vocker_home / "containers").glob("*/upper/**/__pycache__/*.pyc"))
    assert pycache == [], pycache  # Python found the bytecode; it wrote none of its own

    code, shown = run_on_a_terminal([str(vocker.exe), "export", "fresh", str(tmp_path / "out")], env)
    assert code == 0 and "Compiling bytecode" in shown, shown  # the rest, for the export's pycs
    assert _compiled(vocker_home, venv, "gamma") == {True}


def test_a_mount_leaves_compiling_to_python_while_gc_holds_the_store(
        fresh_mount, vocker, vocker_home: Path) -> None:
    venv, mnt = fresh_mount
    vocker("mount", "fresh", mnt)
    with locking.exclusive(vocker_home / "store.lock"):  # as gc does: blobs it cannot see must not appear
        out = subprocess.run([str(mnt / "bin" / "python"), "-c", "import gamma.sub.mod1 as m; print(m.twice())"],
                             check=True, capture_output=True, text=True).stdout
    assert out == "2\n"
    assert _compiled(vocker_home, venv, "gamma") == {False}
    log = next((vocker_home / "containers").glob("*/daemon.log")).read_text()
    assert "not compiling bytecode for" in log and "while gc runs" in log, log
    # the same mount compiles once gc is done (mod1's pyc stays in the kernel's negative cache)
    subprocess.run([str(mnt / "bin" / "python"), "-c", "import gamma.sub.mod2"], check=True)
    assert _compiled(vocker_home, venv, "gamma/sub") == {True}


def test_a_busy_store_database_delays_an_import_through_a_mount_by_seconds_at_most(
        fresh_mount, vocker, vocker_home: Path) -> None:
    venv, mnt = fresh_mount
    vocker("mount", "fresh", mnt)
    with contextlib.closing(sqlite3.connect(vocker_home / "vocker.db", isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")  # another writer that does not finish
        try:
            started = time.monotonic()
            subprocess.run([str(mnt / "bin" / "python"), "-c", "import alpha"], check=True)
            took = time.monotonic() - started
        finally:
            db.execute("ROLLBACK")
    assert took < 30, took  # a hang check (the store's own wait for writers is 60 s), not a speed target
    log = next((vocker_home / "containers").glob("*/daemon.log")).read_text()
    assert "cannot compile or cache bytecode for" in log and "locked" in log, log
    assert _compiled(vocker_home, venv, "alpha") == {False}


def test_a_walk_of_a_fresh_mount_compiles_nothing_and_an_import_then_uses_served_bytecode(
        fresh_mount, vocker, vocker_home: Path) -> None:
    # find, an IDE indexer or du must not wait for bytecode nobody imports (a first `find` over a
    # 100-distribution image compiled 4,500 sources: 18 s instead of 0.1)
    venv, mnt = fresh_mount
    vocker("mount", "fresh", mnt)
    walked = subprocess.run(["find", str(mnt)], check=True, capture_output=True, text=True).stdout.splitlines()
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs") == [(0,)]
    tag = sys.implementation.cache_tag
    site = next(mnt.glob("lib/python*/site-packages"))
    gamma_pycs = [f"__init__.{tag}.pyc", f"big.{tag}.pyc"]
    assert sorted(os.listdir(site / "gamma" / "__pycache__")) == gamma_pycs  # listed, as export writes them
    assert f"{site}/gamma/__pycache__/__init__.{tag}.pyc" in walked
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs") == [(0,)]

    # a stat of a listed pyc compiles its directory: the size it tells is the bytes a read gives
    pyc = site / "gamma" / "__pycache__" / f"__init__.{tag}.pyc"
    assert pyc.stat().st_size == len(pyc.read_bytes()) > 16
    assert query(vocker_home, "SELECT COUNT(*) FROM pycs") == [(2,)]  # gamma/__init__.py and big.py, no more
    assert _compiled(vocker_home, venv, "gamma/sub") == {False} and _compiled(vocker_home, venv, "alpha") == {False}
    assert sorted(os.listdir(site / "gamma" / "__pycache__")) == gamma_pycs

    writes = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    subprocess.run([str(mnt / "bin" / "python"), "-c", "import alpha, gamma.sub.mod1"], check=True, env=writes)
    assert _compiled(vocker_home, venv, "alpha") == {True, False}  # compiled at import, huge.py left to Python
    assert _compiled(vocker_home, venv, "gamma/sub") == {True}
    # broken.py was listed before its directory was compiled; now it is known not to compile
    assert sorted(os.listdir(site / "alpha" / "__pycache__")) == [f"__init__.{tag}.pyc"]
    pycache = list((vocker_home / "containers").glob("*/upper/**/__pycache__/*.pyc"))
    assert pycache == [], pycache  # Python found the bytecode; it wrote none of its own
