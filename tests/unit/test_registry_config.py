"""Registry settings: defaults in one place, Docker Hub's names, strict values."""

from __future__ import annotations

import pytest

from reconciler.errors import Stalled
from reconciler.registry import DEFAULT_CONCURRENCY, HostConfig, RegistrySettings, RetryPolicy
from reconciler.registry.config import api_host, canonical_host


def test_unknown_hosts_get_the_default_which_is_tls() -> None:
    settings = RegistrySettings(hosts={"127.0.0.1:5000": HostConfig(plain_http=True)})
    assert settings.for_host("127.0.0.1:5000").plain_http is True
    assert settings.for_host("127.0.0.1:5001").plain_http is False
    assert settings.for_host("localhost:5000") == HostConfig()


def test_the_default_concurrency_matches_the_threads_that_feed_a_host() -> None:
    assert HostConfig().concurrency == DEFAULT_CONCURRENCY == 16


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_has_one_name_and_its_api_elsewhere(name: str) -> None:
    assert canonical_host(name) == "docker.io"
    assert api_host(name) == "registry-1.docker.io"
    settings = RegistrySettings(hosts={"index.docker.io": HostConfig(concurrency=3)})
    assert settings.for_host(name).concurrency == 3


def test_other_hosts_are_their_own_api() -> None:
    assert api_host("ghcr.io") == "ghcr.io"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 0},
        {"requests_per_second": -1},
        {"retry": RetryPolicy(attempts=0)},
        {"connect_timeout": 0},
        {"read_timeout": -1},
    ],
)
def test_bad_values_are_stalled_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(Stalled):
        HostConfig(**kwargs)  # type: ignore[arg-type]
