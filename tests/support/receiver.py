"""A notification receiver on loopback: records every POST, answers as scripted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reconciler.daemon.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, BadSignature, verify


@dataclass
class Receiver:
    """Records every POST; answers with ``statuses`` in turn (then 200). ``connections``
    counts every TCP connection accepted, whatever is (or is not) sent on it."""

    statuses: list[int] = field(default_factory=list)
    connections: int = 0
    delay: float = 0.0
    got: list[tuple[str, dict[str, str], bytes, float]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self) -> list[dict[str, object]]:
        return [json.loads(body) for _, _, body, _ in list(self.got)]

    def events(self, kind: str | None = None) -> list[dict[str, object]]:
        return [b for b in self.bodies() if kind is None or b.get("event") == kind]

    def signed_by(self, secret: str) -> bool:
        """Whether every body received verifies (signature over timestamp.body, in time)."""
        for _, headers, body, _ in list(self.got):
            try:
                verify(
                    secret.encode(),
                    body,
                    headers.get(TIMESTAMP_HEADER),
                    headers.get(SIGNATURE_HEADER),
                )
            except BadSignature:
                return False
        return True


@contextmanager
def receiving() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.got.append((self.path, dict(self.headers), body, time.monotonic()))
            time.sleep(state.delay)
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def verify_request(self, request: object, client_address: object) -> bool:
            state.connections += 1
            return True

    server = Server(("127.0.0.1", 0), Handler)
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
