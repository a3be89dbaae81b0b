"""TLS trust and client certificates for registry connections.

Trust is additive, in this order: the system store (OpenSSL's default file and
directory, e.g. Debian's ``/etc/ssl/certs``), then ``SSL_CERT_FILE``, ``SSL_CERT_DIR``
and ``REQUESTS_CA_BUNDLE`` when set, then the host's own extra CA (``caFile`` in the
state repository, read from the tree) and the ``*.crt`` files of its ``certs.d``
directory. certifi's bundle is not used: a registry behind a corporate CA must work
wherever ``curl`` and ``docker`` work. (This is what the ``truststore`` package does
on Linux, written out with the standard library so that the environment variables
add to the system store instead of replacing it.)

Client certificates follow Docker's ``certs.d/<host>/`` layout (``client.cert`` +
``client.key``, or any ``*.cert`` with its ``*.key``), looked up in
``~/.config/containers/certs.d``, ``/etc/containers/certs.d`` and
``/etc/docker/certs.d``; the first directory that exists for the host is used. They
are presented to that host only, never on a redirect to another origin.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from reconciler.registry.config import DOCKER_HUB, DOCKER_HUB_API, canonical_host
from reconciler.registry.errors import TLSFailure

log = logging.getLogger(__name__)

MAX_PEM_BYTES = 1 << 20  # a CA bundle or client key over 1 MiB is not one
ENV_TRUST = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def default_certs_dirs() -> tuple[str, ...]:
    """Where podman and Docker look for per-host certificates (``certs.d/<host>/``)."""
    return (
        str(Path.home() / ".config" / "containers" / "certs.d"),
        "/etc/containers/certs.d",
        "/etc/docker/certs.d",
    )


@dataclass(frozen=True)
class HostCerts:
    """What a ``certs.d/<host>/`` directory holds: extra roots and a client pair."""

    directory: str | None = None
    roots: tuple[str, ...] = ()
    client: tuple[str, str] | None = None


def host_certs(host: str, dirs: tuple[str, ...] | None = None) -> HostCerts:
    """The first ``certs.d/<host>`` directory that exists; raises on a half pair."""
    names = [host]
    if canonical_host(host) == DOCKER_HUB:
        names = [DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"]
    for base in dirs if dirs is not None else default_certs_dirs():
        for name in names:
            directory = Path(base) / name
            if directory.is_dir():
                return _scan(directory)
    return HostCerts()


def _scan(directory: Path) -> HostCerts:
    roots = tuple(str(p) for p in sorted(directory.glob("*.crt")))
    certs = sorted(directory.glob("*.cert"))
    client = None
    for cert in certs:
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise TLSFailure(
                f"{cert}: client certificate without its key {key.name}",
                "put the matching .key next to the .cert, or remove the .cert",
            )
        client = (str(cert), str(key))
        break
    for key in sorted(directory.glob("*.key")):
        if not key.with_suffix(".cert").is_file():
            raise TLSFailure(
                f"{key}: client key without its certificate {key.with_suffix('.cert').name}",
                "put the matching .cert next to the .key, or remove the .key",
            )
    return HostCerts(str(directory), roots, client)


def trust_context(
    host: str,
    *,
    ca_pem: bytes | None = None,
    ca_file: str | None = None,
    certs: HostCerts | None = None,
) -> ssl.SSLContext:
    """A verifying client context: system + environment + this host's extra trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_system_and_environment(context)
    try:
        if ca_pem:
            context.load_verify_locations(cadata=_text(ca_pem, f"caFile of {host}"))
        if ca_file:
            context.load_verify_locations(cafile=_checked(ca_file))
        for root in certs.roots if certs else ():
            context.load_verify_locations(cafile=_checked(root))
        if certs and certs.client:
            cert, key = certs.client
            context.load_cert_chain(_checked(cert), _checked(key))
    except (ssl.SSLError, ValueError) as exc:
        raise TLSFailure(
            f"{host}: cannot load its CA or client certificate: {exc.__class__.__name__}",
            "caFile must be PEM certificates; certs.d must hold PEM files",
        ) from None
    except OSError as exc:
        raise TLSFailure(f"{host}: cannot read a certificate file: {exc.strerror}") from None
    return context


def default_context() -> ssl.SSLContext:
    """The context for origins other than a registry itself (token realms, storage)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_system_and_environment(context)
    return context


def trust_sources() -> str:
    """Which stores a context trusts, for a hint after a verification failure."""
    paths = ssl.get_default_verify_paths()
    used = [p for p in (paths.openssl_cafile, paths.openssl_capath) if p and os.path.exists(p)]
    used += [f"${name}" for name in ENV_TRUST if os.environ.get(name)]
    return ", ".join(used) or "no trust store found"


def _load_system_and_environment(context: ssl.SSLContext) -> None:
    paths = ssl.get_default_verify_paths()
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        context.load_verify_locations(cafile=paths.openssl_cafile)
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath):
        context.load_verify_locations(capath=paths.openssl_capath)
    for name in ENV_TRUST:
        value = os.environ.get(name)
        if not value:
            continue
        for item in value.split(os.pathsep) if name == "SSL_CERT_DIR" else [value]:
            try:
                if os.path.isdir(item):
                    context.load_verify_locations(capath=item)
                elif os.path.isfile(item) and os.path.getsize(item) <= MAX_PEM_BYTES * 4:
                    context.load_verify_locations(cafile=item)
                else:
                    _warn_once(f"{name}={item}: no such file or directory; ignored")
            except (ssl.SSLError, OSError):
                _warn_once(f"{name}={item}: not a PEM certificate bundle; ignored")


def _warn_once(message: str) -> None:
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("%s", message)


def _checked(path: str) -> str:
    size = os.path.getsize(path)
    if size > MAX_PEM_BYTES:
        raise TLSFailure(f"{path} is {size:,} bytes: too large for a certificate or key")
    return path


def _text(pem: bytes, what: str) -> str:
    if len(pem) > MAX_PEM_BYTES:
        raise TLSFailure(f"{what} is {len(pem):,} bytes: too large for a CA bundle")
    try:
        return pem.decode("ascii")
    except UnicodeDecodeError:
        raise TLSFailure(f"{what} is not PEM text") from None
