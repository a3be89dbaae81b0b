"""A recording HTTPS proxy with its own CA, standing in for Docker Hub.

Clients reach it through ``HTTPS_PROXY``: it answers ``CONNECT name:443`` for the names
it routes by terminating TLS with a certificate for that name from its own CA (which
the client must trust, e.g. through ``SSL_CERT_FILE``), records every request
(host, method, path, Authorization) and forwards it in plain HTTP to the name's
upstream. Any other CONNECT is recorded and refused (502). Upstream answers are
rewritten so that they speak of the public names: ``Location`` keeps the public host
(``X-Forwarded-*``), and a bearer challenge's realm becomes the public token service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import http.server
import socketserver
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.registry_servers import TestCA, make_ca


@dataclass(frozen=True)
class Seen:
    host: str
    method: str
    path: str
    authorization: str | None


class RecordingHttpsProxy:
    """``routes``: public name -> upstream ``host:port`` (plain HTTP);
    ``realms``: upstream token realm URL -> public realm URL."""

    def __init__(
        self, directory: Path, routes: dict[str, str], realms: dict[str, str] | None = None
    ) -> None:
        self.ca: TestCA = make_ca("recording proxy CA")
        self.ca_file = directory / "proxy-ca.pem"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.routes = routes
        self.realms = realms or {}
        self.connects: list[str] = []
        self.seen: list[Seen] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self._directory = directory
        proxy = self

        class Tunnel(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError, ssl.SSLError):
                    proxy._tunnel(self)

            def finish(self) -> None:
                with contextlib.suppress(OSError, ValueError):
                    super().finish()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def to(self, host: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.host == host]

    # -- the tunnel ----------------------------------------------------------------

    def _tunnel(self, handler: socketserver.StreamRequestHandler) -> None:
        line = handler.rfile.readline(8192).decode("latin-1")
        while handler.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
            pass
        method, _, rest = line.partition(" ")
        target = rest.split(" ", 1)[0]
        with self._lock:
            self.connects.append(target if method == "CONNECT" else f"{method} {target}")
        name = target.rsplit(":", 1)[0]
        if method != "CONNECT" or name not in self.routes:
            handler.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        handler.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        handler.wfile.flush()
        tls = self._context(name).wrap_socket(handler.connection, server_side=True)
        proxy = self

        class Inner(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                with contextlib.suppress(OSError, ssl.SSLError):
                    super().handle_one_request()

            def __getattr__(self, attr: str) -> object:
                if attr.startswith("do_"):
                    return lambda: proxy._forward(self, name)
                raise AttributeError(attr)

        Inner(tls, handler.client_address, self._server)  # type: ignore[arg-type]

    def _forward(self, request: http.server.BaseHTTPRequestHandler, name: str) -> None:
        with self._lock:
            self.seen.append(
                Seen(name, request.command, request.path, request.headers.get("Authorization"))
            )
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("connection", "content-length", "transfer-encoding", "host")
        }
        headers |= {"Host": name, "X-Forwarded-Proto": "https", "X-Forwarded-Host": name}
        upstream = http.client.HTTPConnection(self.routes[name], timeout=30)
        try:
            upstream.request(request.command, request.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            answer = response.getheaders()
        finally:
            upstream.close()
        request.send_response(response.status)
        for key, value in answer:
            if key.lower() in ("transfer-encoding", "connection", "content-length"):
                continue
            if key.lower() == "www-authenticate":
                for private, public in self.realms.items():
                    value = value.replace(private, public)
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)

    def _context(self, name: str) -> ssl.SSLContext:
        with self._lock:
            if name not in self._contexts:
                cert, key = _issue(self.ca, self._directory, name)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(cert, key)
                self._contexts[name] = context
            return self._contexts[name]


def _issue(ca: TestCA, directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
