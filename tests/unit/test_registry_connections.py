"""The registry's own reading of HTTP responses (connections._Response): status line,
header fields, body framing and whether the connection may be reused."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from collections.abc import Iterator

import pytest

from reconciler.registry.connections import Pool, WireError, _Response


class _Socket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def response(data: bytes, method: str = "GET") -> _Response:
    answer = _Response(_Socket(data), method=method)  # type: ignore[arg-type]
    answer.begin()
    return answer


def test_a_manifest_answer_with_its_length_and_headers() -> None:
    body = b'{"schemaVersion":2}'
    answer = response(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        b"docker-content-digest: sha256:abc\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Link: <a>; rel=next\r\nLink: <b>\r\n\r\n" + body + b"garbage after the body"
    )
    assert (answer.status, answer.reason, answer.version) == (200, "OK", 11)
    assert answer.getheader("Docker-Content-Digest") == "sha256:abc"
    assert answer.getheader("link") == "<a>; rel=next, <b>"
    assert answer.read() == body
    assert answer.isclosed() and not answer.will_close


def test_head_has_no_body_whatever_its_length_says() -> None:
    answer = response(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", method="HEAD")
    assert answer.read() == b"" and not answer.will_close


def test_chunked_bodies_and_continue_answers_are_read_through() -> None:
    answer = response(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 999\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert answer.status == 201 and answer.chunked
    assert answer.read() == b"hello world"
    assert not answer.will_close


def test_folded_fields_are_joined_and_malformed_lines_ignored() -> None:
    answer = response(
        b"HTTP/1.1 404 Not Found\r\nWww-Authenticate: Bearer realm=x,\r\n"
        b'  service="y"\r\nnot a field\r\nbad : name\r\nContent-Length: 0\r\n\r\n'
    )
    assert answer.getheader("WWW-Authenticate") == 'Bearer realm=x, service="y"'
    assert answer.getheader("bad") is None
    assert answer.read() == b""


@pytest.mark.parametrize(
    ("head", "closes"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Upgrade\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n\r\n", True),  # no length, not chunked: ends at close
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", True),  # not a length
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
    ],
)
def test_whether_the_connection_is_reused(head: bytes, closes: bool) -> None:
    assert response(head).will_close is closes


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"HTTP/1.1 2000 OK\r\n\r\n", http.client.BadStatusLine),
        (b"ICY 200 OK\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 200 " + b"x" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\nX: " + b"x" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", http.client.HTTPException),
    ],
)
def test_what_is_not_an_answer_is_refused(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        response(data)


@pytest.fixture
def server() -> Iterator[tuple[int, list[int]]]:
    """A server answering every request with 200 and a 2-byte body; it closes each
    connection after ``closing[0]`` answers (0: never)."""
    listener = socket.create_server(("127.0.0.1", 0))
    closing = [0]

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            answered = 0
            while True:
                line = reader.readline()
                while line not in (b"\r\n", b""):
                    line = reader.readline()
                if not line:
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                answered += 1
                if closing[0] and answered >= closing[0]:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], closing
    listener.close()


def _get(pool: Pool, port: int) -> bytes:
    answer = pool.send("GET", "/v2/", {}, None, f"http://127.0.0.1:{port}/v2/")
    body = b"".join(answer.raw.stream(1024))
    answer.raw.release_conn()
    return body


def test_a_connection_read_to_the_end_is_reused(server: tuple[int, list[int]]) -> None:
    port, _ = server
    pool = Pool("127.0.0.1", port, None, 5, 5, 4)
    assert _get(pool, port) == b"ok"
    (first,) = pool._idle
    assert _get(pool, port) == b"ok"
    assert pool._idle == [first]
    pool.close()


def test_a_connection_the_server_closed_is_replaced(server: tuple[int, list[int]]) -> None:
    port, closing = server
    closing[0] = 1  # every connection serves one request
    pool = Pool("127.0.0.1", port, None, 5, 5, 4)
    assert [_get(pool, port) for _ in range(5)] == [b"ok"] * 5
    pool.close()


def test_a_refused_connection_is_a_wire_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    pool = Pool("127.0.0.1", port, None, 5, 5, 4)
    with pytest.raises(WireError, match="Connection refused"):
        pool.send("HEAD", "/v2/", {}, None, f"http://127.0.0.1:{port}/v2/")
