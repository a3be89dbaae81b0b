"""The daemon's pure edges: webhook proof, --listen parsing, secret loading, JSON logs."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
from pathlib import Path

import pytest

from reconciler.daemon.deliveries import Deliveries, delivery_id
from reconciler.daemon.logs import JsonFormatter
from reconciler.daemon.options import (
    SECRET_ENV,
    add_arguments,
    is_loopback,
    parse_listen,
    read_secret,
    webhook_authorized,
)
from reconciler.errors import Stalled

SECRET = b"0123456789abcdef-secret"
BODY = b'{"ref":"refs/heads/main"}'


def github(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_github_signature_over_the_exact_body_is_accepted() -> None:
    assert webhook_authorized(SECRET, BODY, github(BODY), None)


@pytest.mark.parametrize(
    "signature",
    [
        github(BODY, b"another secret"),
        github(BODY + b" "),  # signed another body
        github(BODY).removeprefix("sha256="),  # no algorithm prefix
        "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(),
        "",
        "sha256=é",  # not ASCII: refused, not a crash
    ],
)
def test_bad_github_signatures_are_refused(signature: str) -> None:
    assert not webhook_authorized(SECRET, BODY, signature, None)


def test_gitea_signature_is_the_bare_hex_hmac_of_the_exact_body() -> None:
    bare = github(BODY).removeprefix("sha256=")
    assert webhook_authorized(SECRET, BODY, None, None, bare)
    assert not webhook_authorized(SECRET, BODY + b" ", None, None, bare)
    assert not webhook_authorized(SECRET, BODY, None, None, github(BODY))  # not GitHub's form
    assert not webhook_authorized(SECRET, BODY, None, None, "é")
    assert not webhook_authorized(SECRET, BODY, None, SECRET.decode(), "00")  # no rescue


def test_gitlab_token_must_equal_the_secret() -> None:
    assert webhook_authorized(SECRET, BODY, None, SECRET.decode())
    assert not webhook_authorized(SECRET, BODY, None, "guess")
    assert not webhook_authorized(SECRET, BODY, None, "")


def test_no_proof_or_no_secret_is_refused() -> None:
    assert not webhook_authorized(SECRET, BODY, None, None)
    assert not webhook_authorized(b"", BODY, github(BODY, b""), "")


def test_a_bad_signature_is_not_rescued_by_a_good_token() -> None:
    assert not webhook_authorized(SECRET, BODY, "sha256=00", SECRET.decode())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9090", ("127.0.0.1", 9090)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),  # noqa: S104
        ("[::1]:9090", ("::1", 9090)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9090", "example.org:9090", "127.0.0.1:x", "1.2.3.4:70000"])
def test_listen_addresses_refused(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(value)


def test_default_listen_is_loopback_only() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert is_loopback(args.listen[0])
    assert not is_loopback("0.0.0.0") and is_loopback("::1")  # noqa: S104
    assert (args.interval, args.jitter, args.log_format) == (60.0, 0.1, "text")


def test_secret_from_file_is_stripped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-the-environment-0123")
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    assert read_secret(path) == SECRET  # the file wins


def test_secret_from_environment_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert read_secret(None) is None
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    assert read_secret(None) == SECRET


def test_empty_or_missing_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Stalled, match="empty"):
        read_secret(tmp_path / "empty")
    with pytest.raises(Stalled, match="cannot read"):
        read_secret(tmp_path / "missing")


def test_json_log_lines_carry_the_daemon_fields() -> None:
    record = logging.LogRecord(
        "reconciler.daemon", logging.INFO, "f", 1, "%s: applied", ("dev",), None
    )
    record.event, record.environment = "applied", "dev"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "dev: applied"
    assert (doc["level"], doc["event"], doc["environment"]) == ("info", "applied", "dev")


def test_deliveries_remember_ids_and_bodies_for_the_horizon_within_capacity() -> None:
    now = [0.0]
    seen = Deliveries(horizon=60.0, capacity=3, clock=lambda: now[0])
    assert seen.first("a", b"1")  # control
    assert not seen.first("a", b"2") and not seen.first("b", b"1")
    assert seen.first("b", b"2")
    now[0] = 61.0  # past the horizon: forgotten
    assert seen.first("a", b"1")
    for i in range(10):  # over capacity: the oldest are forgotten first, never the newest
        assert seen.first(f"x{i}", f"x{i}".encode())
    assert not seen.first("x9", b"new") and seen.first("x0", b"x0")


def test_the_delivery_id_comes_from_any_forge_header() -> None:
    assert delivery_id({"X-GitHub-Delivery": " 72d3162e "}) == "72d3162e"
    assert delivery_id({"X-Gitea-Delivery": "g"}) == "g"
    assert delivery_id({"X-Gitlab-Event-UUID": "l"}) == "l"
    assert delivery_id({"Idempotency-Key": "k"}) == "k"
    assert delivery_id({"X-Reconciler-Delivery": "ours"}) is None  # a notification's: no
    assert delivery_id({"X-GitHub-Delivery": "x" * 201}) is None
    assert delivery_id({}) is None
