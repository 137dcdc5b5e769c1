"""Registry credentials the way docker keeps them, and the challenge flows registries use.

Credentials live in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``):
``auths[host].auth`` (base64 ``user:password``), or a credential helper (``credsStore`` /
``credHelpers``: ``docker-credential-NAME get``). A registry answers 401 with a
``WWW-Authenticate`` challenge: ``Basic`` (send the credentials) or ``Bearer realm=...,
service=..., scope=...`` (get a token from the realm, with the credentials if any).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import urllib.parse
from pathlib import Path

from ..errors import UsageError
from .http import Client, status_error
from .remote import TransferError

DOCKER_HUB = "docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


def config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _config() -> dict:
    try:
        doc = json.loads(config_path().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {config_path()}: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def _keys(host: str) -> tuple[str, ...]:
    return _HUB_KEYS if host == DOCKER_HUB else (host, f"https://{host}", f"http://{host}")


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for a registry host, or None."""
    doc = _config()
    helper = (doc.get("credHelpers") or {}).get(host) or doc.get("credsStore")
    auths = doc.get("auths") or {}
    for key in _keys(host):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"bad credentials for {host} in {config_path()}") from None
            return user, password
    if isinstance(helper, str) and helper:
        try:
            done = subprocess.run([f"docker-credential-{helper}", "get"], input=_keys(host)[0], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode == 0:
            with_secret = json.loads(done.stdout or "{}")
            return with_secret.get("Username", ""), with_secret.get("Secret", "")
    return None


def save_credentials(host: str, user: str, password: str) -> Path:
    """Record credentials in the docker config (atomically, readable by its owner only)."""
    path = config_path()
    doc = _config()
    key = _HUB_KEYS[0] if host == DOCKER_HUB else host
    doc.setdefault("auths", {})[key] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {realm, service, ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


def authorize(client: Client, header: str, host: str, scope: str | None,
              creds: tuple[str, str] | None) -> dict[str, str]:
    """The Authorization header that answers a challenge."""
    scheme, params = parse_challenge(header)
    basic = {"Authorization": "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()} if creds else {}
    if scheme == "basic":
        if not creds:
            raise TransferError(f"{host} needs a login: run 'vocker login {host}'")
        return basic
    if scheme != "bearer" or "realm" not in params:
        raise TransferError(f"{host} asks for an unsupported authentication ({header[:60]!r})")
    query = {k: v for k, v in (("service", params.get("service")), ("scope", scope or params.get("scope"))) if v}
    url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
    r = client.request("GET", url, auth=basic)
    if r.status == 401:
        raise TransferError(f"{host} refused the credentials" if creds else f"{host} needs a login: run 'vocker login {host}'")
    if r.status != 200:
        raise status_error(r, f"token from {params['realm']}")
    try:
        doc = json.loads(r.body)
        token = doc.get("token") or doc.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise TransferError(f"the token service of {host} answered no token")
    return {"Authorization": f"Bearer {token}"}
