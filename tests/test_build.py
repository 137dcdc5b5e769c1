"""vocker build / lookup / audit: locks, the build cache, local stores (offline, real uv)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    return p


@pytest.fixture
def build(vocker, wheels_dir, uv_env, project):  # type: ignore[no-untyped-def]
    """vocker in the project directory, offline from the test wheels."""

    def run(*args, check=True, cwd=None):  # type: ignore[no-untyped-def]
        return vocker(*args, check=check, env=uv_env, cwd=cwd or project)

    run.index = ("--no-index", "--find-links", str(wheels_dir))  # type: ignore[attr-defined]
    return run


def one_error_line(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("vocker: error:"), proc.stderr
    return lines[-1]


def image_id(build, ref: str) -> str:  # type: ignore[no-untyped-def]
    return json.loads(build("image", "inspect", ref).stdout)["id"]


def test_build_pins_with_hashes_and_caches(build, project: Path) -> None:
    (project / "requirements.txt").write_text("beta\n")
    out = build("build", "-r", "requirements.txt", *build.index, "-t", "app").stdout
    assert "built" in out
    lock = (project / "requirements.lock").read_text()
    assert "beta==1.0" in lock and "alpha==2.0" in lock and lock.count("--hash=sha256:") >= 2
    assert build("run", "app", "--", "python", "-c", "import beta; print(beta.value())").stdout.strip() == "20"
    again = build("build", "-r", "requirements.txt", *build.index, "-t", "app").stdout
    assert "cached: nothing installed" in again and "lock: up to date" in again
    info = json.loads(build("image", "inspect", "app").stdout)
    assert info["build"]["lock"] == lock and info["build"]["python"]["platform"]


def test_cache_miss_when_a_pin_changes_hit_for_the_lock_itself(build, project: Path) -> None:
    (project / "requirements.txt").write_text("beta\n")
    build("build", "-r", "requirements.txt", *build.index, "-t", "latest-alpha")
    (project / "pinned.txt").write_text("alpha==1.0\nbeta\n")
    out = build("build", "-r", "pinned.txt", *build.index, "-t", "old-alpha").stdout
    assert "built" in out and "cached" not in out
    assert image_id(build, "latest-alpha") != image_id(build, "old-alpha")
    assert "alpha==1.0" in (project / "pinned.lock").read_text()
    # building from the lock itself: same pinned set, so the cache answers
    again = build("build", "-r", "pinned.lock", *build.index, "-t", "from-lock").stdout
    assert "cached: nothing installed" in again
    assert image_id(build, "from-lock") == image_id(build, "old-alpha")


def test_input_change_re_resolves_and_upgrade_forces_it(build, project: Path) -> None:
    req = project / "requirements.txt"
    req.write_text("alpha\n")
    build("build", "-r", "requirements.txt", *build.index, "--lock-only")
    assert "alpha==2.0" in (project / "requirements.lock").read_text()
    assert build("image", "ls", "-q").stdout.strip() == ""  # --lock-only builds nothing
    assert "up to date" in build("build", "-r", "requirements.txt", *build.index, "--lock-only").stdout
    assert "resolved" in build("build", "-r", "requirements.txt", *build.index, "--lock-only", "-U").stdout
    req.write_text("alpha<2\n")
    assert "resolved" in build("build", "-r", "requirements.txt", *build.index, "--lock-only").stdout
    assert "alpha==1.0" in (project / "requirements.lock").read_text()


def test_cache_miss_when_the_python_changes(build, project: Path) -> None:
    if not shutil.which("python3.12") and not list(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")):
        pytest.skip("no Python 3.12 on this machine")
    build("build", "alpha", *build.index, "-t", "py311")
    out = build("build", "alpha", *build.index, "--python", "3.12", "-t", "py312").stdout
    assert "built" in out and "cached" not in out
    assert image_id(build, "py311") != image_id(build, "py312")
    inspect = json.loads(build("image", "inspect", "py312").stdout)
    assert inspect["manifest"]["python"]["version"].startswith("3.12")
    lock = project / "alpha.lock"
    lock.write_text(inspect["build"]["lock"])
    assert image_id(build, "py312") in build("lookup", lock, "--python", "3.12").stdout
    assert image_id(build, "py311") in build("lookup", lock).stdout


def test_lookup_answers_no_for_an_unknown_lock(build, project: Path, wheels_dir: Path) -> None:
    (project / "requirements.txt").write_text("gamma\n")
    build("build", "-r", "requirements.txt", *build.index, "--lock-only")
    proc = build("lookup", "requirements.lock", check=False)
    assert proc.returncode == 1 and "no image" in proc.stdout
    build("build", "-r", "requirements.lock", *build.index, "-t", "g")
    assert image_id(build, "g") in build("lookup", "requirements.lock").stdout


def test_audit_match_and_mismatch(build, project: Path, vocker_home: Path, tmp_path: Path) -> None:
    build("build", "alpha==1.0", "gamma", *build.index, "-t", "app")
    ok = build("audit", "app")
    assert ok.stdout.startswith("OK: rebuilding gives the same image")
    # Someone publishes a modified image claiming the same lock: the audit must catch it.
    exported = tmp_path / "exported"
    build("export", "app", exported)
    init = exported / "lib" / "python3.11" / "site-packages" / "alpha" / "__init__.py"
    init.write_text(init.read_text() + "\nBACKDOOR = True\n")
    build("image", "import", exported, "-t", "fake")
    real, fake = image_id(build, "app"), image_id(build, "fake")
    with sqlite3.connect(vocker_home / "vocker.db") as db:
        key, lock, info = db.execute("SELECT key, lock, info FROM builds WHERE image_id = ?", (real,)).fetchone()
        db.execute("INSERT INTO builds VALUES (?, ?, ?, ?, ?)", ("sha256:" + "0" * 64, fake, lock, info, time.time()))
    proc = build("audit", "fake", check=False)
    assert proc.returncode == 1
    assert "MISMATCH" in proc.stdout and real in proc.stdout
    assert "lib/python3.11/site-packages/alpha/__init__.py: content differs" in proc.stdout


def test_audit_when_the_recorded_wheel_directory_is_gone(build, wheels_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "wheels-then"
    shutil.copytree(wheels_dir, moved)
    build("build", "alpha==1.0", "--no-index", "--find-links", moved, "-t", "app")
    shutil.rmtree(moved)
    message = one_error_line(build("audit", "app", check=False))
    assert str(moved) in message and "--find-links" in message
    assert build("audit", "app", *build.index).stdout.startswith("OK: rebuilding gives the same image")


def test_audit_of_an_imported_image_says_there_is_no_lock(build, make_venv, tmp_path: Path) -> None:
    build("image", "import", make_venv(tmp_path / "env"), "-t", "imported")
    assert "no build record" in one_error_line(build("audit", "imported", check=False))


def test_local_and_global_stores(build, vocker, project: Path, uv_env) -> None:
    assert "$VOCKER_HOME" in build("config").stdout
    build("build", "alpha", *build.index, "-t", "loc", "--local")
    assert (project / ".vocker" / "vocker.db").exists()
    config = build("config").stdout
    assert str(project / ".vocker") in config and ".vocker/ exists" in config
    assert "loc:latest" in build("image", "ls").stdout  # .vocker/ here wins without flags
    assert build("--global", "image", "ls", "-q").stdout.strip() == ""
    assert vocker("image", "ls", "-q", env=uv_env, cwd=project.parent).stdout.strip() == ""  # elsewhere: user store
    assert "--global" in build("--global", "config").stdout


def test_test_command_gates_the_tag(build, project: Path) -> None:
    good = build("build", "beta", *build.index, "-t", "tested", "--test", "python -c 'import beta; beta.value()'")
    assert "built" in good.stdout
    bad = build("build", "gamma", *build.index, "-t", "broken", "--test", "python -c 'raise SystemExit(3)'",
                check=False)
    assert "test failed (exit code 3)" in one_error_line(bad)
    tags = build("image", "ls").stdout
    assert "tested:latest" in tags and "broken" not in tags


@pytest.mark.parametrize("args, message", [
    (("alpha==9.9",), "cannot resolve"),
    (("alpha", "--python", "3.99"), "Python 3.99 is not installed"),
    (("-r", "missing.txt"), "no such file"),
])
def test_bad_build_input(build, args, message: str) -> None:
    line = one_error_line(build("build", *args, *build.index, "-t", "x", check=False))
    assert message in line
    assert build("image", "ls", "-q").stdout.strip() == ""


def test_unreachable_index_is_one_clear_error(build) -> None:
    proc = build("build", "alpha", "--index-url", "http://127.0.0.1:9/simple", "-t", "x", check=False)
    assert "cannot resolve" in one_error_line(proc)
    assert build("image", "ls", "-q").stdout.strip() == ""


def test_corrupt_lock_is_one_clear_error(build, project: Path) -> None:
    (project / "bad.lock").write_text("alpha==1.0 \\\n    --hash=md5:abc\n")
    assert "unsupported hash" in one_error_line(build("lookup", "bad.lock", check=False))
    (project / "half.lock").write_text("alpha>=1\n")
    assert "not pinned with hashes" in one_error_line(build("lookup", "half.lock", check=False))


def test_pip_fallback_builds_and_audits(build, vocker, uv_env, project: Path) -> None:
    env = dict(uv_env, VOCKER_INSTALLER="pip")
    out = vocker("build", "beta", *build.index, "-t", "viapip", env=env, cwd=project).stdout
    assert "built" in out
    info = json.loads(build("image", "inspect", "viapip").stdout)["build"]
    assert info["options"]["installer"] == "pip" and "beta==1.0" in info["lock"] and "--hash=sha256:" in info["lock"]
    again = vocker("build", "beta", *build.index, "-t", "viapip", env=env, cwd=project).stdout
    assert "cached: nothing installed" in again
    assert build("audit", "viapip").stdout.startswith("OK")
    assert build("run", "viapip", "--", "python", "-c", "import beta; print(beta.value())").stdout.strip() == "20"


def test_the_test_gates_a_cache_hit_too_and_a_failed_build_leaves_no_image(build) -> None:
    build("build", "beta", *build.index, "-t", "untested")
    hit = build("build", "beta", *build.index, "-t", "gated", "--test", "exit 3", check=False)
    assert "test failed (exit code 3)" in one_error_line(hit)
    assert "testing: exit 3" in hit.stderr
    assert "gated" not in build("image", "ls").stdout  # a test gate a cached image could skip is no gate
    assert "cached: nothing installed: gated:latest" in build("build", "beta", *build.index, "-t", "gated",
                                                             "--test", "true").stdout
    before = set(build("image", "ls", "-q").stdout.split())
    failed = build("build", "gamma", *build.index, "-t", "broken", "--test", "exit 4", check=False)
    assert "test failed (exit code 4)" in one_error_line(failed)
    assert set(build("image", "ls", "-q").stdout.split()) == before  # the new image went again
    assert "built" in build("build", "gamma", *build.index, "-t", "fixed").stdout  # and is no cache hit


def test_each_input_has_its_own_lock(build, project: Path) -> None:
    (project / "requirements.txt").write_text("alpha<2\n")
    (project / "pyproject.toml").write_text('[project]\nname = "app"\nversion = "0.1"\ndependencies = ["beta"]\n')
    build("build", "-r", "requirements.txt", *build.index, "--lock-only")
    proc = build("build", "-r", "pyproject.toml", *build.index, "--lock-only")
    assert "the project itself is not installed" in proc.stderr  # said, not silently left out
    assert "alpha==1.0" in (project / "requirements.lock").read_text()
    assert "beta==1.0" not in (project / "requirements.lock").read_text()
    assert "beta==1.0" in (project / "pyproject.toml.lock").read_text()
    assert "up to date" in build("build", "-r", "requirements.txt", *build.index, "--lock-only").stdout
    # an input whose default lock is another input's: refused, not overwritten
    (project / "requirements").write_text("gamma\n")
    (project / "requirements.lock").rename(project / "requirements.txt.lock")
    (project / "other.txt").write_text("gamma\n")
    build("build", "-r", "other.txt", *build.index, "--lock-only")
    (project / "other").write_text("alpha\n")
    (project / "other.lock").rename(project / "other.lock.keep")
    (project / "other.lock.keep").rename(project / "other.lock")
    line = one_error_line(build("build", "-r", "other", *build.index, "--lock-only", check=False))
    assert "other.lock holds the lock of other.txt" in line and "--lock" in line


def test_local_wheels_file_urls_and_urls_are_pinned_by_hash(build, project: Path, wheels_dir: Path) -> None:
    import http.server
    import threading
    from functools import partial

    dist = project / "dist"
    dist.mkdir()
    shutil.copy(wheels_dir / "alpha-1.0-py3-none-any.whl", dist)
    (project / "requirements.txt").write_text(
        f"./dist/alpha-1.0-py3-none-any.whl\nbeta @ {(wheels_dir / 'beta-1.0-py3-none-any.whl').as_uri()}\n")
    build("build", "-r", "requirements.txt", "--no-index", "-t", "local")
    lock = (project / "requirements.lock").read_text()
    assert f"alpha @ {(dist / 'alpha-1.0-py3-none-any.whl').as_uri()}" in lock  # absolute: the lock is used elsewhere
    assert f"beta @ {(wheels_dir / 'beta-1.0-py3-none-any.whl').as_uri()}" in lock
    assert lock.count("--hash=sha256:") == 2
    code = "import alpha, beta; print(alpha.VALUE, beta.value())"
    assert build("run", "local", "--", "python", "-c", code).stdout.split() == ["1", "10"]

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(wheels_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/gamma-1.0-py3-none-any.whl"
        build("build", f"gamma @ {url}", "--no-index", "-t", "remote")
    finally:
        server.shutdown()
        server.server_close()
    info = json.loads(build("image", "inspect", "remote").stdout)["build"]
    assert f"gamma @ {url}" in info["lock"] and "--hash=sha256:" in info["lock"]
    # the same wheel by hash, from the index: another pin (the URL is recorded in the image), another key
    assert "built" in build("build", "gamma", *build.index, "-t", "indexed").stdout


def test_the_installers_whole_error_reaches_the_user_and_steps_are_shown(build, project: Path) -> None:
    good = build("build", "alpha==1.0", "beta", *build.index, "--lock-only", "--lock", "good.lock")
    assert "resolving the requirements from the command line with uv" in good.stderr
    lock = (project / "good.lock").read_text()
    right = lock.split("--hash=sha256:")[1][:64]
    (project / "bad.lock").write_text(lock.replace(right, "0" * 64))
    proc = build("build", "-r", "bad.lock", *build.index, "-t", "x", check=False)
    assert "cannot install the lock: Failed to download" in one_error_line(proc)
    assert "installing 2 locked distributions" in proc.stderr
    # uv's whole message, down to its last line (the hash it computed), not its first three lines
    assert "Expected:" in proc.stderr and "Computed:" in proc.stderr and f"sha256:{right}" in proc.stderr


def test_pip_is_seeded_unless_no_seed(build, tmp_path: Path) -> None:
    build("build", "alpha", *build.index, "-t", "seeded")
    where = build("run", "seeded", "--", "sh", "-c", 'command -v pip; python -m pip --version; echo "$VIRTUAL_ENV"')
    pip_path, version, venv = where.stdout.strip().splitlines()
    assert pip_path == f"{venv}/bin/pip" and f"{venv}/lib/" in version  # its own pip, not the host's
    build("build", "alpha", *build.index, "-t", "bare", "--no-seed")
    assert image_id(build, "bare") != image_id(build, "seeded")  # --no-seed is part of the cache key
    assert json.loads(build("image", "inspect", "bare").stdout)["build"]["options"]["seed"] == "none"
    build("export", "bare", tmp_path / "bare")
    assert not list((tmp_path / "bare").glob("lib/python*/site-packages/pip"))
    assert "cached" in build("build", "alpha", *build.index, "-t", "bare", "--no-seed").stdout
    assert "cached" in build("build", "alpha", *build.index, "-t", "seeded").stdout


def test_interpreters_are_found_by_uv(vocker, uv_env, wheels_dir: Path, project: Path, tmp_path: Path) -> None:
    """A Python only uv's search finds: on PATH as plain `python3`, with no pythonX.Y name and no pyenv tree."""
    import sys

    mine = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    others = sorted((p for p in Path.home().glob(".pyenv/versions/3.*/bin/python3.*")
                     if p.name.removeprefix("python3.").isdigit() and p.name != mine),
                    key=lambda p: int(p.name.removeprefix("python3.")))
    if not others:
        pytest.skip("no second CPython 3.x on this machine")
    other = others[-1]
    bindir = tmp_path / "elsewhere"
    bindir.mkdir()
    (bindir / "python3").symlink_to(other)
    minor = other.name.removeprefix("python")
    env = dict(uv_env, PATH=f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin", HOME=str(tmp_path / "home"))
    vocker("build", "alpha", "--no-index", "--find-links", wheels_dir, "--python", minor, "--lock-only",
           "--lock", "x.lock", env=env, cwd=project)
    assert f"python=cpython-{minor}." in (project / "x.lock").read_text().splitlines()[0]
