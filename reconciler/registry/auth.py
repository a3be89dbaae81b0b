"""Credentials and the registry auth handshake.

Credentials come only from Docker's ``config.json`` (``$DOCKER_CONFIG`` or
``~/.docker``): ``credHelpers`` for the host, then ``auths``, then ``credsStore``,
each helper invoked as ``docker-credential-<name> get``. Never from git.

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

import requests

from reconciler.errors import redact_url
from reconciler.registry.errors import AuthenticationFailed

log = logging.getLogger(__name__)

_HELPER_TIMEOUT = 30.0
_DEFAULT_TOKEN_LIFETIME = 60.0
_EXPIRY_MARGIN = 10.0
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credential:
    """A username/password, or an identity (refresh) token; secrets never print."""

    username: str
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Challenge:
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
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    if host in ("index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return host


def docker_config_path(config_dir: str | None = None) -> Path:
    base = config_dir or os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(base) / "config.json"


class DockerCredentials:
    """Look up a host's credential in Docker's config.json, caching the answer."""

    def __init__(self, config_dir: str | None = None) -> None:
        self._path = docker_config_path(config_dir)
        self._lock = threading.Lock()
        self._cache: dict[str, Credential | None] = {}
        self._config: dict[str, Any] | None = None

    def lookup(self, host: str) -> Credential | None:
        host = normalise_host(host)
        with self._lock:
            if host not in self._cache:
                self._cache[host] = self._find(host)
            return self._cache[host]

    def _load(self) -> dict[str, Any]:
        if self._config is None:
            try:
                text = self._path.read_text()
            except FileNotFoundError:
                self._config = {}
            except OSError as exc:
                raise AuthenticationFailed(
                    f"cannot read {self._path}: {exc.strerror}",
                    "fix the file's permissions or point DOCKER_CONFIG elsewhere",
                ) from None
            else:
                try:
                    loaded = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise AuthenticationFailed(
                        f"{self._path} is not valid JSON (line {exc.lineno})",
                        "repair it or run `docker login` again",
                    ) from None
                self._config = loaded if isinstance(loaded, dict) else {}
        return self._config

    def _find(self, host: str) -> Credential | None:
        config = self._load()
        helpers = config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if normalise_host(key) == host and isinstance(helper, str):
                    return _run_helper(helper, key)
        auths = config.get("auths") or {}
        if isinstance(auths, dict):
            for key, entry in auths.items():
                if normalise_host(key) == host and isinstance(entry, dict):
                    cred = _from_auth_entry(entry, self._path)
                    if cred is not None:
                        return cred
        store = config.get("credsStore")
        if isinstance(store, str) and store:
            return _run_helper(store, host)
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
                "run `docker login` again",
            ) from None
        username, _, password = decoded.partition(":")
    if isinstance(token, str) and token:
        return Credential(username if isinstance(username, str) else "", "", token)
    if isinstance(username, str) and username:
        return Credential(username, password if isinstance(password, str) else "")
    return None


def _run_helper(name: str, server: str) -> Credential | None:
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
            f"credential helper {program} not found",
            f"install {program} or remove it from config.json",
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthenticationFailed(
            f"credential helper {program} did not answer in {_HELPER_TIMEOUT:.0f} s"
        ) from None
    if done.returncode != 0:
        # "credentials not found in native keychain" is the documented miss.
        log.debug("credential helper %s has nothing for %s", program, server)
        return None
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthenticationFailed(f"credential helper {program} returned malformed JSON") from None
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthenticationFailed(f"credential helper {program} returned malformed JSON")
    if username == "<token>":
        return Credential("", "", secret)
    return Credential(username, secret)


Fetch = Callable[..., requests.Response]


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

    def on_challenge(self, response: requests.Response, scopes: Sequence[str]) -> bool:
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
                "check the credentials for this host in Docker's config.json "
                "(DOCKER_CONFIG) and the account's permissions",
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


def scope(repository: str, *actions: str) -> str:
    return f"repository:{repository}:{','.join(actions)}"
