"""A smart-HTTP git server on loopback (``git http-backend`` behind basic auth), which
records the Authorization header of every request."""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest


class GitHttpServer:
    """Serves the bare repositories under ``root`` at ``http://127.0.0.1:PORT/<name>``.

    Every request needs ``user:password`` (else 401 with a Basic challenge); pushes are
    allowed. ``seen`` holds (method, path, Authorization or None) per request.
    """

    def __init__(self, root: Path, user: str, password: str) -> None:
        backend = shutil.which("git")
        if backend is None:
            pytest.fail("git not found; run `make setup`", pytrace=False)
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

            do_POST = do_GET

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, name: str, userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        authorization = request.headers.get("Authorization")
        self.seen.append((request.command, request.path, authorization))
        body = _read_body(request)
        if authorization != self.expected:
            _reply(request, 401, [("WWW-Authenticate", 'Basic realm="git"')], b"")
            return
        path, _, query = request.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "REQUEST_METHOD": request.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        _reply(request, status, headers, payload)


def _read_body(request: http.server.BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(request.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                request.rfile.readline()
                return b"".join(chunks)
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def _reply(
    request: http.server.BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    request.send_response(status)
    for name, value in headers:
        if name.lower() not in ("content-length", "transfer-encoding", "connection"):
            request.send_header(name, value)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
