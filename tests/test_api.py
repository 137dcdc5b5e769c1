"""The Python API: images(), import_venv(), export(), build(), run(), mount(), in process,
with vocker.errors exceptions for what the CLI reports as one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MOUNTS

pytestmark = MOUNTS


@pytest.fixture
def offline(uv_env, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in uv_env.items():
        if key.startswith("UV_"):
            monkeypatch.setenv(key, value)


def test_the_api_does_what_the_cli_does(make_venv, vocker_home: Path, wheels_dir: Path, tmp_path: Path,
                                        offline, capfd: pytest.CaptureFixture[str]) -> None:
    import vocker
    from vocker.build import IndexOptions
    from vocker.errors import BuildError, NotFoundError, VockerError

    assert vocker.images(home=vocker_home) == []
    imported = vocker.import_venv(make_venv(tmp_path / "env"), "app", home=vocker_home)
    assert imported.new and imported.tag == "app:latest" and imported.editables == ()
    [image] = vocker.images(home=vocker_home)
    assert (image.id, image.tags, image.kind) == (imported.image_id, ("app:latest",), "venv")
    assert image.python is not None and image.python.startswith("cpython 3.")

    exported = vocker.export("app", tmp_path / "out", home=vocker_home)
    assert exported.image_id == imported.image_id
    out = subprocess.run([tmp_path / "out" / "bin" / "python", "-c", "import alpha; print(alpha.VALUE)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"

    index = IndexOptions(no_index=True, find_links=(str(wheels_dir),))
    built = vocker.build(["beta"], tag="tools", index=index, home=vocker_home, seed=False)
    assert not built.cached and built.image_id in {i.id for i in vocker.images(home=vocker_home)}
    assert vocker.build(["beta"], tag="tools", index=index, home=vocker_home, seed=False).cached

    capfd.readouterr()
    assert vocker.run("tools", ["python", "-c", "import beta, sys; print(beta.value()); sys.exit(3)"],
                      home=vocker_home) == 3
    assert capfd.readouterr().out.strip() == "20"
    with vocker.mount("app", home=vocker_home) as env:
        assert (env / "bin" / "python").exists()

    with pytest.raises(NotFoundError, match="no such image: nope"):
        vocker.export("nope", tmp_path / "none", home=vocker_home)
    with pytest.raises(BuildError, match="cannot resolve") as failed:
        vocker.build(["alpha==9.9"], index=index, home=vocker_home)
    assert "alpha" in failed.value.details  # the installer's whole output
    assert issubclass(BuildError, VockerError)
    with pytest.raises(BuildError, match="test failed"):
        vocker.build(["gamma"], tag="gated", test="exit 1", index=index, home=vocker_home, seed=False)
    assert "gated:latest" not in {t for i in vocker.images(home=vocker_home) for t in i.tags}


def test_import_vocker_stays_light() -> None:
    code = "import sys, vocker; print(sorted(m for m in sys.modules if m.startswith('vocker')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vocker']"
