"""Read-ahead profiles, without a mount: what is noted, how it is stored, what is refused.
(The mount records and replays them in tests/test_containers.py.)"""

from __future__ import annotations

import os

import pytest

from vocker import cbor, readahead
from vocker.errors import FormatError
from vocker.readahead import CHUNK, Profile, Recorder


def test_recorder_notes_first_reads_in_order_and_only_what_is_new() -> None:
    rec = Recorder(Profile())
    rec.note(("lib", "b.py"), 0, 4096, 5000)
    rec.note(("lib", "big.so"), 3 * CHUNK, CHUNK, None)
    rec.note(("lib", "a.py"), 0, 100, 100)
    rec.note(("lib", "big.so"), 7 * CHUNK + 10, CHUNK, None)  # spans chunks 7 and 8
    assert list(rec.profile.files) == [("lib", "b.py"), ("lib", "big.so"), ("lib", "a.py")]
    assert rec.profile.files[("lib", "big.so")] == {3, 7, 8}
    assert rec.profile.files[("lib", "a.py")] is None
    assert rec.changed

    again = Recorder(Profile.from_bytes(rec.profile.to_bytes()))
    again.note(("lib", "b.py"), 4096, 4096, 5000)
    again.note(("lib", "big.so"), 8 * CHUNK, 100, None)
    assert not again.changed, "reads the profile covers (the read-ahead's own) must not change it"
    again.note(("lib", "big.so"), 20 * CHUNK, 100, None)
    assert again.changed and again.profile.files[("lib", "big.so")] == {3, 7, 8, 20}


def test_recorder_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "MAX_FILES", 3)
    rec = Recorder(Profile())
    for i in range(10):
        rec.note((f"f{i}",), 0, 1, 1)
    rec.note(("f0",), 0, 1, 1)
    assert list(rec.profile.files) == [("f0",), ("f1",), ("f2",)]
    monkeypatch.setattr(readahead, "MAX_BYTES", 3 * CHUNK)
    rec = Recorder(Profile())
    rec.note(("small",), 0, 100, CHUNK)
    for c in range(10):
        rec.note(("big",), c * CHUNK, 1, None)
    rec.note(("late",), 0, 1, 1)
    assert rec.profile.files == {("small",): None, ("big",): {0, 1}}


def test_plan_reads_runs_of_adjacent_chunks_in_first_read_order() -> None:
    profile = Profile({("z",): None, ("a", "big"): {9, 2, 3, 4}})
    assert profile.plan() == [(("z",), None), (("a", "big"), [(2 * CHUNK, 5 * CHUNK), (9 * CHUNK, 10 * CHUNK)])]
    assert Profile.from_bytes(profile.to_bytes()) == profile


@pytest.mark.parametrize("entry", [
    ["../etc/passwd", None], ["/etc/passwd", None], ["a//b", None], ["a/\0", None], [".", None],
    ["a", [True]], ["a", [-1]], ["a", ["1"]], ["a", {}], [7, None], ["a"],
])
def test_profiles_that_could_escape_the_mount_or_are_malformed_are_refused(entry: list) -> None:
    with pytest.raises(FormatError):
        Profile.from_bytes(cbor.dumps([["ok", None], entry]))
    with pytest.raises(FormatError):
        Profile.from_bytes(b"\xff not cbor")


def test_read_ahead_reads_the_plan_skips_what_is_gone_and_stops_when_told(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "big").write_bytes(b"y" * (3 * CHUNK))
    os.mkfifo(tmp_path / "fifo")  # no writer: a blocking open would never return
    plan = Profile({("a",): None, ("gone",): None, ("fifo",): None, ("big",): {1, 2}}).plan()
    files, size, _ = readahead.read_ahead(str(tmp_path), plan, lambda: False)
    assert (files, size) == (2, 1000 + 2 * CHUNK)  # and it returned: the FIFO is skipped
    assert readahead.read_ahead(str(tmp_path), plan, lambda: True)[:2] == (0, 0)
