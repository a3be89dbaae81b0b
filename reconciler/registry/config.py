"""Per-host registry settings, with every default in one place.

Plain HTTP is never inferred (not even for loopback): a host speaks plain HTTP only
when its settings say ``plainHTTP``, so a typo cannot silently downgrade TLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from reconciler.errors import Stalled


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with full-jitter exponential backoff.

    ``attempts`` counts the first try. Sleeps are ``uniform(0, min(cap, base * 2**n))``,
    or the server's ``Retry-After`` capped at ``retry_after_cap``.
    """

    attempts: int = 4
    base: float = 0.2
    cap: float = 5.0
    retry_after_cap: float = 30.0


@dataclass(frozen=True)
class HostConfig:
    plain_http: bool = False
    ca_file: str | None = None
    concurrency: int = 8
    requests_per_second: float | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise Stalled(f"registry concurrency must be >= 1, got {self.concurrency}")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise Stalled("registry requestsPerSecond must be > 0")
        if self.retry.attempts < 1:
            raise Stalled("registry retry attempts must be >= 1")


_JSON_KEYS = {
    "plainHTTP": "plain_http",
    "caFile": "ca_file",
    "concurrency": "concurrency",
    "requestsPerSecond": "requests_per_second",
    "connectTimeout": "connect_timeout",
    "readTimeout": "read_timeout",
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "plainHTTP": bool,
    "caFile": str,
    "concurrency": int,
    "requestsPerSecond": (int, float),
    "connectTimeout": (int, float),
    "readTimeout": (int, float),
}
_TYPE_NAMES = {
    "plainHTTP": "true or false",
    "caFile": "a file path",
    "concurrency": "an integer",
    "requestsPerSecond": "a number",
    "connectTimeout": "seconds",
    "readTimeout": "seconds",
}
_RETRY_KEYS = {f.name: f.name for f in fields(RetryPolicy)} | {"retryAfterCap": "retry_after_cap"}


@dataclass(frozen=True)
class RegistrySettings:
    """Host (``host[:port]``) -> :class:`HostConfig`; unknown hosts get ``default``.

    ``docker_config`` overrides the directory holding ``config.json`` (otherwise
    ``$DOCKER_CONFIG``, then ``~/.docker``).
    """

    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    default: HostConfig = field(default_factory=HostConfig)
    docker_config: str | None = None

    def for_host(self, host: str) -> HostConfig:
        return self.hosts.get(host, self.default)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "registries") -> RegistrySettings:
        """Parse ``{"host": {"plainHTTP": true, "caFile": ..., "retry": {...}}}``."""
        hosts: dict[str, HostConfig] = {}
        for host, raw in obj.items():
            if not isinstance(raw, Mapping):
                raise Stalled(f"{where}.{host}: expected an object")
            hosts[host] = _host_from_json(raw, f"{where}.{host}")
        return cls(hosts=hosts)


def _host_from_json(raw: Mapping[str, Any], where: str) -> HostConfig:
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "retry":
            if not isinstance(value, Mapping):
                raise Stalled(f"{where}.retry: expected an object")
            unknown = set(value) - set(_RETRY_KEYS)
            if unknown:
                raise Stalled(f"{where}.retry: unknown keys {sorted(unknown)}")
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
            ):
                raise Stalled(f"{where}.retry: values must be numbers")
            kwargs["retry"] = RetryPolicy(**{_RETRY_KEYS[k]: v for k, v in value.items()})
        elif key in _JSON_KEYS:
            expected = _TYPES[key]
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise Stalled(f"{where}.{key}: expected {_TYPE_NAMES[key]}, got {value!r}")
            kwargs[_JSON_KEYS[key]] = value
        else:
            raise Stalled(
                f"{where}: unknown key {key!r}",
                f"known keys: {', '.join(sorted([*_JSON_KEYS, 'retry']))}",
            )
    return HostConfig(**kwargs)
