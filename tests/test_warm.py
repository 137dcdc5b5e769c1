"""Warm mounts (issue 16): `vocker run` and the Python API reuse a kept mount, pristine each time.

Warm mounts are off in the suite (conftest); these tests turn them on with VOCKER_WARM_IDLE
and, as $XDG_RUNTIME_DIR is unset, they live under the test's store, where no_leftover_mounts
finds (and fails on) any mount, daemon or service left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import MOUNTS  # noqa: E402
from mounthelp import daemon_pids, mounted_under, pid_alive, query, snapshot, wait_for  # noqa: E402

pytestmark = MOUNTS

WARM = {"VOCKER_WARM_IDLE": "60"}
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = f"lib/{PY}/site-packages"


def service_pids(home: Path) -> list[int]:
    """The warm-mount service: its stdout is warm.log (a mount daemon it forks writes daemon.log)."""
    def log_of(pid: int) -> str:
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/{pid}/fd/1")
        return ""
    return [pid for pid in daemon_pids(home) if log_of(pid).endswith("/warm.log")]


@pytest.fixture
def img(vocker, make_venv, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An image ``img`` of a venv with alpha and gamma; warm mounts released at the end."""
    venv = make_venv(tmp_path / "venv", packages=("alpha==1.0", "gamma"))
    vocker("image", "import", venv, "-t", "img")
    yield vocker
    vocker("gc", env=WARM)  # releases the unused warm mounts; the service exits with its last one
    wait_for(lambda: not service_pids(vocker.home), timeout=5)


def run_py(vocker, code: str, check: bool = True):  # type: ignore[no-untyped-def]
    return vocker("run", "img", "--", "python", "-c", textwrap.dedent(code), env=WARM, check=check)


TREE = """
    import json, os, sys
    root = sys.prefix
    out = {}
    for d, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = [st.st_mode, st.st_size, st.st_mtime_ns]
    print(json.dumps({"root": root, "tree": out}))
"""


def test_warm_run_discards_writes_deletes_and_renames(img, vocker_home: Path) -> None:
    """A run that changes image files, directories and names (after reading them, so the kernel
    has their pages, entries and negative entries cached) leaves nothing for the next run."""
    import json

    first = json.loads(run_py(img, TREE).stdout)
    root = first["root"]
    assert root.startswith(str(vocker_home / "warm")), root
    changes = f"""
        import os, shutil, sys
        root = sys.prefix
        site = os.path.join(root, {SITE!r})
        for name in ("new.txt", "newdir"):  # looked up first: the kernel caches them as absent
            assert not os.path.exists(os.path.join(site, name))
        open(os.path.join(site, "alpha", "__init__.py")).read()  # pages cached, then changed
        with open(os.path.join(site, "alpha", "__init__.py"), "a") as f:
            f.write("CHANGED = True\\n")
        open(os.path.join(site, "new.txt"), "w").write("new")
        os.makedirs(os.path.join(site, "newdir", "sub"))
        open(os.path.join(site, "newdir", "sub", "f"), "w").write("f")
        os.unlink(os.path.join(site, "gamma", "data", "info.txt"))
        os.rename(os.path.join(site, "gamma", "sub", "mod1.py"), os.path.join(site, "gamma", "sub", "moved.py"))
        shutil.rmtree(os.path.join(site, "gamma", "sub"))
        os.mkdir(os.path.join(site, "gamma", "sub"))  # re-created: opaque
        os.chmod(os.path.join(root, "bin"), 0o700)
        os.rename(os.path.join(root, "pyvenv.cfg"), os.path.join(root, "renamed.cfg"))
        print(root)
    """
    assert run_py(img, changes).stdout.strip() == root  # the same mount
    second = json.loads(run_py(img, TREE).stdout)
    assert second["root"] == root
    assert second["tree"] == first["tree"]
    check = f"""
        import os, sys
        os.chdir(sys.prefix)
        sys.path.insert(0, {SITE!r})
        import alpha, gamma, gamma.sub.mod1
        assert not hasattr(alpha, "CHANGED")
        # names the last run made are gone from the kernel's cache too: made again, not "found"
        open(os.path.join({SITE!r}, "new.txt"), "w").write("again")
        os.mkdir(os.path.join({SITE!r}, "newdir"))
        print(gamma.info().splitlines()[0])
    """
    assert run_py(img, check).stdout.strip() == "gamma data file"


def test_warm_run_passes_exit_codes_and_errors(img) -> None:
    assert run_py(img, "import sys; sys.exit(3)", check=False).returncode == 3
    assert run_py(img, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", check=False).returncode == 143
    missing = img("run", "img", "--", "no-such-command-here", env=WARM, check=False)
    assert missing.returncode == 127
    assert missing.stderr.strip() == "vocker: error: cannot run no-such-command-here: No such file or directory"
    unknown = img("run", "nope", "--", "true", env=WARM, check=False)  # the full CLI tells it
    assert unknown.returncode != 0 and unknown.stderr.startswith("vocker: error: ")
    assert "Traceback" not in unknown.stderr
    assert len(mounted_under(img.home / "warm")) == 1
    assert unknown.returncode == 125  # vocker's own failure, never the command's code


def test_warm_run_without_dashes_names_the_prompt_and_refuses_a_host_pip(img) -> None:
    """`run IMAGE CMD` (no `--`) reaches the warm mount too, with the image's name as the prompt;
    a bare pip the image lacks is the CLI's one-line refusal, not the host's pip."""
    code = "import os, sys; print(sys.prefix); print(os.environ['VIRTUAL_ENV_PROMPT'])"
    prefix, prompt = img("run", "img", "python", "-c", code, env=WARM).stdout.splitlines()
    assert prefix.startswith(str(img.home / "warm")) and prompt == "(img) "
    refused = img("run", "img", "pip", "--version", env=WARM, check=False)
    assert refused.returncode == 127 and "pip is not in the environment" in refused.stderr, refused.stderr


def test_concurrent_runs_get_separate_mounts_and_ps_shows_them(img, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    slow = subprocess.Popen([str(img.exe), "run", "img", "--", "python", "-c",
                             f"import os, sys, time\nprint(sys.prefix, flush=True)\n"
                             f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)"],
                            env={**os.environ, "VOCKER_HOME": str(img.home), **WARM}, stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout is not None
        busy = slow.stdout.readline().strip()
        other = run_py(img, "import sys; print(sys.prefix)").stdout.strip()
        assert busy != other and {Path(busy).parent, Path(other).parent} == {img.home / "warm"}
    finally:
        flag.touch()
        slow.wait(timeout=60)
    assert "warm" not in img("ps").stdout
    listing = img("ps", "-a").stdout
    assert listing.count(" warm") == 2, listing
    img("image", "rm", "img", env=WARM)  # releases them first
    assert mounted_under(img.home) == []
    assert query(img.home, "SELECT COUNT(*) FROM mounts") == [(0,)]


def test_killed_service_leaves_nothing_ps_and_unmount_cannot_clear(img) -> None:
    root = run_py(img, "import sys; print(sys.prefix)").stdout.strip()
    (service,) = service_pids(img.home)
    os.kill(service, signal.SIGKILL)
    # its mount daemon notices its owner gone and unmounts itself
    assert wait_for(lambda: not mounted_under(img.home) and not daemon_pids(img.home), timeout=10)
    assert "stale" not in img("ps", "-a").stdout
    # both killed at once: a stale mount, which ps shows and unmount --force clears
    assert run_py(img, "import sys; print(sys.prefix)").stdout.strip() == root
    (service,) = service_pids(img.home)
    (daemon,) = [pid for pid in daemon_pids(img.home) if pid != service]
    os.kill(daemon, signal.SIGKILL)
    os.kill(service, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(daemon) and not pid_alive(service))
    assert "stale" in img("ps").stdout
    img("unmount", "--force", root)
    assert mounted_under(img.home) == []
    assert run_py(img, "import sys; print(sys.prefix)").stdout.strip() == root  # the place is free again


def test_python_api_reuses_a_pristine_warm_mount(img, monkeypatch: pytest.MonkeyPatch) -> None:
    import vocker

    monkeypatch.setenv("VOCKER_WARM_IDLE", "60")
    with vocker.mount("img", home=img.home) as first:
        (first / "written.txt").write_text("x")
        (first / "pyvenv.cfg").unlink()
    with vocker.mount("img", home=img.home) as second:
        assert second == first
        assert not (second / "written.txt").exists() and (second / "pyvenv.cfg").is_file()
    assert mounted_under(img.home) == [str(first)]


def test_warm_mounts_off(vocker, make_venv, tmp_path: Path) -> None:
    vocker("image", "import", make_venv(tmp_path / "venv"), "-t", "img")
    root = vocker("run", "img", "--", "python", "-c", "import sys; print(sys.prefix)",
                  env={"VOCKER_WARM_IDLE": "0"}).stdout.strip()
    assert not root.startswith(str(vocker.home))
    assert mounted_under(vocker.home) == [] and daemon_pids(vocker.home) == []
