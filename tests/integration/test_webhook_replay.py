"""``/hooks/git`` refuses replays (issue 20, attack 6): a forge's delivery id and the
body are remembered, and a notification the reconciler signed with the same secret is
never a git webhook. Against the daemon's real HTTP server and a real notifier."""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reconciler.daemon import server as daemon_server
from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notification, Notifier
from reconciler.daemon.options import HOOK_PATH
from reconciler.daemon.service import Daemon
from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.git import GitSource
from reconciler.model import NotifyTarget
from tests.support.receiver import receiving

SECRET = "the-webhook-secret-0123456789abcdef"
PUSH = b'{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}'


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[daemon_server._Server, Daemon]]:
    reconciler = Reconciler(GitSource(str(tmp_path)), Loader(tmp_path / "cache"))
    daemon = Daemon(reconciler, BackoffPolicy(1.0, 2.0, 60.0))
    httpd = daemon_server._Server(("127.0.0.1", 0), daemon, SECRET.encode(), 60.0)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, daemon
    httpd.shutdown()
    httpd.server_close()


def post(httpd: daemon_server._Server, body: bytes, headers: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{httpd.server_address[1]}{HOOK_PATH}"
    return requests.post(url, data=body, headers=headers, timeout=5).status_code


def github(body: bytes, delivery: str | None = None) -> dict[str, str]:
    """What GitHub sends: the body's HMAC and a delivery GUID (neither signs a time)."""
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": signature,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "Content-Type": "application/json",
    }


def triggered(daemon: Daemon) -> bool:
    """Whether a pass was asked for since the last call."""
    asked, daemon._forced = daemon._forced, False
    return asked


def test_a_captured_notification_is_never_accepted_as_a_git_webhook(
    server: tuple[daemon_server._Server, Daemon],
) -> None:
    httpd, daemon = server
    assert post(httpd, PUSH, github(PUSH)) == 202 and triggered(daemon)  # control

    # The notifier signs with the same secret (an operator reusing the value).
    with receiving() as attacker:
        notifier = Notifier(
            "reconciler/test",
            "https://git.example/state.git",
            environ={"RECONCILER_NOTIFY_SECRET": SECRET},
            allow_private=True,
        )
        notifier.configure([NotifyTarget(attacker.url, secret_env="RECONCILER_NOTIFY_SECRET")])
        notifier.send(Notification("refused", "dev: refused", "dev", reason="unsigned commit"))
        assert notifier.flush(10)
        notifier.close()
        [(_, headers, body, _)] = attacker.got
    captured = headers[SIGNATURE_HEADER]
    replays = [
        # the body and signature as captured, under GitHub's header names
        (body, {**github(body), "X-Hub-Signature-256": captured}),
        # ... with the delivery id the notification carried
        (body, {"X-Hub-Signature-256": captured, "X-GitHub-Delivery": headers[
            "X-Reconciler-Delivery"]}),
        # the signed bytes themselves (timestamp.body) as the body: not a JSON object
        (headers[TIMESTAMP_HEADER].encode() + b"." + body,
         {**github(body), "X-Hub-Signature-256": captured}),
    ]  # fmt: skip
    for data, replay in replays:
        assert post(httpd, data, replay) in (400, 401)
        assert not triggered(daemon)
    webhooks = daemon.metrics.webhooks
    assert webhooks.labels("unauthorized")._value.get() == 2
    assert webhooks.labels("bad_request")._value.get() == 1


def test_a_replayed_webhook_is_refused_however_it_is_dressed(
    server: tuple[daemon_server._Server, Daemon],
) -> None:
    httpd, daemon = server
    first = github(PUSH)
    assert post(httpd, PUSH, first) == 202 and triggered(daemon)  # control

    assert post(httpd, PUSH, first) == 409  # verbatim
    assert post(httpd, PUSH, github(PUSH)) == 409  # the same body, a fresh delivery id
    other = PUSH.replace(b"0123", b"4567")
    assert post(httpd, other, github(other, first["X-GitHub-Delivery"])) == 409  # same id
    same_id = {**github(other), "X-Gitea-Delivery": first["X-GitHub-Delivery"]}
    del same_id["X-GitHub-Delivery"]
    assert post(httpd, other, same_id) == 409  # the id under another forge's header
    without_id = github(other)
    del without_id["X-GitHub-Delivery"]
    assert post(httpd, other, without_id) == 400
    form = b"payload=" + PUSH
    assert post(httpd, form, github(form)) == 400  # GitHub's form encoding: not JSON
    assert not triggered(daemon)
    assert daemon.metrics.webhooks.labels("replayed")._value.get() == 4

    # A new push (GitHub, then GitLab with its event UUID and token) is accepted once.
    assert post(httpd, other, github(other)) == 202 and triggered(daemon)
    gitlab = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    assert post(httpd, b'{"object_kind":"push"}', gitlab) == 202 and triggered(daemon)
    assert post(httpd, b'{"object_kind":"push"}', gitlab) == 409 and not triggered(daemon)
