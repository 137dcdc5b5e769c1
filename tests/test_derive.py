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
