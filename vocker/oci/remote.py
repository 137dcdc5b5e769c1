"""What every place images travel to or from offers: blobs by digest, manifests by tag.

Implemented by a registry (registry.py), an image layout directory (layout.py) and a static
web server holding a layout (static.py). Whatever answers, the caller checks every byte
against a digest before use (``fetch_blob``), retrying a transfer that came back wrong.
"""

from __future__ import annotations

import time
from typing import Protocol

from ..digest import digest_bytes
from ..errors import IntegrityError, VockerError

#: A transfer that failed (connection lost, wrong bytes) is tried this many times in all.
ATTEMPTS = 3


class TransferError(VockerError):
    """The remote side failed (refused, unreachable, gone); worth retrying when ``transient``."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Remote(Protocol):
    name: str  # for messages: where this is

    def has_blob(self, digest: str) -> bool: ...

    def get_blob(self, digest: str) -> bytes: ...

    def get_range(self, digest: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a blob: one Range request, or a full GET sliced when Range is ignored."""

    def put_blob(self, digest: str, data: bytes) -> None: ...

    def mount_blob(self, digest: str) -> bool:
        """Make a blob present without sending it (a registry's cross-repository mount); False if not."""

    def get_manifest(self, ref: str) -> bytes: ...

    def put_manifest(self, tag: str, data: bytes, media_type: str) -> None: ...

    def tags(self) -> list[str]: ...


def retrying(what: str, fn, attempts: int = ATTEMPTS):  # type: ignore[no-untyped-def]
    """Call ``fn`` until it succeeds, retrying wrong bytes and transient failures with a short backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except (IntegrityError, TransferError) as exc:
            if isinstance(exc, TransferError) and not exc.transient or attempt == attempts - 1:
                if isinstance(exc, IntegrityError):
                    raise IntegrityError(f"{exc} ({what}, after {attempts} attempts)") from None
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError


def fetch_blob(remote: Remote, digest: str, size: int | None = None) -> bytes:
    """A blob's bytes, checked against its digest (and size): retried when wrong, never returned wrong."""
    def get() -> bytes:
        data = remote.get_blob(digest)
        if (size is not None and len(data) != size) or digest_bytes(data) != digest:
            raise IntegrityError(f"blob {digest} from {remote.name} does not match its digest")
        return data

    return retrying(f"blob {digest}", get)
