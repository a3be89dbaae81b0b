"""The daemon's HTTP server: /healthz, /readyz, /metrics and the webhooks, each
request bounded in size and time, webhooks authenticated and replay-protected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.daemon.service import Daemon

import contextlib
import hmac
import json
import logging
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)

from reconciler.daemon import deliveries
from reconciler.daemon.events import parse as parse_events
from reconciler.daemon.options import (
    HOOK_PATH,
    HTTP_TIMEOUT,
    HTTP_WORKERS,
    MAX_HOOK_BODY,
    REGISTRY_HOOK_PATH,
    webhook_authorized,
)

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


# --------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    """At most ``workers`` requests at once, each cut off ``request_deadline`` seconds
    after it was accepted: a client trickling bytes cannot hold a thread past it, and
    a crowd of them gets 503s instead of threads."""

    daemon_threads = True
    request_deadline = HTTP_TIMEOUT
    workers = HTTP_WORKERS

    def __init__(
        self,
        address: tuple[str, int],
        daemon: Daemon,
        secret: bytes | None,
        window: float,
        registry_token: bytes | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.reconciler_daemon, self.secret, self.ready_window = daemon, secret, window
        self.registry_token = registry_token
        self.deliveries = deliveries.Deliveries()  # accepted /hooks/git requests: no replays
        self._busy = threading.BoundedSemaphore(self.workers)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._busy.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._busy.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline = threading.Timer(self.request_deadline, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._busy.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client gone, or cut off at the deadline
            log.debug("http: request from %s ended early: %r", client_address[0], error)
        else:
            log.exception("http: request from %s failed", client_address[0])


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


def _cut(connection: socket.socket) -> None:
    """The whole-request deadline passed: end the connection, waking the reader."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = HTTP_TIMEOUT
    server_version = "reconciler"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines may carry query strings: never logged

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        daemon = self.server.reconciler_daemon
        if path == "/healthz":
            self._reply(HTTPStatus.OK, b"ok\n")
        elif path == "/readyz":
            ready = daemon.ready(self.server.ready_window)
            body = b"ready\n" if ready else b"no pass finished recently\n"
            self._reply(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/metrics":
            self._reply(
                HTTPStatus.OK, generate_latest(daemon.metrics.registry), CONTENT_TYPE_LATEST
            )
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] == REGISTRY_HOOK_PATH:
            self._registry_hook()
            return
        if self.path.split("?", 1)[0] != HOOK_PATH:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        daemon, secret = self.server.reconciler_daemon, self.server.secret
        webhooks = daemon.metrics.webhooks
        if secret is None:  # fail closed: no secret, no endpoint
            webhooks.labels("disabled").inc()
            self._reply(HTTPStatus.NOT_FOUND, b"webhook disabled: no secret configured\n")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            webhooks.labels("bad_request").inc()
            self._reply(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required\n")
            return
        if int(length) > MAX_HOOK_BODY:
            webhooks.labels("too_large").inc()
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"body too large\n")
            return
        body = self.rfile.read(int(length))
        if len(body) != int(length) or not webhook_authorized(
            secret,
            body,
            self.headers.get("X-Hub-Signature-256"),
            self.headers.get("X-Gitlab-Token"),
            self.headers.get("X-Gitea-Signature"),
        ):
            webhooks.labels("unauthorized").inc()
            log.warning(
                "webhook from %s refused: bad or missing signature", self.client_address[0],
                extra={"event": "webhook-refused"},
            )  # fmt: skip
            self._reply(HTTPStatus.UNAUTHORIZED, b"bad or missing signature\n")
            return
        refused = _replay_refusal(self.headers, body, self.server.deliveries)
        if refused is not None:
            status, result, text = refused
            webhooks.labels(result).inc()
            log.warning(
                "webhook from %s refused: %s", self.client_address[0], text.decode().strip(),
                extra={"event": "webhook-refused"},
            )  # fmt: skip
            self._reply(status, text)
            return
        webhooks.labels("accepted").inc()
        log.info("webhook: pass triggered", extra={"event": "webhook"})
        daemon.trigger()
        self._reply(HTTPStatus.ACCEPTED, b"pass triggered\n")

    def _registry_hook(self) -> None:
        """Distribution notifications: ``Authorization: Bearer <token>``, checked in
        constant time; events about managed tags queue targeted checks."""
        daemon, token = self.server.reconciler_daemon, self.server.registry_token
        webhooks = daemon.metrics.webhooks
        if token is None:
            webhooks.labels("disabled").inc()
            self._reply(HTTPStatus.NOT_FOUND, b"registry webhook disabled: no token\n")
            return
        offered = self.headers.get("Authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(b"Bearer " + token, offered):
            webhooks.labels("unauthorized").inc()
            self._reply(HTTPStatus.UNAUTHORIZED, b"bad or missing token\n")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_HOOK_BODY:
            webhooks.labels("bad_request" if not length.isdigit() else "too_large").inc()
            self._reply(HTTPStatus.BAD_REQUEST, b"Content-Length up to 1 MiB required\n")
            return
        try:
            events = parse_events(self.rfile.read(int(length)))
        except ValueError:
            webhooks.labels("bad_request").inc()
            self._reply(HTTPStatus.BAD_REQUEST, b"not a notification envelope\n")
            return
        webhooks.labels("accepted").inc()
        if daemon.events.offer(events):
            daemon.trigger()
        self._reply(HTTPStatus.ACCEPTED, b"accepted\n")

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _replay_refusal(
    headers: deliveries.Headers, body: bytes, seen: deliveries.Deliveries
) -> tuple[HTTPStatus, str, bytes] | None:
    """Why an authenticated ``/hooks/git`` request is refused (status, metric, text).

    A forge's delivery id is required and remembered, with the body's digest
    (:mod:`reconciler.daemon.deliveries`). The body must be a JSON object, as every forge's
    push is: whatever else the secret signs (a notification signs ``timestamp.body``)
    is never a git webhook.
    """
    delivery = deliveries.delivery_id(headers)
    if delivery is None:
        names = ", ".join(deliveries.DELIVERY_HEADERS)
        return (
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            f"a delivery id is required ({names})\n".encode(),
        )
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        text = b"the body must be a JSON object (the webhook's content type: application/json)\n"
        return HTTPStatus.BAD_REQUEST, "bad_request", text
    if not seen.first(delivery, body):
        return HTTPStatus.CONFLICT, "replayed", b"already delivered: a replay is refused\n"
    return None
