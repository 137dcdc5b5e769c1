"""Unit tests of the pure core: tree nodes, manifests, templates, link checks."""

from __future__ import annotations

import cbor2
import pytest

from vocker import cbor, template, walk
from vocker.errors import FormatError
from vocker.manifest import Manifest, PythonFacts
from vocker.tree import Entry, Kind, Tree

DIGEST = "sha256:" + "ab" * 32
FACTS = PythonFacts("cpython", "3.11.7", "cpython-311", "a70d0d0a", "cpython-311-x86_64-linux-gnu",
                    "linux-x86_64", "lib/python3.11")


def sample_tree() -> Tree:
    return Tree.of([
        Entry("b.py", Kind.FILE, size=300, digest=DIGEST, executable=True),
        Entry("a.txt", Kind.FILE, size=3, inline=b"abc"),
        Entry("sub", Kind.DIR, digest=DIGEST),
        Entry("link", Kind.SYMLINK, target="sub/x"),
        Entry("script", Kind.FILE, size=3, inline=b"xyz", template=True),
    ])


def test_tree_roundtrip_and_order_independence() -> None:
    tree = sample_tree()
    assert Tree.decode(tree.encode()) == tree
    shuffled = Tree.of(reversed(tree.entries))
    assert shuffled.digest() == tree.digest()
    assert [e.name for e in tree.entries] == ["a.txt", "b.py", "link", "script", "sub"]


def test_tree_has_no_host_specific_fields() -> None:
    raw = cbor2.loads(sample_tree().encode())
    keys = {k for e in raw["e"] for k in e}
    assert keys <= {"n", "k", "s", "h", "c", "x", "t", "l"}


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\0b", "a\\b"])
def test_bad_names_are_rejected(name: str) -> None:
    node = cbor.dumps({"v": 1, "e": [{"n": name, "k": "f", "s": 1, "c": b"x"}]})
    with pytest.raises(FormatError):
        Tree.decode(node)


def test_duplicate_and_unsorted_entries_are_rejected() -> None:
    e = {"n": "a", "k": "f", "s": 1, "c": b"x"}
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [e, e]}))
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [{**e, "n": "b"}, e]}))


@pytest.mark.parametrize("data", [b"", b"\xa2\x61", b"\xff\x00", cbor2.dumps({"e": [], "v": 1})[:-1]])
def test_truncated_or_garbage_cbor_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        Tree.decode(data)


def test_non_canonical_cbor_is_rejected() -> None:
    # Same map, keys in non-canonical order: would give a second byte string for one tree.
    data = b"\xa2" + cbor2.dumps("v") + cbor2.dumps(1) + cbor2.dumps("e") + cbor2.dumps([])
    assert cbor2.loads(data) == {"v": 1, "e": []}
    with pytest.raises(FormatError, match="canonical"):
        Tree.decode(data)
    assert Tree.decode(data, check_canonical=False) == Tree(())  # store reads: the digest was checked


@pytest.mark.parametrize("name", ["..", "a/b", "a\0b", ""])
def test_store_reads_still_validate_names_and_fields(name: str) -> None:
    """Skipping the canonical check (store reads) keeps every other check."""
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [{"n": name, "k": "f", "s": 1, "c": b"x"}]}), check_canonical=False)
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [{"n": "a", "k": "d", "h": DIGEST, "s": 1}]}), check_canonical=False)
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [{"n": "a", "k": "q"}]}), check_canonical=False)


def test_inline_content_must_match_size() -> None:
    with pytest.raises(FormatError):
        Tree.decode(cbor.dumps({"v": 1, "e": [{"n": "a", "k": "f", "s": 5, "c": b"x"}]}))


def test_manifest_roundtrip_and_version() -> None:
    m = Manifest("venv", (DIGEST,), FACTS)
    assert Manifest.decode(m.encode()) == m
    raw = cbor2.loads(m.encode())
    raw["v"] = 99
    with pytest.raises(FormatError, match="version"):
        Manifest.decode(cbor.dumps(raw))
    with pytest.raises(FormatError):
        Manifest.decode(cbor.dumps({"v": 1, "kind": "tree", "layers": [DIGEST], "python": FACTS.to_cbor()}))


def test_template_render_plain_and_trampoline() -> None:
    parts = [template.SHEBANG, b"\nimport x\nROOT = '", template.VENV, b"'\n"]
    assert template.decode(template.encode(parts)) == parts
    short = template.render(parts, b"/opt/env")
    assert short == b"#!/opt/env/bin/python\nimport x\nROOT = '/opt/env'\n"
    long_root = b"/tmp/" + b"x" * 130
    rendered = template.render(parts, long_root)
    assert rendered.startswith(b"#!/bin/sh\n'''exec' ")
    spaced = template.render(parts, b"/tmp/with space")
    assert b"'/tmp/with space/bin/python'" in spaced
    assert template.render_placeholders(parts).startswith(b"{{vocker:shebang}}")


def test_template_rejects_unknown_variables() -> None:
    with pytest.raises(FormatError):
        template.decode(cbor.dumps({"v": 1, "p": [b"x", "home"]}))


@pytest.mark.parametrize("rel,target", [
    (("a",), "/etc"), (("a",), ".."), (("d", "a"), "../.."), (("d", "a"), "x/../../.."),
    (("d", "a"), "sub/../.."), (("a",), "..\\x"),
])
def test_escaping_links_are_refused(rel: tuple[str, ...], target: str) -> None:
    with pytest.raises(FormatError, match="unsafe symlink"):
        walk.check_link(rel, target)


@pytest.mark.parametrize("rel,target", [(("lib64",), "lib"), (("d", "a"), "../b"), (("d", "e", "a"), "../../x/y")])
def test_inside_links_are_allowed(rel: tuple[str, ...], target: str) -> None:
    walk.check_link(rel, target)
