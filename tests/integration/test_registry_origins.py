"""Credentials go only to the origin that asked for them. A registry (here a front that
demands basic auth before a real registry) may name another origin in a tag list's
``Link`` or an upload's ``Location``: the client follows it without ``Authorization``
and never answers that origin's 401 with credentials."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.registry import (
    AuthenticationFailed,
    DockerCredentials,
    HostConfig,
    HttpRegistry,
    RegistryError,
)
from tests.support.registry_servers import RegistryServer, build_image, push, sha256

pytestmark = pytest.mark.integration

USER, PASSWORD = "origin-user", "origin-pass-0xdeadbeef"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
Rewrite = Callable[[str, str, dict[str, str]], dict[str, str]]


class Front:
    """A loopback HTTP server forwarding to ``upstream``; records every request's
    Authorization; ``require``: answer 401 (Basic challenge) unless it is sent;
    ``rewrite``: change the response headers (method, path, headers) -> headers."""

    def __init__(self, upstream: str, require: str | None = None) -> None:
        self.upstream = upstream
        self.require = require
        self.rewrite: Rewrite = lambda method, path, headers: headers
        self.seen: list[tuple[str, str, str | None]] = []
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def __getattr__(self, name: str) -> object:
                if name.startswith("do_"):
                    return lambda: front._serve(self)
                raise AttributeError(name)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _serve(self, request: http.server.BaseHTTPRequestHandler) -> None:
        authorization = request.headers.get("Authorization")
        self.seen.append((request.command, request.path, authorization))
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        if self.require is not None and authorization != self.require:
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="front"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "connection", "content-length")
        }
        upstream = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            answer = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
        finally:
            upstream.close()
        answer = self.rewrite(request.command, request.path, answer)
        request.send_response(response.status)
        for key, value in answer.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)


@pytest.fixture
def foreign(plain_registry: RegistryServer) -> Iterator[Front]:
    server = Front(plain_registry.host)
    yield server
    server.close()


@pytest.fixture
def front(plain_registry: RegistryServer) -> Iterator[Front]:
    server = Front(plain_registry.host, require=BASIC)
    yield server
    server.close()


@pytest.fixture
def client(front: Front, tmp_path: Path) -> HttpRegistry:
    entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    (tmp_path / "config.json").write_text(json.dumps({"auths": {front.host: entry}}))
    return HttpRegistry(front.host, HostConfig(plain_http=True), DockerCredentials(str(tmp_path)))


def fresh() -> str:
    return f"o/{uuid.uuid4().hex[:10]}"


def test_a_tag_list_link_to_another_origin_is_followed_without_credentials(
    client: HttpRegistry, front: Front, foreign: Front, plain_registry: RegistryServer
) -> None:
    repo = fresh()
    push(
        HttpRegistry(plain_registry.host, HostConfig(plain_http=True)), repo, build_image("l"), "a"
    )

    def link(method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        if path == f"/v2/{repo}/tags/list":
            headers["Link"] = f'<http://{foreign.host}/v2/{repo}/tags/list?n=50&last=a>; rel="next"'
        return headers

    front.rewrite = link
    assert set(client.list_tags(repo)) == {"a"}
    assert any(auth == BASIC for _, _, auth in front.seen)  # the front asked, and got them
    assert foreign.seen and all(auth is None for _, _, auth in foreign.seen)


def test_an_upload_location_on_another_origin_gets_no_credentials(
    client: HttpRegistry, front: Front, foreign: Front, plain_registry: RegistryServer
) -> None:
    def elsewhere(method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
        if "Location" in headers:
            headers["Location"] = headers["Location"].replace(front.host, foreign.host)
        return headers

    front.rewrite = elsewhere
    repo = fresh()
    data = b"a blob uploaded to another origin"
    client.put_blob(repo, sha256(data), len(data), [data])
    assert [m for m, _, _ in foreign.seen] == ["PUT"]
    assert all(auth is None for _, _, auth in foreign.seen)
    assert HttpRegistry(plain_registry.host, HostConfig(plain_http=True)).blob_exists(
        repo, sha256(data)
    )


def test_another_origins_401_is_never_answered_with_credentials(
    client: HttpRegistry, front: Front, plain_registry: RegistryServer
) -> None:
    asking = Front(plain_registry.host, require=BASIC)  # it wants the password too
    try:

        def elsewhere(method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
            if "Location" in headers:
                headers["Location"] = headers["Location"].replace(front.host, asking.host)
            return headers

        front.rewrite = elsewhere
        repo = fresh()
        data = b"never uploaded"
        with pytest.raises(AuthenticationFailed) as caught:
            client.put_blob(repo, sha256(data), len(data), [data])
        assert isinstance(caught.value, RegistryError)
        assert PASSWORD not in str(caught.value)
        assert asking.seen and all(auth is None for _, _, auth in asking.seen)
        direct = HttpRegistry(plain_registry.host, HostConfig(plain_http=True))
        assert not direct.blob_exists(repo, sha256(data))  # nothing changed
    finally:
        asking.close()
