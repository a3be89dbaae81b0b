"""HTTP transport for one registry host: timeouts, retries, limits, auth, redirects.

Written on our own wire (see :mod:`reconciler.registry.http` for why not oras-py's):
http.client keep-alive connections to the registry's own origin (:mod:`.connections`),
a ``requests.Session`` for other origins and proxies (:mod:`.sessions`). Every request
has explicit connect/read timeouts. Only
connection errors, 429 and 5xx (not 501) are retried, a bounded number of times,
with full-jitter exponential backoff or the server's ``Retry-After`` (capped).
Requests with a streamed body are never replayed. A ``Retry-After`` pauses every
request to the host, not only the one that was told. Retries stop at ``attempts``
or when the request's time ``budget`` is spent, whichever comes first, or at once
when the host's breaker opens (:mod:`reconciler.registry.health`): a host that has
answered nothing but failures for a while is not retried, and every request to it
fails with one error.

Credentials go only to the origin that asked for them: ``Authorization`` and the
host's client certificate are sent to the registry's own scheme://host:port only.
Redirects are followed by hand, and a ``Location`` (upload) or ``Link`` (tag list
page) naming another origin is followed without them (blob GETs on real registries
redirect to object storage). A 401 from another origin is never answered.

Every body read is capped (``limit``): a manifest, a tag list page, a token, an
error. Streamed blob reads hold the host's concurrency slot until closed, so the
connection pools (``concurrency`` connections) are never exceeded.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from reconciler.errors import redact_url
from reconciler.registry.auth import Authenticator, Credential, credential_hint
from reconciler.registry.config import HostConfig, RetryPolicy
from reconciler.registry.connections import Pool, Response, TLSError, WireError
from reconciler.registry.errors import (
    AuthenticationFailed,
    NotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
    ResponseTooLarge,
    TLSFailure,
    Unsupported,
)
from reconciler.registry.health import HostHealth
from reconciler.registry.pacing import (
    RateLimiter,
    RequestStats,
    backoff,
    retry_after,
)
from reconciler.registry.trust import host_certs, trust_context, trust_sources

log = logging.getLogger(__name__)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CHUNK = 1 << 16
USER_AGENT = "reconciler-registry"
DEFAULT_LIMIT = 1 << 20  # bodies we do not expect to be large: tokens, errors, uploads
ERROR_LIMIT = 64 << 10  # an error body is kept up to this much, then cut


class UploadBody(Protocol):
    """A streamed request body of known length (sent once, never replayed)."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all with -1), as a file object reads."""
        ...

    def __len__(self) -> int: ...


def error_detail(response: Response) -> str:
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


def error_codes(response: Response) -> set[str]:
    """The distribution API error codes of a response (``MANIFEST_UNKNOWN``, …); empty when
    its body holds none."""
    try:
        body = response.json()
    except ValueError:
        return set()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code")) for e in errors if isinstance(e, dict)}


class Transport:
    """Sends requests to one registry host; see the module docstring for the rules.

    ``host`` names the registry in messages and metrics (``docker.io``); ``endpoint``
    is where its API answers (``registry-1.docker.io``), by default ``host``.
    """

    def __init__(
        self,
        host: str,
        config: HostConfig,
        credential: Callable[[], Credential | None],
        stats: RequestStats,
        sleep: Callable[[float], None] = time.sleep,
        *,
        endpoint: str | None = None,
        certs_dirs: tuple[str, ...] | None = None,
    ) -> None:
        self.host = host
        self.config = config
        self.stats = stats
        self.endpoint = endpoint or host
        self.base_url = f"{'http' if config.plain_http else 'https'}://{self.endpoint}"
        self._origin = _origin(self.base_url)
        self._prefix = self.base_url + "/"
        self._sleep = sleep
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._local = threading.local()
        self._rate = RateLimiter(config.requests_per_second)
        self.health = HostHealth(host, config.retry)
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._own: ssl.SSLContext | None = None
        if not config.plain_http:  # built here: a bad caFile fails when the client is made
            certs = host_certs(self.endpoint, certs_dirs)
            if certs is not None and certs.directory:
                log.debug("%s: certificates from %s", host, certs.directory)
            self._own = trust_context(
                host, ca_pem=config.ca_pem, ca_file=config.ca_file, certs=certs
            )
        self._lazy = threading.Lock()
        self._session: Any = None  # a requests.Session, made on first use
        self._pool: Pool | None = None
        self.auth = Authenticator(host, credential, self._fetch_plain, config.plain_http)

    @property
    def session(self) -> Any:
        """For other origins (token realms, storage redirects) and proxies: a
        ``requests.Session`` (:mod:`.sessions`), made, and ``requests`` imported, on
        first use: a registry's own origin needs neither, nor a trust store if plain."""
        with self._lazy:
            if self._session is None:
                from reconciler.registry import sessions

                self._session = sessions.session(
                    self.base_url, self._own, self.config.concurrency, USER_AGENT
                )
            return self._session

    def _direct(self) -> Pool:
        """The registry's own origin, without a proxy, is spoken to on a pool of
        ``concurrency`` keep-alive http.client connections (:mod:`.connections`: why)."""
        with self._lazy:
            if self._pool is None:
                parts = urlsplit(self.base_url)
                self._pool = Pool(
                    parts.hostname or self.endpoint,
                    parts.port or (80 if self._own is None else 443),
                    self._own,
                    self.config.connect_timeout,
                    self.config.read_timeout,
                    self.config.concurrency,
                )
            return self._pool

    def pause(self, seconds: float) -> None:
        """This thread waits (the transport's sleep: tests record it instead)."""
        self._sleep(seconds)

    def close(self) -> None:
        """Close the connections (the session's and the pool's)."""
        with self._lazy:
            if self._session is not None:
                self._session.close()
            if self._pool is not None:
                self._pool.close()

    def url(self, path: str) -> str:
        """The absolute URL of an API path on this host's endpoint."""
        return f"{self.base_url}{path}"

    def same_origin(self, url: str) -> bool:
        """``url`` is this host's own endpoint: credentials go only there, never to a token
        realm or storage redirect on another origin."""
        if url.startswith(self._prefix):  # the common case, without parsing the URL
            return True
        return _origin(url) == self._origin

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One of the host's ``concurrency`` slots, held by this thread (re-entrant)."""
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._slots:
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0

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
        limit: int = DEFAULT_LIMIT,
    ) -> Response:
        """Send with auth, retries and limits; returns any final response.

        ``body`` is a streamed, non-replayable upload: it is sent once, never retried.
        Unless ``stream``, the body is read here, refused past ``limit`` bytes on a
        success (an error body is cut there instead). ``Authorization`` goes to the
        registry's own origin only.
        """
        replayable = body is None
        failures = 0
        challenges = 0
        policy = self.config.retry
        started = time.monotonic()
        same = self.same_origin(url)
        waited = False  # this request slept out a Retry-After itself
        while True:
            self.health.check()
            sent_headers = dict(headers or {})
            authorization = self.auth.authorization(scopes) if same else None
            if authorization:
                sent_headers["Authorization"] = authorization
            try:
                response = self._send(
                    method, url, sent_headers, data if body is None else body, stream, limit, waited
                )
            except TLSError as exc:
                self.stats.record(self.host, method, "error")
                raise TLSFailure(
                    f"{self.host}: TLS verification failed for {redact_url(url)}: {exc}",
                    "set caFile for this host to the CA that signed its certificate, or add "
                    f"the CA to the trust store (trusted here: {trust_sources()})",
                ) from None
            except WireError as exc:
                self.stats.record(self.host, method, "error")
                failures += 1
                reason = str(exc)
                self._failed(reason)
                delay = backoff(policy, failures)
                if not replayable or not self._may_retry(policy, failures, started, delay):
                    raise RegistryUnavailable(
                        f"{self.host}: {method} {redact_url(url)} failed after "
                        f"{failures} attempt{'s' if failures > 1 else ''}: {reason}",
                        "the registry is unreachable or too slow; it will be retried",
                    ) from None
                log.debug(
                    "%s %s: %s; retry %d/%d in %.2fs",
                    method, redact_url(url), reason, failures, policy.attempts - 1, delay,
                )  # fmt: skip
                self._sleep(delay)
                continue
            status = response.status_code
            self.stats.record(self.host, method, str(status))
            if status == 401 and same and challenges < 2 and replayable:
                challenges += 1
                if self.auth.on_challenge(response, scopes):
                    response.close()
                    continue
            if status == 429 or (500 <= status < 600 and status != 501):
                failures += 1
                if status != 429:  # a 429 is an answer: the host is alive, only busy
                    detail = error_detail(response)
                    self._failed(f"HTTP {status}" + (f" ({detail})" if detail else ""))
                hinted = retry_after(response.headers.get("Retry-After"), policy)
                delay = backoff(policy, failures) if hinted is None else hinted
                if hinted:
                    self._rate.pause(hinted)  # the whole host was told to wait
                if not replayable or not self._may_retry(policy, failures, started, delay):
                    detail = error_detail(response)
                    response.close()
                    raise RegistryUnavailable(
                        f"{self.host}: {method} {redact_url(url)} answered HTTP {status} "
                        f"after {failures} attempt{'s' if failures > 1 else ''}"
                        + (f" ({detail})" if detail else ""),
                        "the registry is overloaded or failing; it will be retried",
                    )
                log.debug(
                    "%s %s: HTTP %d; retry %d/%d in %.2fs",
                    method, redact_url(url), status, failures, policy.attempts - 1, delay,
                )  # fmt: skip
                response.close()
                self._sleep(delay)
                waited = hinted is not None
                continue
            self.health.success()
            return response

    def _failed(self, answered: str) -> None:
        """Tell the breaker; once it is open, this request stops retrying too."""
        self.health.failure(answered)
        down = self.health.down()
        if down is not None:
            raise down

    @staticmethod
    def _may_retry(policy: RetryPolicy, failures: int, started: float, delay: float) -> bool:
        return failures < policy.attempts and (time.monotonic() - started + delay <= policy.budget)

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | UploadBody | None,
        stream: bool,
        limit: int,
        waited: bool = False,
    ) -> Response:
        self._rate.acquire(respect_pause=not waited)
        with self.slot():
            response = self._once(method, url, headers, data, stream, limit)
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
                if not self.same_origin(url):
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                log.debug("%s redirected to %s", method, redact_url(url))
                response = self._once(method, url, headers, None, stream, limit)
            return response

    def _once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | UploadBody | None,
        stream: bool,
        limit: int,
    ) -> Response:
        proxies = self._proxies_for(url)
        if not proxies and self.same_origin(url):
            response = self._send_direct(method, url, headers, data)
        else:
            from reconciler.registry import sessions

            response = sessions.send(
                self.session,
                method,
                url,
                headers=headers,
                data=data,
                timeout=self._timeout,
                verify=True,
                proxies=proxies,
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d", method, redact_url(url), response.status_code)
        if not stream:
            read_capped(response, limit, lambda: f"{self.host}: {method} {redact_url(url)}", method)
        return response

    def _send_direct(
        self, method: str, url: str, headers: dict[str, str], data: bytes | UploadBody | None
    ) -> Response:
        """One request on the direct pool; its body is read from the answer's ``raw``."""
        if url.startswith(self._prefix):  # the common case, without parsing the URL
            target = url[len(self.base_url) :]
        else:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": USER_AGENT, **headers}
        if data is not None:
            sent["Content-Length"] = str(len(data))
        return self._direct().send(method, target, sent, data, url)

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The environment's proxy for this origin (``HTTPS_PROXY``, ``NO_PROXY``); with no
        proxy variable set at all, none, without loading ``requests`` to ask."""
        origin = self._origin if url.startswith(self._prefix) else _origin(url)
        found = self._proxies.get(origin)
        if found is None:
            if not any(k.lower().endswith("_proxy") and v for k, v in os.environ.items()):
                found = {}
            else:
                from reconciler.registry import sessions

                found = sessions.proxies(url)
            self._proxies[origin] = found
        return found

    def _fetch_plain(self, method: str, url: str, **kwargs: Any) -> Response:
        """Token-service calls: same timeouts and retries, no registry auth, capped."""
        policy = self.config.retry
        failures = 0
        started = time.monotonic()
        while True:
            from reconciler.registry import sessions

            try:
                response = sessions.send(
                    self.session,
                    method,
                    url,
                    timeout=self._timeout,
                    verify=True,
                    proxies=self._proxies_for(url),
                    **kwargs,
                )
                read_capped(response, DEFAULT_LIMIT, f"{self.host}: token service", method)
            except TLSError as exc:
                raise TLSFailure(
                    f"{self.host}: TLS verification failed for token service "
                    f"{redact_url(url)}: {exc}",
                    f"add the token service's CA to the trust store (trusted: {trust_sources()})",
                ) from None
            except WireError as exc:
                failures += 1
                delay = backoff(policy, failures)
                if not self._may_retry(policy, failures, started, delay):
                    raise RegistryUnavailable(
                        f"{self.host}: token service {redact_url(url)} unreachable: {exc}"
                    ) from None
                self._sleep(delay)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failures += 1
                hinted = retry_after(response.headers.get("Retry-After"), policy)
                delay = backoff(policy, failures) if hinted is None else hinted
                if not self._may_retry(policy, failures, started, delay):
                    raise RegistryUnavailable(
                        f"{self.host}: token service {redact_url(url)} answered "
                        f"HTTP {response.status_code}"
                    )
                self._sleep(delay)
                continue
            return response

    def fail(self, response: Response, what: str) -> RegistryRefused:
        """Classify a final non-success response into an error to raise."""
        status = response.status_code
        detail = error_detail(response)
        response.close()
        suffix = f" ({detail})" if detail else ""
        if status in (401, 403):
            try:
                cred = self.auth.credential()
            except RegistryError:
                cred = None
            return AuthenticationFailed(
                f"{self.host}: {what}: HTTP {status}{suffix}", credential_hint(cred)
            )
        if status == 404:
            return NotFound(f"{self.host}: {what}: not found{suffix}")
        if status in (405, 501):
            return Unsupported(f"{self.host}: {what}: the registry does not support it{suffix}")
        return RegistryRefused(f"{self.host}: {what}: HTTP {status}{suffix}")


def read_capped(
    response: Response, limit: int, what: str | Callable[[], str], method: str = "GET"
) -> None:
    """Read the body into ``response.content``, at most ``limit`` bytes (``what``: the
    request in words, for the error; a function when it costs something to say).

    A success that is larger is refused (:class:`ResponseTooLarge`); an error body
    is cut. A connection lost mid-body raises WireError, so it is retried.
    """
    if method == "HEAD":  # no body, whatever its headers say
        try:
            response.raw.read()  # reads nothing, and frees the connection for reuse
        except WireError:
            response.close()
            raise
        setattr(response, "_content", b"")  # noqa: B010 (what .content returns)
        setattr(response, "_content_consumed", True)  # noqa: B010 (requests' own flag)
        response.raw.release_conn()
        return
    ok = response.status_code < 300
    declared = response.headers.get("Content-Length", "")
    if ok and method != "HEAD" and declared.isdigit() and int(declared) > limit:
        response.close()
        raise ResponseTooLarge(
            f"{_said(what)}: {int(declared):,} bytes, over the {limit:,}-byte limit"
        )
    chunks: list[bytes] = []
    total = 0
    complete = True
    try:
        for chunk in response.raw.stream(_CHUNK, decode_content=True):
            total += len(chunk)
            if total > limit:
                response.close()
                if ok:
                    raise ResponseTooLarge(f"{_said(what)}: more than the {limit:,}-byte limit")
                chunks.append(chunk[: len(chunk) - (total - limit)])
                complete = False
                break
            chunks.append(chunk)
    except WireError:
        response.close()
        raise
    setattr(response, "_content", b"".join(chunks))  # noqa: B010 (what .content returns)
    setattr(response, "_content_consumed", True)  # noqa: B010 (requests' own flag)
    if complete:
        response.raw.release_conn()  # read to the end: the connection is reusable


def _said(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2].lower()
    default = {"https": ":443", "http": ":80"}.get(parts.scheme.lower(), "")
    if default and netloc.endswith(default):
        netloc = netloc[: -len(default)]
    return parts.scheme.lower(), netloc
