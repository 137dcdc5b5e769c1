"""pytest plugin (registered through the ``pytest11`` entry point): mount images in tests.

    def test_app(vocker_mount):
        env = vocker_mount("myapp:latest")          # a pristine mount (a warm one: see vocker.warm)
        subprocess.run([env / "bin" / "python", "-c", "import myapp"], check=True)

Every mount made through the fixture is unmounted when the test ends, pass or fail;
if the test process is killed outright, the mount daemon notices and unmounts itself.
An image is mounted warm (unless VOCKER_WARM_IDLE=0): the test's changes are discarded at
its end and the next test reuses the mount, so 50 tests mounting one image pay one cold start.
Where FUSE is not available (no /dev/fuse access, no fusermount3), a test that asks for
a mount is skipped with the reason, and the session's header says so: a machine without
FUSE is a reason not to run those tests, not a failure of the code under test.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pytest


def pytest_report_header(config: pytest.Config) -> str | None:
    """One header line when FUSE is unavailable, so the skips below are explained up front."""
    from .fusecheck import problem

    why = problem()
    return f"vocker: {why}; tests using vocker_mount are skipped" if why else None


@pytest.fixture
def vocker_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    """Factory ``vocker_mount(ref, *, read_only=False, home=None, with_=()) -> Path``; ``with_``
    adds a cached layer installing those SPECs (``with_=["alpha==2.0"]``, as ``run --with``)."""
    from .api import mount
    from .fusecheck import problem
    from .runclient import idle_seconds

    stack = contextlib.ExitStack()

    def _mount(ref: str, *, read_only: bool = False, home: str | Path | None = None,
               with_: Iterable[str] = ()) -> Path:
        why = problem()
        if why:
            pytest.skip(f"vocker_mount: {why}")
        where = tmp_path_factory.mktemp("vocker-mount") if read_only or idle_seconds() <= 0 else None
        return stack.enter_context(mount(ref, where, read_only=read_only, home=home, with_=with_))

    with stack:
        yield _mount
