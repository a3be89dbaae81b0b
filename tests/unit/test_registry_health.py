"""The per-host breaker opens on a host that answers nothing but failures, never on one
that answers some requests; steps are retried, except on a host that is down."""

from __future__ import annotations

import pytest

from reconciler.errors import Transient
from reconciler.registry import HostDown, RegistryUnavailable, RetryPolicy
from reconciler.registry.health import HostHealth
from reconciler.registry.steps import StepRetry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


POLICY = RetryPolicy(dead_after=30.0, dead_after_failures=20, probe_after=10.0)


def health(clock: Clock) -> HostHealth:
    return HostHealth("registry.example:5000", POLICY, clock)


def test_twenty_failures_in_a_row_open_the_breaker_with_one_error_naming_the_host() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(19):
        h.failure("HTTP 500 (UNKNOWN: boom)")
        h.check()  # still closed
    h.failure("HTTP 500 (UNKNOWN: boom)")
    with pytest.raises(HostDown) as first:
        h.check()
    with pytest.raises(HostDown) as second:
        h.check()
    assert first.value is second.value  # one error for everything pending
    assert isinstance(first.value, Transient)
    assert "registry.example:5000 is down" in first.value.message
    assert "HTTP 500 (UNKNOWN: boom)" in first.value.message
    assert h.trips == 1


def test_failures_spanning_the_dead_time_open_it_with_fewer_attempts() -> None:
    clock = Clock()
    h = health(clock)
    h.failure("Read timed out")
    clock.now += 29.0
    h.failure("Read timed out")
    h.check()
    clock.now += 1.0
    h.failure("Read timed out")
    with pytest.raises(HostDown, match="Read timed out"):
        h.check()


def test_a_host_that_answers_some_requests_never_opens_it() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(1000):
        h.failure("HTTP 503")
        h.failure("HTTP 503")
        clock.now += 1.0
        h.success()
    h.check()
    assert h.trips == 0 and not h.is_open


def test_after_the_probe_time_one_request_probes_and_a_success_closes_it() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(20):
        h.failure("Connection reset")
    clock.now += 10.0
    h.check()  # this one is the probe
    with pytest.raises(HostDown):
        h.check()  # the others still fail fast
    h.success()
    h.check()
    assert not h.is_open


def test_a_failed_probe_keeps_it_open() -> None:
    clock = Clock()
    h = health(clock)
    for _ in range(20):
        h.failure("Connection reset")
    clock.now += 10.0
    h.check()
    h.failure("Connection reset")
    with pytest.raises(HostDown):
        h.check()


def test_a_step_is_retried_on_transient_errors_but_not_on_a_host_that_is_down() -> None:
    slept: list[float] = []
    retry = StepRetry(60.0, slept.append)
    calls = {"flaky": 0, "down": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RegistryUnavailable("HTTP 503 after 8 attempts")
        return "ok"

    def down() -> str:
        calls["down"] += 1
        raise HostDown("registry r is down")

    assert retry("read", flaky) == "ok"
    assert len(slept) == 2
    with pytest.raises(HostDown):
        retry("read", down)
    assert calls["down"] == 1


def test_a_step_gives_up_at_its_deadline() -> None:
    retry = StepRetry(0.0, lambda _: None)
    calls = []

    def failing() -> None:
        calls.append(1)
        raise RegistryUnavailable("HTTP 503 after 8 attempts")

    with pytest.raises(RegistryUnavailable):
        retry("move", failing)
    assert len(calls) == 1
