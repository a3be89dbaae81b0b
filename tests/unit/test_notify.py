"""Notifications against a real HTTP receiver on loopback: bodies per format, the HMAC,
retries with backoff, no retry on 4xx, nothing unsigned, nothing secret in the log,
never blocking, and once per transition."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import socket
import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest

from reconciler.daemon.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BadSignature,
    Notification,
    Notifier,
    RetryPolicy,
    sign,
    verify,
)
from reconciler.engine.apply import ApplyResult
from reconciler.engine.reconcile import EnvOutcome, Status
from reconciler.errors import ReconcilerError, Stalled, Transient
from reconciler.model import (
    Action,
    Change,
    DesiredState,
    Drift,
    Environment,
    EnvPlan,
    NotifyTarget,
    Settings,
)
from reconciler.verify import Refused, Rule, Waiting
from tests.support.receiver import Receiver, receiving

SECRET = "a-notification-secret-0123456789"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as state:
        yield state


def notifier(*targets: NotifyTarget, **env: str) -> Notifier:
    n = Notifier(
        "reconciler/test@host",
        "https://git.example/state.git",
        RetryPolicy(attempts=4, base=0.05, cap=0.2, timeout=2.0),
        environ={"RECONCILER_NOTIFY_SECRET": SECRET, **env},
        allow_private=True,  # the receiver is on loopback
    )
    n.configure(targets)
    return n


def event(kind: str = "applied") -> Notification:
    return Notification(
        kind, "prod: applied shop v1.2", "prod", "example.org/shop", "v1.2", "c" * 40
    )


def test_bodies_per_format_and_the_hmac_a_receiver_can_check(receiver: Receiver) -> None:
    n = notifier(
        NotifyTarget(receiver.url + "/generic", secret_env="RECONCILER_NOTIFY_SECRET"),
        NotifyTarget(receiver.url + "/slack", format="slack"),
        NotifyTarget(
            receiver.url + "/ce", format="cloudevents", secret_env="RECONCILER_NOTIFY_SECRET"
        ),
        NotifyTarget(receiver.url + "/only-failures", events=("failed",)),
    )
    assert n.send(event()) == 3
    assert n.flush(10)
    got = {path: (headers, body) for path, headers, body, _ in receiver.got}
    assert set(got) == {"/generic", "/slack", "/ce"}

    headers, body = got["/generic"]
    signed = headers[TIMESTAMP_HEADER].encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 60
    verify(SECRET.encode(), body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Reconciler-Event"] == "applied"
    doc = json.loads(body)
    assert doc["event"] == "applied" and doc["environment"] == "prod"
    assert doc["release"] == "v1.2" and doc["commit"] == "c" * 40
    assert doc["repository"] == "https://git.example/state.git"
    assert headers["X-Reconciler-Delivery"] == doc["id"]

    headers, body = got["/slack"]
    assert SIGNATURE_HEADER not in headers  # no secretEnv: unsigned, as Slack expects
    assert json.loads(body) == {"text": ":white_check_mark: prod: applied shop v1.2"}

    headers, body = got["/ce"]
    assert headers["Content-Type"] == "application/cloudevents+json"
    ce = json.loads(body)
    assert ce["specversion"] == "1.0" and ce["type"] == "dev.reconciler.applied"
    assert ce["subject"] == "prod" and ce["data"]["summary"] == "prod: applied shop v1.2"
    verify(SECRET.encode(), body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    n.close()


def test_5xx_and_429_are_retried_with_growing_delays(receiver: Receiver) -> None:
    receiver.statuses = [500, 429, 503]
    n = notifier(NotifyTarget(receiver.url + "/hook", secret_env="RECONCILER_NOTIFY_SECRET"))
    n.send(event())
    assert n.flush(10)
    assert len(receiver.got) == 4 and n.sent == 1 and n.dropped == 0
    times = [t for *_, t in receiver.got]
    assert all(b > a for a, b in itertools.pairwise(times))
    bodies = {body for _, _, body, _ in receiver.got}
    assert len(bodies) == 1  # the same delivery, byte for byte
    n.close()


def test_4xx_is_not_retried_and_no_url_secret_reaches_the_log(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [404]
    secret_url = receiver.url + "/services/T000/B000/XXXXSECRETXXXX"
    n = notifier(
        NotifyTarget(None, url_env="RECONCILER_NOTIFY_SLACK"),
        RECONCILER_NOTIFY_SLACK=secret_url + "?token=abc",
    )
    with caplog.at_level(logging.DEBUG, logger="reconciler"):
        n.send(event("failed"))
        assert n.flush(10)
        n.close()
    assert len(receiver.got) == 1 and n.dropped == 1
    assert receiver.got[0][0] == "/services/T000/B000/XXXXSECRETXXXX?token=abc"
    assert "refused (HTTP 404)" in caplog.text
    assert "SECRET" not in caplog.text and "token" not in caplog.text


def test_a_receiver_that_is_down_is_given_up_on_without_leaking_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = notifier(NotifyTarget("http://127.0.0.1:9/hook/XXXXSECRETXXXX"))
    with caplog.at_level(logging.WARNING, logger="reconciler"):
        n.send(event())
        assert n.flush(10)
        n.close()
    assert n.dropped == 1 and "failed 4 times (ConnectionError)" in caplog.text
    assert "SECRET" not in caplog.text


def test_an_unset_secret_stops_the_receiver_instead_of_sending_unsigned(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    n = notifier(NotifyTarget(receiver.url, secret_env="RECONCILER_NOTIFY_NOT_SET"))
    with caplog.at_level(logging.WARNING, logger="reconciler"):
        assert n.send(event()) == 0
        assert n.send(event()) == 0
        n.close()
    assert receiver.got == []
    assert (
        caplog.text.count("$RECONCILER_NOTIFY_NOT_SET, the secret that signs them, is unset") == 1
    )


def test_a_slow_receiver_never_blocks_the_sender(receiver: Receiver) -> None:
    receiver.delay = 1.5
    n = notifier(NotifyTarget(receiver.url))
    started = time.monotonic()
    for _ in range(5):
        n.send(event())
    assert time.monotonic() - started < 0.5
    n.close(timeout=0.2)  # shutting down does not wait for the slow receiver either
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- transitions


def state(target: NotifyTarget) -> DesiredState:
    return DesiredState(
        commit="c" * 40,
        tree="t" * 40,
        proposed_settings=Settings(notify=(target,)),
        catalogs=MappingProxyType({}),
        environments=MappingProxyType({"prod": Environment("prod", "example.org/shop", "v1.2")}),
        tags=MappingProxyType({}),
        policies=MappingProxyType({}),
    )


def outcome(status: Status, error: ReconcilerError | None = None, **kw: object) -> EnvOutcome:
    return EnvOutcome("prod", status, error=error, **kw)  # type: ignore[arg-type]


def drift_plan(drift: Drift) -> EnvPlan:
    change = Change(Action.UPDATE, "r.example/shop", "prod-web", D2, D1, drift, "web")
    return EnvPlan("prod", "example.org/shop", "v1.2", (change,), True)


def test_once_per_transition_not_once_per_pass(receiver: Receiver) -> None:
    n = notifier(NotifyTarget(receiver.url))
    s = state(NotifyTarget(receiver.url))
    sequence = [
        outcome(Status.IN_SYNC),  # nothing happened
        outcome(Status.FAILED, Transient("registry down (attempt 1)")),  # failed
        outcome(Status.FAILED, Transient("registry down (attempt 2)")),  # still: nothing
        outcome(Status.IN_SYNC),  # recovered
        outcome(Status.IN_SYNC),  # nothing
        outcome(Status.REFUSED, Refused(Rule.SIGNATURES, "no signature for web")),  # refused
        outcome(Status.REFUSED, Refused(Rule.SIGNATURES, "no signature for web")),  # nothing
        outcome(Status.REFUSED, Refused(Rule.HAZARDS, "v1.2 has hazards")),  # refused: new reason
        outcome(Status.REFUSED, Waiting(Rule.REQUIRES, "staging runs v1.1")),  # waiting: nothing
        outcome(Status.FAILED, Stalled("invalid state")),  # failed
        outcome(Status.APPLIED, note="prod promoted from v1.1 to v1.2", applied=ApplyResult(["a"])),
        outcome(Status.APPLIED, plan=drift_plan(Drift.FOREIGN), applied=ApplyResult(["prod-web"])),
        outcome(Status.IN_SYNC),  # nothing: the last failure was already recovered from
    ]
    kinds = [e.kind if (e := n.outcome(s, o)) else None for o in sequence]
    assert kinds == [
        None, "failed", None, "recovered", None, "refused", None, "refused", None, "failed",
        "applied", "drift", None,
    ]  # fmt: skip
    assert n.flush(10)
    told = [b["event"] for b in receiver.bodies()]
    # an apply after a failure is a recovery too: both are told, in order
    assert told == [
        "failed", "recovered", "refused", "refused", "failed", "recovered", "applied", "drift"
    ]  # fmt: skip
    drift = next(b for b in receiver.bodies() if b["event"] == "drift")
    assert drift["changes"] == [
        {"tag": "r.example/shop:prod-web", "action": "update", "from": D2, "to": D1,
         "drift": "foreign"}
    ]  # fmt: skip
    n.close()


def test_applied_follows_recovered_and_events_filter(receiver: Receiver) -> None:
    target = NotifyTarget(receiver.url, events=("applied", "refused"))
    n, s = notifier(target), state(target)
    n.outcome(s, outcome(Status.REFUSED, Refused(Rule.SIGNATURES, "unsigned")))
    applied = outcome(Status.APPLIED, note="prod promoted from v1.1 to v1.2")
    assert n.outcome(s, applied) is not None
    assert n.flush(10)
    assert [b["event"] for b in receiver.bodies()] == ["refused", "applied"]
    assert receiver.bodies()[1]["summary"] == (
        "prod: applied example.org/shop v1.2 at commit cccccccccccc (0 tags moved): "
        "prod promoted from v1.1 to v1.2"
    )
    n.close()


def test_the_git_source_fails_and_recovers_once(receiver: Receiver) -> None:
    n = notifier(NotifyTarget(receiver.url))
    n.configure([NotifyTarget(receiver.url)])
    assert n.source(Stalled("invalid desired state: 1 problem")) is not None
    assert n.source(Stalled("invalid desired state: 1 problem")) is None
    assert n.source(None, "d" * 40) is not None
    assert n.source(None, "d" * 40) is None
    assert n.flush(10)
    assert [(b["event"], b["environment"]) for b in receiver.bodies()] == [
        ("failed", "(git)"),
        ("recovered", "(git)"),
    ]
    n.close()


# --------------------------------------------------------------------------- receivers


def test_a_receiver_on_loopback_hears_nothing_without_the_operators_flag(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    allowed = notifier(NotifyTarget(receiver.url + "/hook"))  # control: the flag is given
    allowed.send(event())
    assert allowed.flush(10) and len(receiver.got) == 1
    allowed.close()
    before = receiver.connections

    for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost")):
        n = notifier(NotifyTarget(url + "/hook"))
        n.allow_private = False
        with caplog.at_level(logging.WARNING, logger="reconciler"):
            assert n.send(event()) == 1  # queued; refused where it resolves
            assert n.flush(10)
            n.close()
        assert n.sent == 0 and n.dropped == 1
    assert receiver.connections == before and len(receiver.got) == 1
    assert "is loopback: a notification goes there only when the daemon runs with " in caplog.text
    assert "--notify-allow-private" in caplog.text


def test_a_metadata_address_is_refused_even_with_the_flag_and_never_connected_to(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    connected: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        connected.append(address)
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    n = notifier(
        NotifyTarget("http://169.254.169.254/latest/meta-data/iam"),
        NotifyTarget("http://[fd00:ec2::254]/latest"),
    )
    with caplog.at_level(logging.WARNING, logger="reconciler"):
        n.send(event())
        assert n.flush(10)
        n.close()
    assert connected == [] and n.dropped == 2 and n.sent == 0
    assert caplog.text.count("a cloud metadata endpoint: never a notification receiver") == 2
    assert "meta-data" not in caplog.text  # paths are never logged


def test_dns_rebinding_between_the_check_and_the_connection_gains_nothing(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The name first resolves to a public address (the check), then to loopback (the
    connection): the address actually connected to is checked before a byte is sent."""
    real = socket.getaddrinfo
    answers = itertools.chain([("93.184.216.34",)], itertools.repeat(("127.0.0.1",)))

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> Any:
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        (address,) = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    port = receiver.url.rsplit(":", 1)[1]
    n = notifier(NotifyTarget(f"http://rebind.example:{port}/hook"))
    n.allow_private = False
    with caplog.at_level(logging.WARNING, logger="reconciler"):
        n.send(event())
        assert n.flush(10)
        n.close()
    assert receiver.got == [] and n.sent == 0 and n.dropped == 1
    assert "127.0.0.1 is loopback" in caplog.text


def test_variables_outside_the_notify_prefix_are_never_read(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    n = notifier(
        NotifyTarget(receiver.url, secret_env="RECONCILER_WEBHOOK_SECRET"),
        NotifyTarget(None, url_env="AWS_SECRET_ACCESS_KEY"),
        RECONCILER_WEBHOOK_SECRET=SECRET,
        AWS_SECRET_ACCESS_KEY=receiver.url,
    )
    with caplog.at_level(logging.WARNING, logger="reconciler"):
        assert n.send(event()) == 0
        n.close()
    assert receiver.got == [] and receiver.connections == 0
    assert "starts with RECONCILER_NOTIFY_" in caplog.text and SECRET not in caplog.text


def test_a_receiver_refuses_an_old_a_tampered_or_an_unsigned_notification() -> None:
    body, now = b'{"event":"applied"}', 1_700_000_000
    good = sign(SECRET.encode(), body, str(now))
    verify(SECRET.encode(), body, str(now), good, now=now + 299)  # control
    cases = [
        (body, str(now), good, now + 301, "outside the 300 s window"),
        (body + b" ", str(now), good, now, "does not match"),
        (body, str(now + 1), good, now, "does not match"),
        (body, None, good, now, "unsigned"),
        (body, str(now), None, now, "unsigned"),
        (body, "-5", good, now, "not unix seconds"),
    ]
    for data, stamp, signature, at, fragment in cases:
        with pytest.raises(BadSignature, match=fragment):
            verify(SECRET.encode(), data, stamp, signature, now=at)
