"""The daemon's per-environment backoff state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from reconciler.daemon.backoff import Backoff, BackoffPolicy, Health
from reconciler.errors import Stalled

POLICY = BackoffPolicy(base=2.0, cap=30.0, stalled_retry=600.0)
COMMIT_A = ("commit-a", "policy-1")
COMMIT_B = ("commit-b", "policy-1")


def ceiling_rand(low: float, high: float) -> float:
    """Full jitter at its worst case: always the ceiling."""
    return high


def test_a_healthy_environment_is_due_every_pass() -> None:
    backoff = Backoff(POLICY)
    assert backoff.due(0.0, COMMIT_A) and backoff.due(0.0, COMMIT_A)
    assert backoff.succeeded() is False  # nothing to recover from: no log line


def test_transient_failures_back_off_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(POLICY, rand=ceiling_rand)
    now, waits = 0.0, []
    for _ in range(7):
        backoff.transient(now, COMMIT_A, "registry unavailable")
        assert backoff.health is Health.BACKOFF
        waits.append(backoff.not_before - now)
        now = backoff.not_before
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_transient_delay_is_full_jitter_between_zero_and_the_ceiling() -> None:
    seen: list[tuple[float, float]] = []

    def rand(low: float, high: float) -> float:
        seen.append((low, high))
        return (low + high) / 2

    backoff = Backoff(POLICY, rand=rand)
    backoff.transient(100.0, COMMIT_A, "x")
    backoff.transient(100.0, COMMIT_A, "x")
    assert seen == [(0.0, 2.0), (0.0, 4.0)]
    assert backoff.not_before == 102.0


def test_backoff_waits_until_its_time_then_is_due() -> None:
    backoff = Backoff(POLICY, rand=ceiling_rand)
    backoff.transient(10.0, COMMIT_A, "503")
    assert not backoff.due(11.9, COMMIT_A)
    assert backoff.due(12.0, COMMIT_A)


def test_a_new_commit_ends_a_transient_wait_at_once_but_keeps_the_failure_count() -> None:
    backoff = Backoff(POLICY, rand=ceiling_rand)
    backoff.transient(0.0, COMMIT_A, "503")
    backoff.transient(0.0, COMMIT_A, "503")
    assert backoff.due(0.1, COMMIT_B)
    backoff.transient(0.1, COMMIT_B, "503")
    assert backoff.not_before == pytest.approx(8.1)


def test_only_the_first_transient_failure_is_a_transition() -> None:
    backoff = Backoff(POLICY)
    assert backoff.transient(0.0, COMMIT_A, "GET failed after 4 attempts") is True
    assert backoff.transient(5.0, COMMIT_A, "HEAD failed after 2 attempts") is False


def test_recovery_is_reported_once() -> None:
    backoff = Backoff(POLICY)
    backoff.transient(0.0, COMMIT_A, "503")
    assert backoff.succeeded() is True
    assert backoff.health is Health.OK and backoff.failures == 0
    assert backoff.succeeded() is False
    backoff.transient(50.0, COMMIT_A, "503")
    assert backoff.not_before <= 50.0 + POLICY.base  # the count started over


def test_stalled_waits_for_a_new_commit_not_for_time() -> None:
    backoff = Backoff(POLICY)
    assert backoff.stalled(0.0, COMMIT_A, "refused (signature): no signature") is True
    assert backoff.health is Health.STALLED
    for now in (1.0, 60.0, 599.0):
        assert not backoff.due(now, COMMIT_A)
    assert backoff.due(1.0, COMMIT_B)


def test_stalled_wakes_on_a_policy_change_of_the_same_commit() -> None:
    backoff = Backoff(POLICY)
    backoff.stalled(0.0, ("commit-a", "policy-1"), "refused")
    assert backoff.due(1.0, ("commit-a", "policy-2"))


def test_stalled_is_retried_after_the_safety_interval() -> None:
    """A signature pushed to the registry later cannot announce itself through git."""
    backoff = Backoff(POLICY)
    backoff.stalled(0.0, COMMIT_A, "refused (signature): no signature")
    assert backoff.due(600.0, COMMIT_A)
    assert backoff.stalled(600.0, COMMIT_A, "refused (signature): no signature") is False
    assert not backoff.due(601.0, COMMIT_A)


def test_stalled_with_a_new_reason_is_a_transition() -> None:
    backoff = Backoff(POLICY)
    backoff.stalled(0.0, COMMIT_A, "refused (signature)")
    assert backoff.stalled(1.0, COMMIT_B, "refused (hazards)") is True


def test_transient_after_stalled_is_a_transition_and_clears_the_stall() -> None:
    backoff = Backoff(POLICY, rand=ceiling_rand)
    backoff.stalled(0.0, COMMIT_A, "refused")
    assert backoff.transient(1.0, COMMIT_B, "503") is True
    assert backoff.health is Health.BACKOFF and backoff.due(3.0, COMMIT_B)


def test_waiting_on_another_environment_is_due_every_pass_and_logged_once() -> None:
    backoff = Backoff(POLICY)
    assert backoff.waiting(COMMIT_A, "refused (requires): staging runs v1.1") is True
    assert backoff.due(0.0, COMMIT_A)
    assert backoff.waiting(COMMIT_A, "refused (requires): staging runs v1.1") is False
    assert backoff.succeeded() is True


def test_unknown_inputs_only_look_at_the_clock() -> None:
    backoff = Backoff(POLICY, rand=ceiling_rand)
    backoff.transient(0.0, None, "cannot fetch")
    assert not backoff.due(1.0)
    assert backoff.due(2.0)


@pytest.mark.parametrize(
    ("base", "cap", "stalled"), [(0.0, 1.0, 1.0), (5.0, 1.0, 1.0), (1.0, 2.0, 0.0)]
)
def test_invalid_policy_is_refused(base: float, cap: float, stalled: float) -> None:
    with pytest.raises(Stalled):
        BackoffPolicy(base, cap, stalled)
