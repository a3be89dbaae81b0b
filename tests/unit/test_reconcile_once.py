"""A pass computes shared lookups once, but keeps no failure: each environment that
needs a lookup that failed makes its own attempt."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.engine.environment import Once as _Once
from reconciler.errors import Transient


def test_a_value_is_computed_once() -> None:
    once, calls = _Once(), []
    for _ in range(3):
        assert once.get("k", lambda: calls.append(1) or len(calls)) == 1
    assert calls == [1]


def test_a_failure_is_not_kept_for_the_next_caller() -> None:
    once, calls = _Once(), []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Transient("503")
        return "tags"

    with pytest.raises(Transient):
        once.get("tags", flaky)
    assert once.get("tags", flaky) == "tags"
    assert once.get("tags", flaky) == "tags" and len(calls) == 2


def test_callers_waiting_on_a_failed_attempt_each_try_themselves() -> None:
    once = _Once()
    started, release = threading.Event(), threading.Event()
    attempts: list[str] = []
    lock = threading.Lock()

    def compute() -> str:
        with lock:
            attempts.append(threading.current_thread().name)
            first = len(attempts) == 1
        if first:
            started.set()
            release.wait(5)
            raise Transient("the shared lookup failed once")
        return "ok"

    results: dict[str, object] = {}

    def worker(name: str) -> None:
        try:
            results[name] = once.get("k", compute)
        except Transient as exc:
            results[name] = exc

    first = threading.Thread(target=worker, args=("first",), name="first")
    first.start()
    started.wait(5)
    others = [threading.Thread(target=worker, args=(f"w{n}",), name=f"w{n}") for n in range(3)]
    for thread in others:
        thread.start()
    time.sleep(0.1)  # they wait on the first attempt
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert isinstance(results["first"], Transient)
    assert all(results[f"w{n}"] == "ok" for n in range(3))
