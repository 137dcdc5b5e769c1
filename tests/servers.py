"""Real servers on 127.0.0.1 for the sharing tests: Debian's docker-registry, nginx (honours
Range), python -m http.server (ignores Range). Each is a process of its own, stopped by its PID."""

from __future__ import annotations

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
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
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
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=open(base / "log", "ab"), stderr=subprocess.STDOUT)
    server = Server(proc, port, base / "data")
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/", proc)
    except BaseException:
        server.kill()
        raise
    return server


def registry_blobs(server: Server) -> dict[str, int]:
    """digest -> size of every blob in a registry's storage."""
    root = server.root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{p.parent.name}": p.stat().st_size for p in root.glob("*/*/data")} if root.exists() else {}


def start_nginx(base: Path, served: Path) -> Server:
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
        f"  server {{ listen 127.0.0.1:{port}; root {served}; }}\n"
        "}\n")
    proc = subprocess.Popen([NGINX, "-c", str(base / "nginx.conf"), "-p", str(base), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=open(base / "stderr", "ab"))
    server = Server(proc, port, served, signal.SIGQUIT, base / "access.log")
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
    except BaseException:
        server.kill()
        raise
    return server


def start_http_server(served: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                             "--directory", str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(proc, port, served)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
    except BaseException:
        server.kill()
        raise
    return server
