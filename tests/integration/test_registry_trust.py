"""TLS trust as people have it: the system store plus SSL_CERT_FILE / SSL_CERT_DIR /
REQUESTS_CA_BUNDLE, a per-host CA (``caFile`` bytes from the state repository), and
client certificates in Docker's ``certs.d/<host>/`` layout."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import Stalled
from reconciler.registry import HostConfig, HttpRegistry, RegistryError, TLSFailure
from reconciler.registry.trust import default_context, host_certs
from tests.support.registry_servers import (
    RegistryFactory,
    RegistryServer,
    build_image,
    issue_client,
    make_ca,
    push,
    require_tool,
)

pytestmark = pytest.mark.integration

TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


@pytest.fixture(autouse=True)
def untrusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No trust variables and a home of the test's own (no certs.d)."""
    for name in TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="module")
def tls_server(registry_factory: RegistryFactory) -> Iterator[RegistryServer]:
    server = registry_factory.tls_only()
    yield server
    server.stop()


def fresh() -> str:
    return f"tls/{uuid.uuid4().hex[:10]}"


def trusted(server: RegistryServer) -> HttpRegistry:
    return HttpRegistry(server.host, HostConfig(ca_file=server.ca_file))


def test_without_any_trust_the_registry_is_refused_and_unchanged(
    tls_server: RegistryServer,
) -> None:
    repo, image = fresh(), build_image("untrusted")
    with pytest.raises(TLSFailure) as caught:
        push(HttpRegistry(tls_server.host), repo, image, tag="v1")
    assert isinstance(caught.value, Stalled)
    assert "caFile" in caught.value.hint and "trusted here:" in caught.value.hint
    assert trusted(tls_server).list_tags(repo) == []


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_a_ca_bundle_named_by_the_environment_is_trusted(
    variable: str, tls_server: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, str(tls_server.ca_file))
    registry = HttpRegistry(tls_server.host)
    repo, image = fresh(), build_image(variable)
    push(registry, repo, image, tag="v1")
    assert registry.resolve(repo, "v1") == image.digest


def test_a_hashed_certificate_directory_in_ssl_cert_dir_is_trusted(
    tls_server: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openssl = require_tool("openssl")
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(str(tls_server.ca_file), directory / "test-ca.pem")
    subprocess.run([openssl, "rehash", str(directory)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_DIR", f"/nonexistent:{directory}")
    assert HttpRegistry(tls_server.host).list_tags(fresh()) == []


def test_the_environment_adds_to_the_system_store_rather_than_replacing_it(
    tls_server: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = default_context().cert_store_stats()["x509_ca"]
    assert system > 50  # Debian's ca-certificates, loaded from OpenSSL's default file
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca_file))
    assert default_context().cert_store_stats()["x509_ca"] == system + 1


def test_a_ca_from_the_state_repository_is_trusted_for_its_host_only(
    tls_server: RegistryServer,
) -> None:
    pem = Path(str(tls_server.ca_file)).read_bytes()
    registry = HttpRegistry(tls_server.host, HostConfig(ca_pem=pem))
    assert registry.list_tags(fresh()) == []
    with pytest.raises(TLSFailure, match="cannot load"):
        HttpRegistry(tls_server.host, HostConfig(ca_pem=b"-----BEGIN CERTIFICATE-----\nnope\n"))


@pytest.fixture(scope="module")
def mtls(
    registry_factory: RegistryFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryServer, Path]]:
    """A registry that demands a client certificate, and a certs.d directory for it."""
    clients = make_ca("client CA")
    server = registry_factory.tls_only(client_ca=clients)
    directory = tmp_path_factory.mktemp("certsd") / server.host
    directory.mkdir()
    issue_client(clients, directory, "client")
    shutil.copy(str(server.ca_file), directory / "ca.crt")
    yield server, directory
    server.stop()


def test_a_registry_wanting_a_client_certificate_refuses_us_without_one(
    mtls: tuple[RegistryServer, Path],
) -> None:
    server, _ = mtls
    with pytest.raises(RegistryError):
        trusted(server).resolve("any/repo", "v1")


def test_client_certificates_come_from_the_hosts_certs_d_directory(
    mtls: tuple[RegistryServer, Path],
) -> None:
    server, directory = mtls
    certs_d = Path.home() / ".config" / "containers" / "certs.d"
    certs_d.mkdir(parents=True)
    shutil.copytree(directory, certs_d / server.host)
    found = host_certs(server.host)
    assert found.client is not None and found.roots  # client.cert + client.key, ca.crt
    registry = HttpRegistry(server.host)  # trust from ca.crt there too; no caFile
    repo, image = fresh(), build_image("mtls")
    push(registry, repo, image, tag="v1")
    assert registry.resolve(repo, "v1") == image.digest


def test_a_client_certificate_without_its_key_is_a_clear_error(
    mtls: tuple[RegistryServer, Path], tmp_path: Path
) -> None:
    server, directory = mtls
    half = tmp_path / "certs.d" / server.host
    half.mkdir(parents=True)
    shutil.copy(directory / "client.cert", half / "client.cert")
    with pytest.raises(TLSFailure, match="without its key"):
        HttpRegistry(server.host, certs_dirs=(str(tmp_path / "certs.d"),))


def test_tls_1_2_is_the_floor() -> None:
    assert default_context().minimum_version == ssl.TLSVersion.TLSv1_2
