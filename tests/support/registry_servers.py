"""Real registry servers for tests, all on 127.0.0.1 and free ports.

- ``plain_registry``: CNCF distribution (``docker-registry``) over plain HTTP.
- ``tls_registry``: the same with htpasswd auth and TLS from a CA made here.
- ``token_registry``: bearer-token auth, with a small token server (ES256 JWTs
  whose signing certificate is the registry's ``rootcertbundle``).
- ``fault_proxy``: an HTTP proxy in front of a registry that injects 500s, 429s
  with Retry-After, delays, connection resets, corrupted bodies or a callback.

Missing tools fail the test with a clear message: these tests are never skipped.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from reconciler.registry import Registry

USER = "alice"
PASSWORD = "s3cret"
SERVICE = "test-registry"
ISSUER = "test-issuer"
# The test-only judges come from `make peers`; everything else from `make setup`.
_SET_UP = {
    name: "`make peers` (scripts/setup.sh --peers)"
    for name in ("oras", "crane", "cosign", "docker-registry", "skopeo", "htpasswd")
}


def require_tool(name: str) -> str:
    """The tool's path; fails (never skips) when it is not installed."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if not found:
        pytest.fail(f"{name} not found; run {_SET_UP.get(name, '`make setup`')}", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- certificates --------------------------------------------------------------


@dataclass
class TestCA:
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def issue(self, directory: Path, name: str = "server") -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1 and localhost, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
        return cert_path, key_path


def issue_client(ca: TestCA, directory: Path, name: str = "client") -> tuple[Path, Path]:
    """A TLS client certificate signed by ``ca`` (``name``.cert and ``name``.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reconciler client")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.cert", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    return cert_path, key_path


def make_ca(common_name: str = "reconciler test CA") -> TestCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return TestCA(cert.public_bytes(serialization.Encoding.PEM), key, cert)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- the registry process ------------------------------------------------------


@dataclass
class RegistryServer:
    """One ``docker-registry serve`` process; stop() and start() keep port and data."""

    directory: Path
    port: int
    config: str
    scheme: str = "http"
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def start(self) -> RegistryServer:
        binary = require_tool("docker-registry")
        config_path = self.directory / "config.yml"
        config_path.write_text(self.config)
        log = (self.directory / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    "docker-registry exited at start:\n"
                    + (self.directory / "registry.log").read_text()[-2000:],
                    pytrace=False,
                )
            try:
                requests.get(f"{self.url}/v2/", timeout=1, verify=self.ca_file or True)
                return self
            except requests.RequestException:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"docker-registry on {self.host} did not answer within 15 s", pytrace=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def registry_config(
    directory: Path,
    port: int,
    *,
    auth: str = "",
    tls: tuple[Path, Path] | None = None,
    deletes: bool = True,
    client_ca: Path | None = None,
) -> str:
    """``deletes=False``: the registry refuses every DELETE (405 UNSUPPORTED);
    ``client_ca``: TLS clients must present a certificate signed by it."""
    enabled = "true" if deletes else "false"
    lines = [
        "version: 0.1",
        "log: {level: warn, accesslog: {disabled: true}}",
        f"storage: {{filesystem: {{rootdirectory: {directory / 'data'}}}, "
        f"delete: {{enabled: {enabled}}}}}",
    ]
    http_line = f"http: {{addr: 127.0.0.1:{port}, secret: test"
    if tls:
        http_line += f", tls: {{certificate: {tls[0]}, key: {tls[1]}"
        http_line += f", clientcas: [{client_ca}]}}" if client_ca else "}"
    lines.append(http_line + "}")
    if auth:
        lines.append(auth)
    return "\n".join(lines) + "\n"


class RegistryFactory:
    """Starts registries and stops all of them at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[RegistryServer] = []
        self._ca: TestCA | None = None

    @property
    def ca(self) -> TestCA:
        if self._ca is None:
            self._ca = make_ca()
        return self._ca

    def plain(self, deletes: bool = True) -> RegistryServer:
        directory = self._dir("plain")
        port = free_port()
        config = registry_config(directory, port, deletes=deletes)
        return self._start(RegistryServer(directory, port, config))

    def tls_only(self, client_ca: TestCA | None = None) -> RegistryServer:
        """TLS from this factory's CA, no auth; ``client_ca``: mutual TLS with its certs."""
        directory = self._dir("mtls" if client_ca else "tlsonly")
        port = free_port()
        (directory / "ca").mkdir()
        ca_file = directory / "ca" / "ca.crt"
        ca_file.write_bytes(self.ca.cert_pem)
        cert = self.ca.issue(directory)
        clients = None
        if client_ca is not None:
            clients = directory / "client-ca.pem"
            clients.write_bytes(client_ca.cert_pem)
        config = registry_config(directory, port, tls=cert, client_ca=clients)
        server = RegistryServer(directory, port, config, scheme="https", ca_file=str(ca_file))
        self.servers.append(server)
        if client_ca is None:
            return server.start()
        # The readiness probe cannot present a certificate: wait for the port instead.
        binary = require_tool("docker-registry")
        (directory / "config.yml").write_text(config)
        with (directory / "registry.log").open("ab") as log:
            server.process = subprocess.Popen(
                [binary, "serve", str(directory / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return server
            time.sleep(0.02)
        pytest.fail(f"docker-registry (mutual TLS) on {server.host} did not listen", pytrace=False)

    def tls_htpasswd(self) -> RegistryServer:
        htpasswd = require_tool("htpasswd")
        directory = self._dir("tls")
        port = free_port()
        line = subprocess.run(
            [htpasswd, "-Bbn", USER, PASSWORD], check=True, capture_output=True
        ).stdout
        (directory / "htpasswd").write_bytes(line)
        (directory / "ca").mkdir()
        ca_file = directory / "ca" / "ca.crt"
        ca_file.write_bytes(self.ca.cert_pem)
        cert = self.ca.issue(directory)
        auth = f"auth: {{htpasswd: {{realm: test, path: {directory / 'htpasswd'}}}}}"
        server = RegistryServer(
            directory,
            port,
            registry_config(directory, port, auth=auth, tls=cert),
            scheme="https",
            ca_file=str(ca_file),
            username=USER,
            password=PASSWORD,
        )
        return self._start(server)

    def token(self, token_server: TokenServer) -> RegistryServer:
        directory = self._dir("token")
        port = free_port()
        bundle = directory / "token.pem"
        bundle.write_bytes(token_server.cert_pem)
        auth = (
            f"auth: {{token: {{realm: {token_server.url}/token, service: {SERVICE}, "
            f"issuer: {ISSUER}, rootcertbundle: {bundle}}}}}"
        )
        server = RegistryServer(
            directory,
            port,
            registry_config(directory, port, auth=auth),
            username=USER,
            password=PASSWORD,
        )
        return self._start(server)

    def _dir(self, kind: str) -> Path:
        directory = self.base / f"{kind}-{len(self.servers)}"
        directory.mkdir(parents=True)
        return directory

    def _start(self, server: RegistryServer) -> RegistryServer:
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


# -- the token server ----------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues ES256 JWTs for requested scopes after a basic-auth check.

    ``alice`` gets every requested action; anonymous callers get ``pull`` on
    repositories under ``public/`` only; a wrong password is a 401. Every grant is
    recorded in ``issued`` as (user, scope string list).
    """

    def __init__(self) -> None:
        ca = make_ca("token signer")
        self.key = ca.key
        self.cert_pem = ca.cert_pem
        self._x5c = base64.b64encode(ca.cert.public_bytes(serialization.Encoding.DER)).decode()
        self.issued: list[tuple[str, list[str]]] = []
        self.lifetime = 300
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(request.path).query)
        user = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (user, password) != (USER, PASSWORD):
                request.send_response(401)
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
        access = []
        granted = []
        for raw in query.get("scope", []):
            for scope in raw.split(" "):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                wanted = [a for a in actions.split(",") if a]
                allowed = wanted if user else [a for a in wanted if a == "pull"]
                if not user and not name.startswith("public/"):
                    allowed = []
                access.append({"type": kind, "name": name, "actions": allowed})
                granted.append(f"{kind}:{name}:{','.join(allowed)}")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        head = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(head).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        token = signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        with self._lock:
            self.issued.append((user, granted))
        body = json.dumps({"token": token, "expires_in": self.lifetime}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


# -- the fault proxy -----------------------------------------------------------


@dataclass
class Fault:
    """What to do to the next ``times`` requests matching ``method`` and ``path``.

    kind: ``status`` (answer ``status`` with ``headers``), ``delay`` (sleep, then
    forward), ``reset`` (RST the connection), ``corrupt`` (flip a byte of the
    response body), ``hook`` (call ``action``, then forward), ``lose-session``
    (cancel the upload session the request names upstream, then forward it: the
    registry itself answers ``BLOB_UPLOAD_UNKNOWN``). ``times=-1``: forever.
    """

    kind: str
    times: int = 1
    method: str | None = None
    path: str = ""
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: Callable[[], None] | None = None
    every: int = 1  # fire on every n-th matching request only (3: a third of them)
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times != 0
            and (self.method is None or self.method == method)
            and re.search(self.path, path) is not None
        )


class FaultProxy:
    """A threaded HTTP/1.1 proxy on loopback in front of ``upstream`` (a host:port)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    super().handle_one_request()

            def __getattr__(self, name: str) -> Callable[[], None]:
                if name.startswith("do_"):
                    return lambda: proxy._handle(self, name[3:])
                raise AttributeError(name)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.log.clear()

    def count(self, method: str | None = None, path: str = "", outcome: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for m, p, o in self.log
                if (method is None or m == method)
                and re.search(path, p)
                and (outcome is None or o == outcome)
            )

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.seen += 1
                    if fault.seen % fault.every:
                        continue
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))

    def _handle(self, request: http.server.BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._serve(request, method)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _serve(self, request: http.server.BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        fault = self._pick(method, request.path)
        kind = fault.kind if fault else "forward"
        self._record(method, request.path, kind)
        if fault is not None and fault.kind == "status":
            payload = json.dumps(
                {"errors": [{"code": "INJECTED", "message": f"fault proxy {fault.status}"}]}
            ).encode()
            request.send_response(fault.status)
            for name, value in fault.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            if method != "HEAD":
                request.wfile.write(payload)
            return
        if fault is not None and fault.kind == "reset":
            _reset(request)
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "hook" and fault.action is not None:
            fault.action()
        if fault is not None and fault.kind == "lose-session":
            with contextlib.suppress(OSError):
                self._forward("DELETE", request, b"")
        try:
            status, headers, data = self._forward(method, request, body)
        except OSError:
            _reset(request)  # upstream gone: look like it to the client
            return
        if fault is not None and fault.kind == "corrupt" and data:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        request.send_response(status)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                request.send_header(name, value)
        if method == "HEAD":
            request.send_header("Content-Length", dict(headers).get("Content-Length", "0"))
        else:
            request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if method != "HEAD" and data:
            request.wfile.write(data)

    def _forward(
        self, method: str, request: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("connection", "content-length", "transfer-encoding")
            }
            connection.request(method, request.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            connection.close()


def _reset(request: http.server.BaseHTTPRequestHandler) -> None:
    with contextlib.suppress(OSError):
        request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.connection.close()
    request.close_connection = True


# -- skopeo --------------------------------------------------------------------


def skopeo(*args: str, server: RegistryServer | None = None) -> subprocess.CompletedProcess[str]:
    """Run skopeo with TLS settings/credentials for ``server``; fails loudly."""
    binary = require_tool("skopeo")
    extra: list[str] = []
    command, rest = args[0], list(args[1:])
    if server is not None:
        if server.scheme == "http":
            flags = {"inspect": ["--tls-verify=false"], "list-tags": ["--tls-verify=false"]}
            extra = flags.get(command, [])
        elif server.ca_file:
            cert_dir = Path(server.ca_file).parent
            if command in ("inspect", "list-tags"):
                extra = [f"--cert-dir={cert_dir}"]
        if server.username and command in ("inspect", "list-tags"):
            extra.append(f"--creds={server.username}:{server.password}")
    done = subprocess.run(
        [binary, command, *extra, *rest], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"skopeo {command} failed: {done.stderr.strip()[-1500:]}", pytrace=False)
    return done


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    require_tool("docker-registry")
    require_tool("skopeo")
    factory = RegistryFactory(tmp_path_factory.mktemp("registries"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def plain_registry(registry_factory: RegistryFactory) -> RegistryServer:
    return registry_factory.plain()


@pytest.fixture(scope="session")
def second_registry(registry_factory: RegistryFactory) -> RegistryServer:
    return registry_factory.plain()


@pytest.fixture(scope="session")
def tls_registry(registry_factory: RegistryFactory) -> RegistryServer:
    return registry_factory.tls_htpasswd()


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def token_registry(registry_factory: RegistryFactory, token_server: TokenServer) -> RegistryServer:
    return registry_factory.token(token_server)


@pytest.fixture
def fault_proxy(plain_registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(plain_registry.host)
    yield proxy
    proxy.close()


@pytest.fixture
def docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[dict[str, object]], Path]:
    """Write a config.json into a fresh DOCKER_CONFIG directory; returns its path.

    The containers credential files named by the environment are set aside, so that
    this config.json is what the test decides (the reconciler consults them too).
    """
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)

    def write(config: dict[str, object]) -> Path:
        path = directory / "config.json"
        path.write_text(json.dumps(config))
        return path

    write({})
    return write


def basic_auth_entry(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


# -- test artifacts ------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


@dataclass
class Built:
    """A manifest's exact bytes and the blobs it needs (digest -> bytes)."""

    data: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    children: list[Built] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def _desc(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def _dump(doc: dict[str, object]) -> bytes:
    # Deliberately not canonical (indent, key order): byte-exactness must survive.
    return json.dumps(doc, indent=3).encode() + b"\n"


def build_image(
    name: str, platform: str = "linux/amd64", layers: int = 1, size: int = 3000
) -> Built:
    os_, _, arch = platform.partition("/")
    config = json.dumps({"architecture": arch, "os": os_, "name": name}).encode()
    blobs = {sha256(config): config}
    layer_descs = []
    for i in range(layers):
        data = hashlib.sha256(f"{name}/{platform}/{i}".encode()).digest() * (size // 32 + 1)
        data = data[:size]
        blobs[sha256(data)] = data
        layer_descs.append(_desc(OCI_LAYER, data))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(OCI_CONFIG, config),
        "layers": layer_descs,
        "annotations": {"test.name": name},
    }
    return Built(_dump(doc), OCI_MANIFEST, blobs)


def build_index(name: str, platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")) -> Built:
    children = [build_image(f"{name}-{p}", p) for p in platforms]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            c.descriptor(platform={"os": p.split("/")[0], "architecture": p.split("/")[1]})
            for c, p in zip(children, platforms, strict=True)
        ],
    }
    return Built(_dump(doc), OCI_INDEX, {}, children)


def build_signature(subject: Built, reference: str) -> Built:
    """A cosign-style simple-signing manifest (the signature itself is fake)."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": subject.digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    config = b"{}"
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(OCI_CONFIG, config),
        "layers": [
            _desc(
                SIMPLE_SIGNING,
                payload,
                annotations={"dev.cosignproject.cosign/signature": "MEUCIQDfake"},
            )
        ],
    }
    return Built(_dump(doc), OCI_MANIFEST, {sha256(config): config, sha256(payload): payload})


def build_referrer(subject: Built, artifact_type: str = "application/vnd.example.sbom") -> Built:
    """An OCI 1.1 artifact whose ``subject`` is ``subject``."""
    empty = b"{}"
    content = json.dumps({"sbom": subject.digest}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _desc(OCI_EMPTY, empty),
        "layers": [_desc("application/json", content)],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    return Built(_dump(doc), OCI_MANIFEST, {sha256(empty): empty, sha256(content): content})


def referrers_index(*referrers: Built) -> Built:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            r.descriptor(artifactType=json.loads(r.data).get("artifactType", "")) for r in referrers
        ],
    }
    return Built(_dump(doc), OCI_INDEX)


def push(registry: Registry, repo: str, built: Built, tag: str | None = None) -> str:
    """Push an artifact with its children and blobs; returns its digest."""
    for child in built.children:
        push(registry, repo, child)
    for digest, data in built.blobs.items():
        if not registry.blob_exists(repo, digest):
            registry.put_blob(repo, digest, len(data), [data])
    registry.put_manifest(repo, tag or built.digest, built.data, built.media_type)
    return built.digest
