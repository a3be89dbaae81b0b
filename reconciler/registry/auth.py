"""Credentials and the registry auth handshake.

Where a host's credential comes from, first match wins (never from git):

1. ``--authfile FILE`` (:func:`set_auth_file`), when given;
2. Docker's ``config.json`` (``$DOCKER_CONFIG``, else ``~/.docker``);
3. ``$REGISTRY_AUTH_FILE``;
4. ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman, skopeo, buildah);
5. ``~/.config/containers/auth.json``.

In each file, as the docker CLI does: ``credHelpers`` for the host, then ``auths``,
then ``credsStore``, a helper being invoked as ``docker-credential-<name> get`` with
the server on stdin. Docker Hub (``docker.io``, ``index.docker.io``,
``registry-1.docker.io``) is keyed ``https://index.docker.io/v1/``, which is also
what a helper is asked for. ``auths`` keys may carry a scheme and path
(``https://h:5000/v1/``); a containers key naming a namespace (``host/team``) is
scoped to that namespace and not used for the whole host.

Bearer tokens are cached per *scope set* (``repository:<name>:<actions>``), and a
401 whose challenge names a wider scope fetches a new token for that scope: this
is what lets a pull-only session push to a fresh repository (oras-py re-sends
the old token there). Once a host is known to use bearer auth, tokens are
fetched before the request, saving a 401 round trip per repository.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import redact_url
from reconciler.registry.config import DOCKER_HUB, DOCKER_HUB_AUTH_KEY, canonical_host
from reconciler.registry.connections import Response
from reconciler.registry.errors import AuthenticationFailed

log = logging.getLogger(__name__)

_HELPER_TIMEOUT = 30.0
_DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 10.0
MAX_AUTH_FILE_BYTES = 1 << 20  # config.json / auth.json
MAX_HELPER_OUTPUT = 1 << 16
CREDENTIAL_TTL = 300.0  # seconds a looked-up credential is reused
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
LOOKUP_ORDER = (
    "--authfile, Docker's config.json ($DOCKER_CONFIG or ~/.docker), $REGISTRY_AUTH_FILE, "
    "$XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json"
)

_auth_file: str | None = None


def set_auth_file(path: str | None) -> None:
    """The process-wide ``--authfile``: consulted before every other source."""
    global _auth_file
    _auth_file = path


@dataclass(frozen=True)
class Credential:
    """A username/password, or an identity (refresh) token; secrets never print."""

    username: str
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = field(default="", compare=False)  # the file it came from, for hints


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``WWW-Authenticate: Bearer realm="…",service="…",scope="…"``."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "")
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def normalise_host(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``https://h:5000/x`` -> ``h:5000``."""
    return canonical_host(key.split("://", 1)[-1].split("/", 1)[0])


def _scoped(key: str) -> bool:
    """A containers-style key naming a namespace (``host/team``), not a whole host."""
    return "://" not in key and "/" in key.rstrip("/")


def server_key(host: str) -> str:
    """What Docker asks a credential helper for: Hub's legacy URL, else the host."""
    return DOCKER_HUB_AUTH_KEY if canonical_host(host) == DOCKER_HUB else host


def docker_config_path(config_dir: str | None = None) -> Path:
    """Docker's ``config.json``: in ``config_dir``, ``$DOCKER_CONFIG`` or ``~/.docker``."""
    base = config_dir or os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


def credential_files(config_dir: str | None = None, auth_file: str | None = None) -> list[Path]:
    """The files consulted, in order (see the module docstring)."""
    files: list[Path] = []
    explicit = auth_file or _auth_file
    if explicit:
        files.append(Path(explicit))
    files.append(docker_config_path(config_dir))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(Path.home() / ".config" / "containers" / "auth.json")
    return files


class DockerCredentials:
    """Look up a host's credential in the credential files, caching the answer for
    ``CREDENTIAL_TTL`` seconds (a long-running daemon sees a new login or a helper's
    rotated token without a restart)."""

    def __init__(
        self,
        config_dir: str | None = None,
        *,
        auth_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = credential_files(config_dir, auth_file)
        self._explicit = auth_file or _auth_file
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, Credential | None] = {}
        self._loaded: dict[Path, dict[str, Any]] = {}
        self._since = clock()

    @property
    def files(self) -> list[Path]:
        """The credential files consulted, in order (for hints)."""
        return list(self._files)

    def lookup(self, host: str) -> Credential | None:
        """The credential for ``host`` from the first file (or helper) that has one, or None;
        answers are kept for ``CREDENTIAL_TTL`` seconds, then looked up again.

        Raises:
            AuthenticationFailed: a credential file is unusable (``--authfile`` missing,
                too large, not JSON, …).
        """
        host = canonical_host(host)
        with self._lock:
            if self._clock() - self._since > CREDENTIAL_TTL:
                self._cache.clear()
                self._loaded.clear()
                self._since = self._clock()
            if host not in self._cache:
                self._cache[host] = self._find(host)
            return self._cache[host]

    def _find(self, host: str) -> Credential | None:
        for path in self._files:
            config = self._load(path)
            if config:
                cred = _from_config(config, host, path)
                if cred is not None:
                    log.debug("credential for %s from %s", host, path)
                    return cred
        return None

    def _load(self, path: Path) -> dict[str, Any]:
        if path in self._loaded:
            return self._loaded[path]
        try:
            size = path.stat().st_size
            if size > MAX_AUTH_FILE_BYTES:
                raise AuthenticationFailed(
                    f"{path} is {size:,} bytes, over the {MAX_AUTH_FILE_BYTES:,}-byte limit "
                    "for a credential file",
                    "point the variable or --authfile at the right file",
                )
            text = path.read_text()
        except FileNotFoundError:
            if path == Path(self._explicit or "\0"):
                raise AuthenticationFailed(
                    f"--authfile {path}: no such file", "pass an existing auth.json"
                ) from None
            loaded: dict[str, Any] = {}
        except OSError as exc:
            raise AuthenticationFailed(
                f"cannot read {path}: {exc.strerror}",
                "fix the file's permissions or point the variable elsewhere",
            ) from None
        else:
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AuthenticationFailed(
                    f"{path} is not valid JSON (line {exc.lineno})",
                    "repair it, or log in again (`docker login` / `podman login`)",
                ) from None
            loaded = parsed if isinstance(parsed, dict) else {}
        self._loaded[path] = loaded
        return loaded


def _from_config(config: dict[str, Any], host: str, path: Path) -> Credential | None:
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if not _scoped(key) and normalise_host(key) == host and isinstance(helper, str):
                return _run_helper(helper, server_key(host), path)
    auths = config.get("auths") or {}
    if isinstance(auths, dict):
        # An exact key first, then any spelling of the same host.
        keys = sorted(auths, key=lambda k: k not in (host, server_key(host)))
        for key in keys:
            entry = auths[key]
            if _scoped(key) or normalise_host(key) != host or not isinstance(entry, dict):
                continue
            cred = _from_auth_entry(entry, path)
            if cred is not None:
                return cred
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return _run_helper(store, server_key(host), path)
    return None


def _from_auth_entry(entry: dict[str, Any], path: Path) -> Credential | None:
    token = entry.get("identitytoken")
    username = entry.get("username")
    password = entry.get("password")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded).decode()
        except ValueError:
            raise AuthenticationFailed(
                f"{path}: an 'auth' entry is not base64 of user:password",
                "log in again (`docker login` / `podman login`)",
            ) from None
        username, _, password = decoded.partition(":")
    if isinstance(token, str) and token:
        name = username if isinstance(username, str) else ""
        return Credential(name, "", token, str(path))
    if isinstance(username, str) and username:
        return Credential(username, password if isinstance(password, str) else "", None, str(path))
    return None


def _run_helper(name: str, server: str, path: Path) -> Credential | None:
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise AuthenticationFailed(
            f"credential helper {program} not found (named in {path})",
            f"install {program} or remove it from {path.name}",
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthenticationFailed(
            f"credential helper {program} did not answer in {_HELPER_TIMEOUT:.0f} s"
        ) from None
    if done.returncode != 0:
        # "credentials not found in native keychain" is the documented miss.
        log.debug("credential helper %s has nothing for %s", program, server)
        return None
    if len(done.stdout) > MAX_HELPER_OUTPUT:
        raise AuthenticationFailed(f"credential helper {program} answered too much")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthenticationFailed(f"credential helper {program} returned malformed JSON") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthenticationFailed(f"credential helper {program} returned malformed JSON")
    source = f"{program} (from {path})"
    if username == "<token>":
        return Credential("", "", secret, source)
    return Credential(username, secret, None, source)


Fetch = Callable[..., Response]


class Authenticator:
    """Per-host auth state: basic, or bearer tokens cached per scope set."""

    def __init__(
        self,
        host: str,
        credential: Callable[[], Credential | None],
        fetch: Fetch,
        allow_plain_realm: bool,
    ) -> None:
        self.host = host
        self._credential = credential
        self._fetch = fetch
        self._allow_plain_realm = allow_plain_realm
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._realm: str | None = None
        self._service: str | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}

    def credential(self) -> Credential | None:
        """The host's credential as of now (the lookup caches it, not this object)."""
        return self._credential()

    def authorization(self, scopes: Sequence[str]) -> str | None:
        """The Authorization header to send, fetching a token if the host wants one."""
        if self._scheme == "basic":
            return self._basic()
        if self._scheme != "bearer":
            return None
        key = tuple(sorted(set(scopes)))
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            return f"Bearer {self._fetch_token(key)}"

    def on_challenge(self, response: Response, scopes: Sequence[str]) -> bool:
        """Learn from a 401; True when retrying the request may now succeed."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            return False
        if challenge.scheme == "basic":
            if self._scheme == "basic" or self._basic() is None:
                return False
            self._scheme = "basic"
            return True
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return False
        wanted = set(scopes)
        if challenge.params.get("scope"):
            wanted.update(challenge.params["scope"].split(" "))
        key = tuple(sorted(wanted))
        with self._lock:
            self._scheme = "bearer"
            self._realm = challenge.params["realm"]
            self._service = challenge.params.get("service")
            self._tokens.pop(key, None)
            self._tokens.pop(tuple(sorted(set(scopes))), None)
            token = self._fetch_token(key)
            # Answer future requests with the same scopes with the wider token.
            expiry = self._tokens[key][1]
            self._tokens[tuple(sorted(set(scopes)))] = (token, expiry)
        return True

    def _basic(self) -> str | None:
        cred = self._credential()
        if cred is None or cred.identity_token:
            return None
        raw = f"{cred.username}:{cred.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _fetch_token(self, scopes: tuple[str, ...]) -> str:
        assert self._realm is not None
        realm = self._realm
        cred = self._credential()
        if cred is not None and realm.startswith("http://") and not self._allow_plain_realm:
            raise AuthenticationFailed(
                f"{self.host}: refusing to send credentials to plain-HTTP token realm "
                f"{redact_url(realm)}",
                "the registry must use an https realm, or mark the host plainHTTP",
            )
        params: list[tuple[str, str]] = []
        if self._service:
            params.append(("service", self._service))
        if cred is not None and cred.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": cred.identity_token,
                "client_id": "reconciler",
                "scope": " ".join(scopes),
            }
            if self._service:
                form["service"] = self._service
            response = self._fetch("POST", realm, data=form)
        else:
            params.extend(("scope", s) for s in scopes)
            auth = (cred.username, cred.password) if cred is not None else None
            response = self._fetch("GET", realm, params=params, auth=auth)
        if response.status_code in (401, 403):
            raise AuthenticationFailed(
                f"{self.host}: token service {redact_url(realm)} refused "
                f"{'the credentials' if cred else 'anonymous access'} "
                f"(HTTP {response.status_code}) for {' '.join(scopes) or 'the registry'}",
                credential_hint(cred),
            )
        if response.status_code != 200:
            raise AuthenticationFailed(
                f"{self.host}: token service {redact_url(realm)} answered "
                f"HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed(
                f"{self.host}: token service {redact_url(realm)} returned no token"
            )
        expiry = time.monotonic() + max(lifetime - _EXPIRY_MARGIN, 1.0)
        self._tokens[scopes] = (token, expiry)
        log.debug("%s: new token for %s", self.host, " ".join(scopes))
        return token


def credential_hint(cred: Credential | None) -> str:
    """Where the credential came from, and where else we looked."""
    where = f"they came from {cred.source}" if cred and cred.source else "none were found"
    return (
        f"check the credentials for this host ({where}; looked in: {LOOKUP_ORDER}; "
        "DOCKER_CONFIG names Docker's directory) and the account's permissions"
    )


def scope(repository: str, *actions: str) -> str:
    """A token scope, ``repository:<name>:<actions>``, as the token endpoint expects."""
    return f"repository:{repository}:{','.join(actions)}"
