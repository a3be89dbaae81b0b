"""Keep-alive connections to a registry's own origin, on the standard library's http.client.

A pass is a thousand small requests (a ``HEAD`` per tag, a ``PUT`` per move), so what
each costs the client is what the pass costs: on a two-core machine the client's CPU is
the registry's too. urllib3 spends about twice http.client's CPU per request (its
pool, header containers and a poll of every reused socket), and ``requests`` three times
more again. This module is only the wire: the retries, limits and auth rules stay in
:class:`~reconciler.registry.transport.Transport`, which uses it for its own origin
without a proxy. ``requests`` (:mod:`.sessions`) speaks to other origins and through
proxies, and is imported only then; both raise :class:`WireError`, so one set of rules
handles both paths, and both answer with a :class:`Response`.

A connection goes back to the pool only when its response was read to the end and the
server did not say it will close; a reused one the server has closed meanwhile is seen
before use (readable while idle) and replaced, and a request that still meets a closed
connection is sent once more on a new one when its body can be sent again.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

_BLOCK = 1 << 16  # bytes per send of a streamed body
# Reasons worth naming; an exception's own text may carry a URL with a query.
_REASONS = (
    "Connection refused",
    "Connection reset",
    "Read timed out",
    "timed out",
    "RemoteDisconnected",
    "certificate verify failed",
    "IncompleteRead",
    "Connection aborted",
    "Name or service not known",
)


class WireError(Exception):
    """The request or its answer was lost on the way: a connection refused, reset or
    closed early, a timeout. Its text is one of a few known reasons, never a URL."""


class TLSError(WireError):
    """The TLS handshake failed (the certificate did not verify)."""


def reason_of(text: str, kind: str = "") -> str:
    """A one-line reason from an error's text, without URLs: a known phrase, else
    ``kind`` (the error's type name)."""
    return next((marker for marker in _REASONS if marker in text), kind or "connection error")


class Response(Protocol):
    """What the registry code reads of an answer: this module's :class:`Answer`, and
    ``requests.Response`` from :mod:`.sessions`."""

    status_code: int
    url: str
    reason: str
    raw: Any

    @property
    def headers(self) -> Mapping[str, str]:
        """Header fields by name, in any case."""
        ...

    @property
    def content(self) -> bytes:
        """The body (read by ``read_capped`` unless streamed)."""
        ...

    def json(self, **kwargs: Any) -> Any:
        """The body as JSON; ValueError when it is not."""
        ...

    def close(self) -> None:
        """Release the connection (closed when the body was not read to the end)."""
        ...


class Body(Protocol):
    """A request body: bytes, or a file-like object read once (``read(n)``)."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes (all with -1)."""
        ...


_MAX_LINE = 65536  # bytes of a status or header line, as http.client allows
_MAX_HEADERS = 100


class _Headers(Mapping[str, str]):
    """A response's header fields, read without the ``email`` package. By name in any
    case, repeated fields joined with ", " (as ``requests`` does); ``get_all`` and
    ``items`` are what http.client's own readers ask."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        self._joined: dict[str, str] = {}
        for name, value in fields:
            key = name.lower()
            self._joined[key] = f"{self._joined[key]}, {value}" if key in self._joined else value

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str, default: Any = None) -> list[str] | Any:
        """Every field named ``name`` (any case), in order."""
        found = [v for n, v in self._fields if n.lower() == name.lower()]
        return found or default

    def items(self) -> Any:
        """Every field as it came, in order."""
        return list(self._fields)


class _Response(http.client.HTTPResponse):
    """http.client's response with its own reading of the status line and header
    fields: http.client parses headers with the ``email`` package, a third of the CPU a
    ``HEAD`` costs the client. The body is read by http.client as before, from the
    framing decided here the way RFC 9112 section 6 says."""

    def begin(self) -> None:
        """Read the status line (after any 1xx) and the header fields; decide the body's
        framing and whether the connection closes after it."""
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._status_line()
            fields = self._fields()
            if not 100 <= status < 200 or status == 101:
                break
        self.code = self.status = status
        self.reason = reason
        self.version = 10 if version in ("HTTP/1.0", "HTTP/0.9") else 11
        headers = _Headers(fields)
        self.headers = self.msg = headers
        self.chunked = (headers.get("transfer-encoding") or "").strip().lower() == "chunked"
        self.chunk_left = None
        self.length = None
        declared = headers.get("content-length")
        if declared is not None and not self.chunked:
            declared = declared.strip()
            if declared.isascii() and declared.isdigit():
                self.length = int(declared)
        if status in (204, 304) or self._method == "HEAD":
            self.length = 0
        tokens = {t.strip().lower() for t in (headers.get("connection") or "").split(",")}
        if self.version == 11:
            self.will_close = "close" in tokens
        else:
            self.will_close = "keep-alive" not in tokens and headers.get("keep-alive") is None
        if not self.chunked and self.length is None:
            self.will_close = True  # the body ends when the server closes

    def _status_line(self) -> tuple[str, int, str]:
        line = self.fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("status line")
        if not line:
            raise http.client.RemoteDisconnected("closed without a response")
        version, _, rest = line.decode("iso-8859-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(line.decode("iso-8859-1")[:80])
        return version, int(code), reason.strip()

    def _fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = self.fp.readline(_MAX_LINE + 1)
            if len(line) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            if line in (b"\r\n", b"\n", b""):
                return fields
            text = line.decode("iso-8859-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and fields:  # an obsolete folded continuation
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if colon and name and name == name.strip():
                fields.append((name, value.strip()))
            if len(fields) > _MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Response


class Pool:
    """Up to ``size`` idle keep-alive connections to one origin (``context``: TLS, or None
    for plain HTTP). Thread-safe; the caller bounds how many are in use at once."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        size: int,
    ) -> None:
        self.host, self.port, self.size = host, port, size
        self._context = context
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | Body | None,
        url: str,
    ) -> Answer:
        """Send one request and read its status and headers; the body is read from the
        answer's ``raw``. Raises WireError (TLSError)."""
        replayable = body is None or isinstance(body, bytes)
        while True:
            conn, reused = self._take()
            try:
                conn.request(method, target, body=body, headers=dict(headers))
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and replayable:  # closed by the server while idle: once more
                    continue
                raise WireError(_reason(exc)) from None
            except BaseException as exc:
                conn.close()
                raise _translated(exc) from None
            fields = response.msg
            assert isinstance(fields, _Headers)  # read by our _Response
            raw = _Raw(self, conn, response)
            return Answer(response.status, fields, raw, url, response.reason)

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        """A connection whose last response was read to the end."""
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection (those in use close when their answers do)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """(a connection, whether it was used before): the newest idle one the server
        has not closed, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect(), False
            sock = conn.sock
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return conn, True
            conn.close()  # readable while idle: closed by the server (or it sent garbage)

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._context is None:
            conn = _HTTPConnection(
                self.host, self.port, timeout=self._connect_timeout, blocksize=_BLOCK
            )
        else:
            conn = _HTTPSConnection(
                self.host,
                self.port,
                timeout=self._connect_timeout,
                context=self._context,
                blocksize=_BLOCK,
            )
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise WireError(f"Connect timed out: {_reason(exc)}") from None
        except BaseException as exc:
            conn.close()
            raise _translated(exc) from None
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self._read_timeout)
        return conn


class Answer:
    """An answer from the pool: status, header fields, and the body from ``raw``."""

    def __init__(self, status: int, headers: _Headers, raw: _Raw, url: str, reason: str) -> None:
        self.status_code, self.headers, self.raw = status, headers, raw
        self.url, self.reason = url, reason
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        """The body, read to the end once (``read_capped`` sets it, with its limit)."""
        if self._content is None:
            self._content = self.raw.read()
            self.raw.release_conn()
        return self._content

    def json(self, **kwargs: Any) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content, **kwargs)

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to the end."""
        if self._content is None:
            self.raw.close()
        else:
            self.raw.release_conn()


class _Raw:
    """The body of an :class:`Answer`, read as ``requests`` reads urllib3's (``stream``,
    ``release_conn``, ``close``); the connection goes back to the pool once read to the
    end."""

    def __init__(
        self, pool: Pool, conn: http.client.HTTPConnection, response: http.client.HTTPResponse
    ) -> None:
        self._pool, self._conn, self._response = pool, conn, response
        self._done = False

    def stream(self, amount: int = _BLOCK, decode_content: bool = True) -> Iterator[bytes]:
        """The body in pieces of up to ``amount`` bytes, decompressed if asked and the
        server compressed it (it is never asked to)."""
        encoding = (self._response.getheader("Content-Encoding") or "").strip().lower()
        decoder = None
        if decode_content and encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
        while True:
            try:
                chunk = self._response.read(amount)
            except BaseException as exc:
                self.close()
                raise _translated(exc) from None
            if not chunk:
                break
            yield decoder.decompress(chunk) if decoder is not None else chunk
        if decoder is not None:
            rest = decoder.flush()
            if rest:
                yield rest

    def read(self, amount: int = -1) -> bytes:
        """Up to ``amount`` bytes of the body (all with -1)."""
        try:
            return self._response.read(None if amount < 0 else amount)
        except BaseException as exc:
            self.close()
            raise _translated(exc) from None

    def release_conn(self) -> None:
        """Back to the pool if the body was read to the end, else closed."""
        if self._done:
            return
        self._done = True
        if self._response.isclosed() and not self._response.will_close:
            self._pool.give_back(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Drop the connection (an unread body cannot be skipped cheaply)."""
        if not self._done:
            self._done = True
            self._response.close()
            self._conn.close()


def _translated(exc: BaseException) -> BaseException:
    """The :class:`WireError` for an error of the wire (others unchanged)."""
    if isinstance(exc, ssl.SSLError):
        return TLSError(_reason(exc))
    if isinstance(exc, TimeoutError):
        return WireError("Read timed out")
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return WireError(_reason(exc))
    return exc


def _reason(exc: BaseException) -> str:
    """What went wrong, in words the transport recognises; never a URL."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(exc, ConnectionResetError):
        return "Connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "RemoteDisconnected"
    if isinstance(exc, http.client.IncompleteRead):
        return "IncompleteRead"
    if isinstance(exc, socket.gaierror):
        return "Name or service not known"
    strerror = getattr(exc, "strerror", None)
    return type(exc).__name__ + (f": {strerror}" if strerror else "")
