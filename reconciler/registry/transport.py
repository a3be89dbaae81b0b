"""HTTP transport for one registry host: timeouts, retries, limits, auth, redirects.

Written on a plain :class:`requests.Session` (see :mod:`reconciler.registry.http`
for why not oras-py's). Every request has explicit connect/read timeouts. Only
connection errors, 429 and 5xx (not 501) are retried, a bounded number of times,
with full-jitter exponential backoff or the server's ``Retry-After`` (capped).
Requests with a streamed body are never replayed. Redirects are followed by hand
so that ``Authorization`` never leaves the registry's own scheme://host:port
(blob GETs on real registries redirect to object storage).
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from reconciler.errors import redact_url
from reconciler.registry.auth import Authenticator, Credential
from reconciler.registry.config import HostConfig, RetryPolicy
from reconciler.registry.errors import (
    AuthenticationFailed,
    NotFound,
    RegistryRefused,
    RegistryUnavailable,
    TLSFailure,
    Unsupported,
)

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
# Reasons worth naming; the exception text itself may carry a URL with a query.
_REASONS = (
    "Connection refused",
    "Connection reset",
    "Read timed out",
    "timed out",
    "RemoteDisconnected",
    "certificate verify failed",
    "IncompleteRead",
    "Connection aborted",
    "Name or service not known",
)


class UploadBody(Protocol):
    """A streamed request body of known length (sent once, never replayed)."""

    def read(self, n: int = -1, /) -> bytes: ...

    def __len__(self) -> int: ...


class RequestStats:
    """Thread-safe request counter keyed by (host, method, status).

    ``status`` is the HTTP status as a string, or ``"error"`` when no response came
    back. The daemon exports it as metrics; tests assert "zero writes" with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def record(self, host: str, method: str, status: str) -> None:
        with self._lock:
            self._counts[(host, method, status)] += 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._counts)

    def total(
        self, *, host: str | None = None, method: str | None = None, status: str | None = None
    ) -> int:
        return sum(
            n
            for (h, m, s), n in self.snapshot().items()
            if (host is None or h == host)
            and (method is None or m == method)
            and (status is None or s == status)
        )

    def writes(self, host: str | None = None) -> int:
        return sum(
            n
            for (h, m, _), n in self.snapshot().items()
            if m in WRITE_METHODS and (host is None or h == host)
        )


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart (no bursts)."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


def backoff(policy: RetryPolicy, failures: int) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**(failures-1)))."""
    return random.uniform(0.0, min(policy.cap, policy.base * (2 ** max(failures - 1, 0))))


def retry_after(value: str | None, policy: RetryPolicy) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, policy.retry_after_cap))


def error_detail(response: requests.Response) -> str:
    """The registry's error codes and messages, shortened; never headers or URLs."""
    try:
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
    except ValueError:
        errors = None
    if not isinstance(errors, list) or not errors:
        return ""
    parts = []
    for err in errors[:3]:
        if isinstance(err, dict):
            code = str(err.get("code", ""))
            message = str(err.get("message", ""))[:160]
            parts.append(f"{code}: {message}" if message else code)
    return "; ".join(parts)


def error_codes(response: requests.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code")) for e in errors if isinstance(e, dict)}


class Transport:
    """Sends requests to one registry host; see the module docstring for the rules."""

    def __init__(
        self,
        host: str,
        config: HostConfig,
        credential: Callable[[], Credential | None],
        stats: RequestStats,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host = host
        self.config = config
        self.stats = stats
        self.base_url = f"{'http' if config.plain_http else 'https'}://{host}"
        self._origin = _origin(self.base_url)
        self._sleep = sleep
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._verify: bool | str = config.ca_file or True
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._rate = RateLimiter(config.requests_per_second)
        self.session = requests.Session()
        # Never pick up credentials from ~/.netrc: config.json is the only source.
        self.session.trust_env = False
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=config.concurrency, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "reconciler-registry"
        self.auth = Authenticator(host, credential, self._fetch_plain, config.plain_http)

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        body: UploadBody | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send with auth, retries and limits; returns any final response.

        ``body`` is a streamed, non-replayable upload: it is sent once, never retried.
        """
        replayable = body is None
        failures = 0
        challenges = 0
        policy = self.config.retry
        while True:
            sent_headers = dict(headers or {})
            authorization = self.auth.authorization(scopes)
            if authorization:
                sent_headers["Authorization"] = authorization
            try:
                response = self._send(
                    method, url, sent_headers, data if body is None else body, stream
                )
            except requests.exceptions.SSLError as exc:
                self.stats.record(self.host, method, "error")
                raise TLSFailure(
                    f"{self.host}: TLS verification failed for {redact_url(url)}: {_short(exc)}",
                    "set caFile for this host to the CA that signed its certificate",
                ) from None
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                self.stats.record(self.host, method, "error")
                failures += 1
                reason = _short(exc)
                if failures >= policy.attempts or not replayable:
                    raise RegistryUnavailable(
                        f"{self.host}: {method} {redact_url(url)} failed after "
                        f"{failures} attempt{'s' if failures > 1 else ''}: {reason}",
                        "the registry is unreachable or too slow; it will be retried",
                    ) from None
                delay = backoff(policy, failures)
                log.debug(
                    "%s %s: %s; retry %d/%d in %.2fs",
                    method, redact_url(url), reason, failures, policy.attempts - 1, delay,
                )  # fmt: skip
                self._sleep(delay)
                continue
            status = response.status_code
            self.stats.record(self.host, method, str(status))
            if status == 401 and challenges < 2 and replayable:
                challenges += 1
                if self.auth.on_challenge(response, scopes):
                    response.close()
                    continue
            if status == 429 or (500 <= status < 600 and status != 501):
                failures += 1
                if failures >= policy.attempts or not replayable:
                    detail = error_detail(response)
                    response.close()
                    raise RegistryUnavailable(
                        f"{self.host}: {method} {redact_url(url)} answered HTTP {status} "
                        f"after {failures} attempt{'s' if failures > 1 else ''}"
                        + (f" ({detail})" if detail else ""),
                        "the registry is overloaded or failing; it will be retried",
                    )
                hinted = retry_after(response.headers.get("Retry-After"), policy)
                delay = backoff(policy, failures) if hinted is None else hinted
                log.debug(
                    "%s %s: HTTP %d; retry %d/%d in %.2fs",
                    method, redact_url(url), status, failures, policy.attempts - 1, delay,
                )  # fmt: skip
                response.close()
                self._sleep(delay)
                continue
            return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | UploadBody | None,
        stream: bool,
    ) -> requests.Response:
        self._rate.acquire()
        with self._slots:
            response = self._once(method, url, headers, data, stream)
            hops = 0
            while (
                response.status_code in _REDIRECTS
                and method in ("GET", "HEAD")
                and "Location" in response.headers
                and hops < _MAX_REDIRECTS
            ):
                hops += 1
                url = urljoin(url, response.headers["Location"])
                response.close()
                if _origin(url) != self._origin:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                log.debug("%s redirected to %s", method, redact_url(url))
                response = self._once(method, url, headers, None, stream)
            return response

    def _once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | UploadBody | None,
        stream: bool,
    ) -> requests.Response:
        verify = self._verify if _origin(url) == self._origin else True
        response = self.session.request(
            method,
            url,
            headers=headers,
            data=data,
            stream=stream,
            timeout=self._timeout,
            allow_redirects=False,
            verify=verify,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d", method, redact_url(url), response.status_code)
        return response

    def _fetch_plain(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Token-service calls: same timeouts and retries, no registry auth."""
        policy = self.config.retry
        failures = 0
        verify = self._verify if _origin(url) == self._origin else True
        while True:
            try:
                response = self.session.request(
                    method, url, timeout=self._timeout, verify=verify, **kwargs
                )
            except requests.exceptions.SSLError as exc:
                raise TLSFailure(
                    f"{self.host}: TLS verification failed for token service "
                    f"{redact_url(url)}: {_short(exc)}"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                failures += 1
                if failures >= policy.attempts:
                    raise RegistryUnavailable(
                        f"{self.host}: token service {redact_url(url)} unreachable: {_short(exc)}"
                    ) from None
                self._sleep(backoff(policy, failures))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failures += 1
                if failures >= policy.attempts:
                    raise RegistryUnavailable(
                        f"{self.host}: token service {redact_url(url)} answered "
                        f"HTTP {response.status_code}"
                    )
                delay = retry_after(response.headers.get("Retry-After"), policy)
                self._sleep(backoff(policy, failures) if delay is None else delay)
                continue
            return response

    def fail(self, response: requests.Response, what: str) -> RegistryRefused:
        """Classify a final non-success response into an error to raise."""
        status = response.status_code
        detail = error_detail(response)
        response.close()
        suffix = f" ({detail})" if detail else ""
        if status in (401, 403):
            return AuthenticationFailed(
                f"{self.host}: {what}: HTTP {status}{suffix}",
                "check the credentials for this host in Docker's config.json "
                "(DOCKER_CONFIG) and the account's permissions on the repository",
            )
        if status == 404:
            return NotFound(f"{self.host}: {what}: not found{suffix}")
        if status in (405, 501):
            return Unsupported(f"{self.host}: {what}: the registry does not support it{suffix}")
        return RegistryRefused(f"{self.host}: {what}: HTTP {status}{suffix}")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.rpartition("@")[2].lower()


def _short(exc: BaseException) -> str:
    """A one-line reason for a requests/urllib3 exception, without URLs."""
    text = str(exc)
    for marker in _REASONS:
        if marker in text:
            return marker
    return type(exc).__name__
