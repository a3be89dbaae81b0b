"""The daemon's HTTP server against slow and numerous clients: a whole-request deadline
and a bounded number of requests served at once."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reconciler.daemon import options
from reconciler.daemon import server as daemon_server
from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.options import HOOK_PATH
from reconciler.daemon.service import Daemon
from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.git import GitSource

SECRET = b"webhook-secret-for-limits"
DEADLINE = 1.0
WORKERS = 3


class Server(daemon_server._Server):
    request_deadline = DEADLINE
    workers = WORKERS


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, Daemon]]:
    reconciler = Reconciler(GitSource(str(tmp_path)), Loader(tmp_path / "cache"))
    daemon = Daemon(reconciler, BackoffPolicy(1.0, 2.0, 60.0))
    httpd = Server(("127.0.0.1", 0), daemon, SECRET, 60.0)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, daemon
    httpd.shutdown()
    httpd.server_close()


def url(httpd: Server, path: str) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def slow_client(httpd: Server, length: int = 4096) -> socket.socket:
    """Sends a webhook's headers and then nothing: a thread would wait on it forever."""
    sock = socket.create_connection(("127.0.0.1", httpd.server_address[1]))
    sock.sendall(
        f"POST {HOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        "X-Hub-Signature-256: sha256=00\r\n\r\n".encode()
    )
    return sock


def closed_within(sock: socket.socket, seconds: float, trickle: bool = False) -> float:
    """Seconds until the server closed the connection (trickling a byte now and then)."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < seconds:
        try:
            if trickle:
                sock.sendall(b"x")
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
        if data == b"" or b"HTTP/" in data:
            return time.monotonic() - start
    raise AssertionError(f"the server still held the connection after {seconds} s")


def test_a_client_trickling_its_body_is_cut_off_at_the_whole_request_deadline(
    server: tuple[Server, Daemon],
) -> None:
    httpd, daemon = server
    sock = slow_client(httpd)
    try:
        # A byte every 0.1 s never trips a per-read timeout; the whole-request one trips.
        elapsed = closed_within(sock, DEADLINE + 3.0, trickle=True)
    finally:
        sock.close()
    assert DEADLINE * 0.8 <= elapsed <= DEADLINE + 1.5
    assert requests.get(url(httpd, "/healthz"), timeout=2).status_code == 200
    # Cut off before its body arrived: no pass was triggered.
    assert daemon._forced is False


def test_slow_clients_cannot_take_every_thread_and_the_server_recovers(
    server: tuple[Server, Daemon],
) -> None:
    httpd, _ = server
    held = [slow_client(httpd) for _ in range(WORKERS)]
    try:
        time.sleep(0.2)  # all of them accepted and waiting for their bodies
        started = time.monotonic()
        busy = requests.get(url(httpd, "/healthz"), timeout=2)
        assert busy.status_code == 503 and busy.text == "busy\n"
        assert time.monotonic() - started < 0.5  # answered at once, not queued
        assert threading.active_count() < 40
        for sock in held:
            closed_within(sock, DEADLINE + 2.0)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.1)
    assert requests.get(url(httpd, "/healthz"), timeout=2).status_code == 200


def test_a_prompt_signed_webhook_still_triggers_a_pass(server: tuple[Server, Daemon]) -> None:
    httpd, daemon = server
    body = b'{"ref":"refs/heads/main"}'
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    answer = requests.post(
        url(httpd, HOOK_PATH),
        data=body,
        headers={"X-Hub-Signature-256": signature, "X-GitHub-Delivery": "a-delivery-guid"},
        timeout=2,
    )
    assert answer.status_code == 202
    assert daemon._forced is True


def test_an_oversized_webhook_body_is_refused_unread(server: tuple[Server, Daemon]) -> None:
    httpd, daemon = server
    sock = slow_client(httpd, length=options.MAX_HOOK_BODY + 1)
    try:
        sock.settimeout(2)
        assert b" 413 " in sock.recv(4096)
    finally:
        sock.close()
    assert daemon._forced is False
