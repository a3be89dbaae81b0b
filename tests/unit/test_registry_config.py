"""Registry settings: defaults in one place, strict parsing."""

from __future__ import annotations

import pytest

from reconciler.errors import Stalled
from reconciler.registry import HostConfig, RegistrySettings, RetryPolicy


def test_unknown_hosts_get_the_default_which_is_tls() -> None:
    settings = RegistrySettings.from_json({"127.0.0.1:5000": {"plainHTTP": True}})
    assert settings.for_host("127.0.0.1:5000").plain_http is True
    assert settings.for_host("127.0.0.1:5001").plain_http is False
    assert settings.for_host("localhost:5000") == HostConfig()


def test_settings_parse_every_key() -> None:
    settings = RegistrySettings.from_json(
        {
            "r.example": {
                "caFile": "/etc/ca.pem",
                "concurrency": 4,
                "requestsPerSecond": 20,
                "connectTimeout": 2,
                "readTimeout": 10,
                "retry": {"attempts": 2, "base": 0.1, "cap": 1, "retryAfterCap": 5},
            }
        }
    )
    host = settings.for_host("r.example")
    assert host.ca_file == "/etc/ca.pem" and host.concurrency == 4
    assert host.retry == RetryPolicy(attempts=2, base=0.1, cap=1, retry_after_cap=5)


@pytest.mark.parametrize(
    "raw",
    [
        {"plainHttp": True},
        {"concurrency": 0},
        {"retry": {"tries": 3}},
        {"requestsPerSecond": -1},
        {"plainHTTP": "yes"},
    ],
)
def test_bad_settings_are_stalled_errors(raw: dict[str, object]) -> None:
    with pytest.raises(Stalled):
        RegistrySettings.from_json({"h": raw})
