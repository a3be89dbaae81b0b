"""Per-host registry settings, with every default in one place.

Plain HTTP is never inferred (not even for loopback): a host speaks plain HTTP only
when its settings say ``plainHTTP``, so a typo cannot silently downgrade TLS.

The state repository's ``settings.registries`` is parsed once, by the desired-state
loader, into :class:`reconciler.model.RegistryEntry`; ``registry_settings()`` in
:mod:`reconciler.engine.reconcile` maps it onto :class:`HostConfig`. This module has no
parser of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.errors import Stalled

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Docker keeps Hub credentials under this key (auths, credsStore, credHelpers).
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})

DEFAULT_CONCURRENCY = 16  # what the thread pools that feed a host use
DEFAULT_ATTEMPTS = 8
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0


def canonical_host(host: str) -> str:
    """``index.docker.io`` and ``registry-1.docker.io`` are Docker Hub: ``docker.io``."""
    host = host.lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def api_host(host: str) -> str:
    """Where a registry's distribution API answers: Docker Hub's is not ``docker.io``."""
    host = canonical_host(host)
    return DOCKER_HUB_API if host == DOCKER_HUB else host


@dataclass(frozen=True)
class RetryPolicy:
    """Everything about giving up on a registry host, in one place.

    Per request: ``attempts`` counts the first try; ``budget`` bounds the time one
    request may spend retrying (no retry starts after it). Sleeps are
    ``uniform(0, min(cap, base * 2**n))``, or the server's ``Retry-After`` capped at
    ``retry_after_cap``.

    Per step (a copy, a tag move, a record write, an observation read): a step whose
    request still failed is run again, with backoff, for up to ``step_budget`` seconds.

    Per host (the breaker): once ``dead_after_failures`` requests in a row failed
    (connection errors, timeouts, 5xx; never a 429, which is an answer) or failures
    with no success in between span ``dead_after`` seconds, the host is down: nothing
    is retried against it and every pending request fails at once with one error
    naming the host and what it last answered. After ``probe_after`` seconds one
    request is let through to probe it; a success closes the breaker. A host that
    answers some requests never trips it.
    """

    attempts: int = DEFAULT_ATTEMPTS
    base: float = 0.2
    cap: float = 5.0
    retry_after_cap: float = 30.0
    budget: float = 120.0
    step_budget: float = 300.0
    dead_after: float = 30.0
    dead_after_failures: int = 20
    probe_after: float = 5.0


@dataclass(frozen=True)
class HostConfig:
    """How to talk to one registry host.

    ``ca_pem`` is extra trust for this host (PEM bytes: a ``caFile`` read from the
    state repository's tree); ``ca_file`` is the same as a local path, for library
    use. Either adds to the system store and ``SSL_CERT_FILE``/``SSL_CERT_DIR``/
    ``REQUESTS_CA_BUNDLE``; neither replaces them.
    """

    plain_http: bool = False
    ca_file: str | None = None
    ca_pem: bytes | None = field(default=None, repr=False)
    concurrency: int = DEFAULT_CONCURRENCY
    requests_per_second: float | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise Stalled(f"registry concurrency must be >= 1, got {self.concurrency}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise Stalled("registry requestsPerSecond must be > 0")
        if self.retry.attempts < 1:
            raise Stalled("registry attempts must be >= 1")
        if self.retry.dead_after_failures < 1 or self.retry.dead_after <= 0:
            raise Stalled("registry breaker thresholds must be > 0")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise Stalled("registry connectTimeout and readTimeout must be > 0")


@dataclass(frozen=True)
class RegistrySettings:
    """Host (``host[:port]``) -> :class:`HostConfig`; unknown hosts get ``default``.

    ``docker_config`` overrides the directory holding ``config.json`` (otherwise
    ``$DOCKER_CONFIG``, then ``~/.docker``); ``auth_file`` is an auth file consulted
    before every other source (``--authfile``); ``certs_dirs`` overrides where
    per-host client certificates are looked for (Docker's ``certs.d`` layout).
    """

    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    default: HostConfig = field(default_factory=HostConfig)
    docker_config: str | None = None
    auth_file: str | None = None
    certs_dirs: tuple[str, ...] | None = None

    def for_host(self, host: str) -> HostConfig:
        """The host's configuration, matched however the host is spelled (``docker.io`` or
        ``index.docker.io``), else ``default``."""
        found = self.hosts.get(host)
        if found is None:
            wanted = canonical_host(host)
            found = next((c for h, c in self.hosts.items() if canonical_host(h) == wanted), None)
        return found or self.default
