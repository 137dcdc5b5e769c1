"""A small HTTP client over the stdlib's http.client: kept-alive connections per thread,
redirects followed (credentials never sent to another host), bounded waits.

The stdlib is enough for what registries and static servers need (GET/HEAD/PUT/POST with
bodies of a few MiB); urllib opens a new connection per request, which costs a pack push
on a local registry more than the transfer.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import urllib.parse
from typing import Mapping

import attrs

from .remote import TransferError

#: Seconds a connection or a read may take before the request fails (and is retried).
TIMEOUT = float(os.environ.get("VOCKER_HTTP_TIMEOUT", "30"))
MAX_REDIRECTS = 5
#: Bodies larger than this are refused (a hostile server cannot fill memory).
BODY_MAX = 2 << 30


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Client:
    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ssl.create_default_context())
            elif scheme == "http":
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            else:
                raise TransferError(f"unsupported URL scheme {scheme!r}")
            conns[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes | None = None,
                auth: Mapping[str, str] | None = None, max_body: int = BODY_MAX) -> Response:
        """One request; ``auth`` headers go to the first host only (not to where it redirects)."""
        first = urllib.parse.urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            sent = dict(headers or {})
            if auth and parts.netloc == first:
                sent.update(auth)
            response = self._once(method, parts, sent, body, max_body)
            if response.status in (301, 302, 303, 307, 308) and response.header("location"):
                url = urllib.parse.urljoin(url, response.header("location"))
                if response.status == 303:
                    method, body = "GET", None
                continue
            return attrs.evolve(response, url=url)
        raise TransferError(f"too many redirects for {url}")

    def _once(self, method: str, parts: urllib.parse.SplitResult, headers: dict[str, str], body: bytes | None,
              max_body: int) -> Response:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        for attempt in range(2):  # a kept-alive connection the server closed is reopened once
            conn = self._conn(parts.scheme, parts.netloc)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                length = resp.getheader("content-length")
                if length is not None and length.isdigit() and int(length) > max_body:
                    self._drop(parts.scheme, parts.netloc)
                    raise TransferError(f"{parts.netloc} answered {length} bytes, more than {max_body}; refused")
                data = _read_body(resp, max_body)
                if data is None:
                    self._drop(parts.scheme, parts.netloc)
                    raise TransferError(f"{parts.netloc} answered more than {max_body} bytes; refused")
                if resp.will_close:
                    self._drop(parts.scheme, parts.netloc)
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                                urllib.parse.urlunsplit(parts))
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(parts.scheme, parts.netloc)
                if attempt == 0:
                    continue
                raise TransferError(f"{parts.netloc} closed the connection ({exc})", transient=True) from None
            except ssl.SSLError as exc:
                self._drop(parts.scheme, parts.netloc)
                raise TransferError(f"TLS with {parts.netloc} failed: {exc.reason or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.scheme, parts.netloc)
                if isinstance(exc, socket.timeout):
                    raise TransferError(f"{parts.netloc} did not answer within {self.timeout:g}s",
                                        transient=True) from None
                reason = getattr(exc, "strerror", None) or exc
                raise TransferError(f"cannot reach {parts.netloc}: {reason}", transient=True) from None
        raise AssertionError


def _read_body(resp: http.client.HTTPResponse, max_body: int) -> bytes | None:
    """The whole body (b"" for HEAD), or None past ``max_body``. Read whole when its length is
    known (``read(n)`` allocates n bytes up front), else in pieces."""
    if resp.length is not None:
        return resp.read()
    pieces, total = [], 0
    while piece := resp.read(1 << 20):
        pieces.append(piece)
        total += len(piece)
        if total > max_body:
            return None
    return b"".join(pieces)


def ranged(client: Client, url: str, start: int, end: int, auth: Mapping[str, str] | None = None) -> bytes:
    """Bytes [start, end) of a resource: one single-range GET (never multi-range: S3 and many
    CDNs refuse those); a server that ignores Range answers 200 with all of it: RangeIgnored."""
    return range_body(client.request("GET", url, range_header(start, end), auth=auth), url, start, end)


def range_header(start: int, end: int) -> dict[str, str]:
    return {"Range": f"bytes={start}-{end - 1}"}


def range_body(r: Response, url: str, start: int, end: int) -> bytes:
    """What a single-range GET answered: the range (206), RangeIgnored (200: the whole), or an error."""
    if r.status == 404:
        raise TransferError(f"{url} is missing on the server")
    if r.status == 206:
        if len(r.body) != end - start:
            raise TransferError(f"short range from {url}", transient=True)
        return r.body
    if r.status == 200:
        raise RangeIgnored(r.body)
    raise status_error(r, url)


class RangeIgnored(Exception):
    """The server answered a Range request with the whole resource (``body``): the caller checks
    it whole and takes every range it wants from it, rather than ask again for each."""

    def __init__(self, body: bytes) -> None:
        super().__init__("range ignored")
        self.body = body


def status_error(r: Response, what: str) -> TransferError:
    detail = r.body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    return TransferError(f"{what}: HTTP {r.status}{': ' + detail if detail else ''}", transient=r.status >= 500)
