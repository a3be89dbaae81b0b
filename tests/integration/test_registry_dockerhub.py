"""Docker Hub as the docker CLI reaches it, through a recording HTTPS proxy with its own
CA standing in for it (``HTTPS_PROXY``; the proxy's CA trusted through ``SSL_CERT_FILE``
only): ``docker.io`` names go to ``registry-1.docker.io``, credentials are asked of the
credential helper under ``https://index.docker.io/v1/``, and they go to the token
service that the registry's challenge names, never to the registry itself."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.registry import (
    AuthenticationFailed,
    DockerCredentials,
    HostConfig,
    HttpRegistry,
    RegistrySettings,
    copy_artifact,
    open_registry,
    parse_reference,
)
from tests.support import recordkeys
from tests.support.hubproxy import RecordingHttpsProxy
from tests.support.registry_servers import (
    PASSWORD,
    USER,
    RegistryServer,
    TokenServer,
    basic_auth_entry,
    build_image,
    push,
)
from tests.support.staterepo import StateRepo

pytestmark = pytest.mark.integration

HUB_API = "registry-1.docker.io"
HUB_AUTH = "auth.docker.io"
HUB_KEY = "https://index.docker.io/v1/"
WriteConfig = Callable[[dict[str, object]], Path]


@pytest.fixture
def hub(
    token_registry: RegistryServer,
    token_server: TokenServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[RecordingHttpsProxy]:
    directory = tmp_path / "hub"
    directory.mkdir()
    proxy = RecordingHttpsProxy(
        directory,
        routes={HUB_API: token_registry.host, HUB_AUTH: f"127.0.0.1:{token_server.port}"},
        realms={f"{token_server.url}/token": f"https://{HUB_AUTH}/token"},
    )
    for name in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_file))  # the only way to trust it
    yield proxy
    proxy.close()


@pytest.fixture
def alpine(token_registry: RegistryServer, docker_config: WriteConfig) -> str:
    """library/alpine:3.20 (and a copy under acme/) on the registry behind the proxy."""
    docker_config({"auths": {token_registry.host: basic_auth_entry(USER, PASSWORD)}})
    direct = HttpRegistry(token_registry.host, HostConfig(plain_http=True), DockerCredentials())
    image = build_image(f"alpine-{uuid.uuid4().hex[:6]}")
    push(direct, "library/alpine", image, tag="3.20")
    direct.close()
    return image.digest


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: WriteConfig) -> Path:
    """``credsStore: hubstore``: a docker-credential-hubstore that knows Hub only,
    under Docker's key, and writes down what it was asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    answer = json.dumps({"ServerURL": HUB_KEY, "Username": USER, "Secret": PASSWORD})
    script = bin_dir / "docker-credential-hubstore"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read server\n"
        f'echo "$server" >> {asked}\n'
        f'if [ "$server" = "{HUB_KEY}" ]; then echo \'{answer}\'; exit 0; fi\n'
        "echo 'credentials not found in native keychain'; exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    docker_config({"credsStore": "hubstore"})
    return asked


@pytest.mark.parametrize(
    "name", ["docker.io/library/alpine", "index.docker.io/library/alpine", "alpine"]
)
def test_docker_hub_names_reach_registry_1_with_the_helpers_hub_credentials(
    name: str, alpine: str, hub: RecordingHttpsProxy, helper: Path
) -> None:
    ref = parse_reference(f"{name}:3.20")
    assert (ref.registry, ref.repository) == ("docker.io", "library/alpine")
    registry = open_registry(ref, RegistrySettings())
    assert registry.resolve(ref.repository, "3.20") == alpine
    assert registry.get_manifest(ref.repository, alpine).digest == alpine
    # Only the API host and the token service were ever connected to.
    assert set(hub.connects) == {f"{HUB_API}:443", f"{HUB_AUTH}:443"}
    # The helper was asked under Docker's key for Hub, and nothing else.
    assert set(helper.read_text().split()) == {HUB_KEY}
    # The password went to the token service the challenge named, never to the registry.
    to_registry = hub.to(HUB_API)
    assert to_registry and all(s.path.startswith("/v2/") for s in to_registry)
    assert all(
        s.authorization is None or s.authorization.startswith("Bearer ") for s in to_registry
    )
    assert any(s.authorization for s in to_registry)
    assert all((s.authorization or "Basic").startswith("Basic ") for s in hub.to(HUB_AUTH))
    registry.close()


def test_docker_hub_credentials_under_the_hub_key_in_auths(
    alpine: str, hub: RecordingHttpsProxy, docker_config: WriteConfig
) -> None:
    docker_config({"auths": {HUB_KEY: basic_auth_entry(USER, PASSWORD)}})
    registry = open_registry("docker.io/library/alpine")
    assert registry.resolve("library/alpine", "3.20") == alpine
    assert any(s.authorization for s in hub.to(HUB_AUTH))


def test_without_hub_credentials_a_private_repository_is_refused_and_unchanged(
    alpine: str,
    hub: RecordingHttpsProxy,
    docker_config: WriteConfig,
    token_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    docker_config({"auths": {"ghcr.io": basic_auth_entry(USER, PASSWORD)}})
    registry = open_registry("docker.io/library/alpine")
    # Anonymous: the token service grants nothing outside public/, the registry says no.
    with pytest.raises(AuthenticationFailed) as caught:
        registry.resolve("library/alpine", "3.20")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(AuthenticationFailed):
        registry.put_manifest("library/alpine", "evil", build_image("evil").data)
    assert all(s.authorization is None for s in hub.to(HUB_AUTH))
    # Unchanged, as the owner sees it.
    owner_config = tmp_path / "owner"
    owner_config.mkdir()
    (owner_config / "config.json").write_text(
        json.dumps({"auths": {token_registry.host: basic_auth_entry(USER, PASSWORD)}})
    )
    owner = HttpRegistry(
        token_registry.host, HostConfig(plain_http=True), DockerCredentials(str(owner_config))
    )
    assert owner.resolve("library/alpine", "evil") is None
    assert owner.resolve("library/alpine", "3.20") == alpine


def test_apply_promotes_from_docker_hub_into_a_private_registry(
    alpine: str,
    hub: RecordingHttpsProxy,
    helper: Path,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = f"{plain_registry.host}/mirror{uuid.uuid4().hex[:6]}/alpine"
    repo = StateRepo(tmp_path / "state")
    repo.commit(
        {
            "reconciler.cue": "package reconciler\n\nsettings: {\n"
            f'\tregistries: "{plain_registry.host}": plainHTTP: true\n'
            f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
            "catalogs/alpine.cue": 'package reconciler\n\ncatalogs: "docker.io/alpine": {\n'
            '\tsource: "docker.io/library/alpine"\n'
            f'\treleases: [{{name: "3.20", items: {{alpine: "{alpine}"}}}}]\n}}\n',
            "environments/prod.cue": "package reconciler\n\nenvironments: prod: {\n"
            '\tcatalog: "docker.io/alpine"\n\trelease: "3.20"\n'
            f'\ttarget: repository: "{target}"\n}}\n',
            recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
        },
        "alpine from Docker Hub",
    )
    code = main(["apply", "--repo", str(repo.path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    local = HttpRegistry(plain_registry.host, HostConfig(plain_http=True))
    assert local.resolve(target.split("/", 1)[1], "prod-alpine") == alpine
    assert set(hub.connects) <= {f"{HUB_API}:443", f"{HUB_AUTH}:443"}
    assert "docker.io:443" not in hub.connects


def test_copy_from_hub_to_a_local_registry_keeps_the_bytes(
    alpine: str, hub: RecordingHttpsProxy, helper: Path, plain_registry: RegistryServer
) -> None:
    source = open_registry("docker.io/library/alpine")
    local = HttpRegistry(plain_registry.host, HostConfig(plain_http=True))
    repo = f"hub{uuid.uuid4().hex[:6]}/alpine"
    copy_artifact(source, "library/alpine", alpine, local, repo, tag="3.20")
    assert (
        local.get_manifest(repo, "3.20").data == source.get_manifest("library/alpine", alpine).data
    )
