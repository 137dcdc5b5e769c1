"""Deriving images in one command, with real mounts: install/uninstall, build --from, run --with.

Wheels come from tests/wheelfactory.py (conftest's wheels_dir) and are installed offline.
conftest's ``no_leftover_mounts`` unmounts and kills whatever a failing test leaves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS  # noqa: E402

pytestmark = MOUNTS

PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"


@pytest.fixture
def base(make_venv, tmp_path: Path, vocker) -> str:
    venv = make_venv(tmp_path / "base-src", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", venv, "-t", "base")
    return "base"


def _id(vocker, ref: str) -> str:
    return json.loads(vocker("image", "inspect", ref).stdout)["id"]


def _offline(wheels_dir: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels_dir), "--offline"]


def _in(vocker, ref: str, code: str, **kw) -> str:
    return vocker("run", "--read-only", ref, "python", "-c", code, **kw).stdout.strip()


#: alpha's version as metadata, imports and a listing of distributions see it, and which test packages exist
VERSIONS = ("import importlib.metadata as m, alpha; "
            "print(m.version('alpha'), alpha.VALUE, [d.version for d in m.distributions() if d.name == 'alpha'], "
            "sorted(d.name for d in m.distributions() if d.name in ('alpha', 'beta', 'gamma')))")


def test_install_commits_one_layer_reproducibly(base, vocker, wheels_dir: Path, uv_env) -> None:
    proc = vocker("install", base, "alpha==2.0", "beta", "-t", "up", *_offline(wheels_dir), env=uv_env)
    assert "Derived up:latest from base (2 layers)" in proc.stdout
    assert _in(vocker, "up", VERSIONS) == "2.0 2 ['2.0'] ['alpha', 'beta', 'gamma']"
    assert _in(vocker, "base", VERSIONS) == "1.0 1 ['1.0'] ['alpha', 'gamma']"  # the base is untouched
    history = json.loads(vocker("image", "history", "up", "--format", "json").stdout)
    assert [h["created_by"] for h in history] == ["import", "install"]
    assert history[1]["message"] == "install alpha==2.0 beta"
    again = vocker("install", base, "alpha==2.0", "beta", "-t", "up2", *_offline(wheels_dir), env=uv_env)
    assert "Already in store" in again.stdout
    assert _id(vocker, "up") == _id(vocker, "up2")
    gone = vocker("uninstall", "up", "alpha", "-t", "down", env=uv_env)
    assert "(3 layers)" in gone.stdout
    assert _in(vocker, "down", "import importlib.util as u; print(u.find_spec('alpha'))") == "None"
    assert "- alpha 2.0" in vocker("image", "diff", "up", "down").stdout


def test_install_into_a_container_keeps_the_change(base, vocker, wheels_dir: Path, uv_env) -> None:
    vocker("create", base, "--name", "dev")
    vocker("install", "dev", "beta", "-t", "withbeta", *_offline(wheels_dir), env=uv_env)
    assert "A /" + SITE + "/beta.py" in vocker("diff", "dev").stdout
    assert _in(vocker, "withbeta", "import beta; print(beta.value())") == "10"


def test_install_bad_input_changes_nothing(base, vocker, wheels_dir: Path, uv_env, vocker_home: Path) -> None:
    before = vocker("images", "-q").stdout
    for args, says in ((["nosuch", "alpha"], "no such image"),
                       ([base, "nosuchpkg==9"], "cannot install nosuchpkg==9")):
        proc = vocker("install", *args, "-t", "x", *_offline(wheels_dir), env=uv_env, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("vocker: error: " ) and says in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert vocker("images", "-q").stdout == before
    assert vocker("ps", "-a", "-q").stdout.strip() == ""


def _with_env(wheels_dir: Path, uv_env: dict[str, str]) -> dict[str, str]:
    """run --with and the API take their index from pip's configuration: offline, the test wheels."""
    return {**uv_env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels_dir), "UV_OFFLINE": "1"}


def test_build_from_is_one_cached_layer(base, vocker, wheels_dir: Path, uv_env, tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("beta\n")
    args = ["build", "--from", base, "-r", req, "-t", "app", *_offline(wheels_dir)]
    first = vocker(*args, env=uv_env)
    assert "built: app:latest" in first.stdout and "installing" in first.stderr
    assert (tmp_path / "requirements.lock").is_file()
    assert _in(vocker, "app", VERSIONS) == "2.0 2 ['2.0'] ['alpha', 'beta', 'gamma']"  # beta's alpha>=1, locked alone
    history = json.loads(vocker("image", "history", "app", "--format", "json").stdout)
    assert [h["created_by"] for h in history] == ["import", "build"]
    second = vocker(*args, env=uv_env)
    assert "cached: nothing installed" in second.stdout and "installing" not in second.stderr
    assert _id(vocker, "app") == json.loads(vocker("image", "inspect", "app").stdout)["id"]
    # another base, the same addition: another key
    vocker("install", base, "alpha==2.0", "-t", "base3", *_offline(wheels_dir), env=uv_env)
    third = vocker("build", "--from", "base3", "-r", req, "-t", "app3", *_offline(wheels_dir), env=uv_env)
    assert "built: app3:latest" in third.stdout
    bad = vocker("build", "--from", base, "--python", "3", "-r", req, check=False)
    assert bad.returncode == 2 and "--python and --from" in bad.stderr


def test_run_with_twice_second_installs_nothing(base, vocker, wheels_dir: Path, uv_env) -> None:
    env = _with_env(wheels_dir, uv_env)
    code = (VERSIONS + "; import subprocess, sys, json; "
            "print(subprocess.run(['alpha-cli'], capture_output=True, text=True).stdout.strip()); "
            f"listed = json.loads(subprocess.run([{sys.executable!r}, '-m', 'pip', '--python', sys.executable, "
            "'list', '--format', 'json'], capture_output=True, text=True).stdout); "
            "print([p['version'] for p in listed if p['name'] == 'alpha'])")
    expected = "2.0 2 ['2.0'] ['alpha', 'gamma']\nalpha 2.0\n['2.0']"
    first = vocker("run", base, "--with", "alpha==2.0", "--", "python", "-c", code, env=env)
    assert first.stdout.strip() == expected
    assert "installing" in first.stderr
    images = vocker("images", "-q", "--no-trunc").stdout
    second = vocker("run", "--with", "alpha==2.0", base, "python", "-c", code, env=env)
    assert second.stdout.strip() == expected
    assert "installing" not in second.stderr  # the cached layer: nothing installed
    assert vocker("images", "-q", "--no-trunc").stdout == images
    plain = vocker("run", base, "python", "-c", VERSIONS, env=env)
    assert plain.stdout.strip() == "1.0 1 ['1.0'] ['alpha', 'gamma']"
    bad = vocker("run", base, "--with", "alpha==2.0", "python", "-c", "pass", env=env, check=False)
    assert bad.returncode == 2 and "needs '--'" in bad.stderr


def test_api_and_fixture_take_extra_layers(base, vocker_home: Path, wheels_dir: Path, uv_env,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    import vocker as api

    for key, value in _with_env(wheels_dir, uv_env).items():
        monkeypatch.setenv(key, value)
    seen = []
    for spec in ("alpha==1.0", "alpha==2.0"):
        with api.mount(base, home=vocker_home, with_=[spec]) as env:
            seen.append(subprocess.run([env / "bin" / "python", "-c", VERSIONS], capture_output=True, text=True,
                                       check=True).stdout.strip())
    assert seen == ["1.0 1 ['1.0'] ['alpha', 'gamma']", "2.0 2 ['2.0'] ['alpha', 'gamma']"]


def test_run_with_on_warm_mounts_and_a_remount_put_back(base, vocker, vocker_home: Path, wheels_dir: Path, uv_env,
                                                         tmp_path: Path) -> None:
    """With warm mounts on, run --with runs on a warm mount of the derived image; a warm mount a
    user remounted is back on its own image for the next user."""
    import os

    from mounthelp import wait_for
    from test_warm import service_pids

    import vocker as api

    env = {**_with_env(wheels_dir, uv_env), "VOCKER_WARM_IDLE": "60"}
    try:
        for _ in range(2):
            proc = vocker("run", base, "--with", "alpha==2.0", "--", "python", "-c", VERSIONS, env=env)
            assert proc.stdout.strip() == "2.0 2 ['2.0'] ['alpha', 'gamma']"
        assert "warm" in vocker("ps", "-a", env=env).stdout
        old = os.environ.copy()
        os.environ.update(env)
        try:
            vocker("install", base, "alpha==2.0", "-t", "up", *_offline(wheels_dir), env=env)
            with api.mount(base, home=vocker_home) as where:
                api.remount(where, "up", home=vocker_home)
                assert _python(where, VERSIONS) == "2.0 2 ['2.0'] ['alpha', 'gamma']"
            with api.mount(base, home=vocker_home) as again:
                assert again == where  # the same warm mount, back on base
                assert _python(again, VERSIONS) == "1.0 1 ['1.0'] ['alpha', 'gamma']"
        finally:
            os.environ.clear()
            os.environ.update(old)
    finally:
        vocker("gc", env=env)
        wait_for(lambda: not service_pids(vocker_home), timeout=5)


def _python(where: Path, code: str) -> str:
    import subprocess

    return subprocess.run([where / "bin" / "python", "-c", code], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout.strip()
