"""Real servers on 127.0.0.1 for the sharing tests: Debian's docker-registry, nginx (honours
Range), python -m http.server (ignores Range). Each is a process of its own, stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import attrs

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answering(server: "Server", url: str) -> "Server":
    """``server`` once ``url`` answers; killed (never left behind) if it does not."""
    try:
        _wait_http(url, server.proc)
    except BaseException:
        server.kill()
        raise
    return server


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401, 404): up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server for {url} did not come up")


@attrs.define
class Server:
    proc: subprocess.Popen
    port: int
    root: Path  # its data (registry storage, served directory)
    stop_signal: int = signal.SIGTERM
    log: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL to its whole process group (each server runs in a session of its own): nginx's
        workers would outlive their master otherwise."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_registry(base: Path, port: int | None = None, auth: str = "") -> Server:
    """docker-registry with its storage in ``base/data`` (kept across restarts on the same ``base``)."""
    port = port or free_port()
    base.mkdir(parents=True, exist_ok=True)
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn, accesslog: {disabled: true}}\n"
        f"storage:\n  filesystem: {{rootdirectory: {base / 'data'}}}\n  delete: {{enabled: true}}\n"
        "  cache: {blobdescriptor: inmemory}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n" + auth)
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=open(base / "log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(proc, port, base / "data")
    return _answering(server, f"http://127.0.0.1:{port}/v2/")


def registry_blobs(server: Server) -> dict[str, int]:
    """digest -> size of every blob in a registry's storage."""
    root = server.root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in root.glob("*/*/data")} if root.exists() else {}


def start_nginx(base: Path, served: Path, extra: str = "") -> Server:
    port = free_port()
    base.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (base / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {base}/nginx.pid;\nerror_log {base}/error.log;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {base}/access.log;\n"
        f"  client_body_temp_path {base}/body; proxy_temp_path {base}/proxy; fastcgi_temp_path {base}/fcgi;\n"
        f"  uwsgi_temp_path {base}/uwsgi; scgi_temp_path {base}/scgi;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {served}; {extra} }}\n"
        "}\n")
    proc = subprocess.Popen([NGINX, "-c", str(base / "nginx.conf"), "-p", str(base), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(base / "stderr", "ab"),
                            start_new_session=True)
    server = Server(proc, port, served, signal.SIGQUIT, base / "access.log")
    return _answering(server, f"http://127.0.0.1:{port}/")


def start_http_server(served: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                             "--directory", str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = Server(proc, port, served)
    return _answering(server, f"http://127.0.0.1:{port}/")


class TokenServer:
    """A docker-style token service (the bearer-token flow) for a registry started with
    ``token_auth(...)``: checks Basic credentials, answers RS256 JWTs signed with openssl,
    carrying the signing certificate (``x5c``) that the registry trusts."""

    def __init__(self, base: Path, users: dict[str, str]) -> None:
        import base64
        import http.server
        import json
        import threading

        base.mkdir(parents=True, exist_ok=True)
        self.key, self.cert = base / "key.pem", base / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
                        "-out", self.cert, "-days", "2", "-subj", "/CN=vocker-test-token"], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True,
                             capture_output=True).stdout
        x5c = base64.b64encode(der).decode()
        self.port = free_port()
        self.requests: list[str] = []
        key, outer = self.key, self

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

            def do_GET(self) -> None:  # noqa: N802
                import urllib.parse

                outer.requests.append(self.path)
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                given = self.headers.get("Authorization", "")
                user = None
                if given.startswith("Basic "):
                    name, _, password = base64.b64decode(given[6:]).decode().partition(":")
                    if users.get(name) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                access = []
                for scope in query.get("scope", []):
                    kind, name, actions = scope.split(":")
                    allowed = [a for a in actions.split(",") if user is not None]  # anonymous: nothing
                    access.append({"type": kind, "name": name, "actions": allowed})
                now = int(time.time())
                header = b64(json.dumps({"typ": "JWT", "alg": "RS256", "x5c": [x5c]}).encode())
                claims = b64(json.dumps({"iss": "vocker-test", "sub": user or "", "aud": "vocker-registry",
                                         "exp": now + 300, "nbf": now - 10, "iat": now, "jti": str(now) + str(id(self)),
                                         "access": access}).encode())
                signed = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)],
                                        input=f"{header}.{claims}".encode(), capture_output=True, check=True).stdout
                body = json.dumps({"token": f"{header}.{claims}.{b64(signed)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth(self) -> str:
        """The ``auth:`` section of a registry config that trusts this service."""
        return ("auth:\n  token:\n"
                f"    realm: http://127.0.0.1:{self.port}/token\n    service: vocker-registry\n"
                f"    issuer: vocker-test\n    rootcertbundle: {self.cert}\n")

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    kill = stop
