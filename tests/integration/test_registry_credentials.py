"""Where registry credentials come from, in order: --authfile, Docker's config.json,
REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json;
against the real htpasswd + TLS registry."""

from __future__ import annotations

import json
import logging
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
    set_auth_file,
)
from tests.support import recordkeys
from tests.support.registry_servers import (
    PASSWORD,
    USER,
    RegistryServer,
    basic_auth_entry,
    build_image,
    push,
    skopeo,
)
from tests.support.staterepo import StateRepo

pytestmark = pytest.mark.integration

WriteConfig = Callable[[dict[str, object]], Path]
WRONG = "wrong-pass-7f3a91"


@pytest.fixture(autouse=True)
def clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: WriteConfig
) -> Iterator[None]:
    """A home, runtime dir and Docker config of the test's own; no --authfile."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    set_auth_file(None)
    yield
    set_auth_file(None)


def auth_json(path: Path, host: str, password: str = PASSWORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {host: basic_auth_entry(USER, password)}}))
    return path


def client(server: RegistryServer, credentials: DockerCredentials | None = None) -> HttpRegistry:
    return HttpRegistry(server.host, HostConfig(ca_file=server.ca_file), credentials)


def owner(server: RegistryServer, tmp_path: Path) -> HttpRegistry:
    """A client with the right credentials, to see what is really there."""
    directory = tmp_path / f"owner-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"auths": {server.host: basic_auth_entry(USER, PASSWORD)}})
    )
    return client(server, DockerCredentials(str(directory)))


def fresh() -> str:
    return f"c/{uuid.uuid4().hex[:10]}"


def test_credentials_only_in_registry_auth_file_push_and_skopeo_sees_it(
    tls_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "REGISTRY_AUTH_FILE", str(auth_json(tmp_path / "auth.json", tls_registry.host))
    )
    registry = client(tls_registry)
    repo, image = fresh(), build_image("authfile")
    push(registry, repo, image, tag="v1")
    raw = skopeo("inspect", "--raw", f"docker://{tls_registry.host}/{repo}:v1", server=tls_registry)
    assert raw.stdout.encode() == image.data


def test_the_containers_auth_json_in_the_runtime_dir(
    tls_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    auth_json(runtime / "containers" / "auth.json", tls_registry.host)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert client(tls_registry).list_tags(fresh()) == []


def test_the_containers_auth_json_in_the_home_config(tls_registry: RegistryServer) -> None:
    auth_json(Path.home() / ".config" / "containers" / "auth.json", tls_registry.host)
    assert client(tls_registry).list_tags(fresh()) == []


def test_docker_config_comes_before_registry_auth_file(
    tls_registry: RegistryServer,
    docker_config: WriteConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, PASSWORD)}})
    wrong = auth_json(tmp_path / "auth.json", tls_registry.host, WRONG)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(wrong))
    assert client(tls_registry).list_tags(fresh()) == []


def test_authfile_comes_before_everything(
    tls_registry: RegistryServer, docker_config: WriteConfig, tmp_path: Path
) -> None:
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, WRONG)}})
    set_auth_file(str(auth_json(tmp_path / "explicit.json", tls_registry.host)))
    assert client(tls_registry).list_tags(fresh()) == []
    assert DockerCredentials().files[0] == tmp_path / "explicit.json"


def test_a_namespace_scoped_entry_is_not_used_for_the_whole_host(
    tls_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps({"auths": {f"{tls_registry.host}/team": basic_auth_entry(USER, PASSWORD)}})
    )
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    with pytest.raises(AuthenticationFailed):
        client(tls_registry).resolve("other/repo", "v1")


def test_wrong_credentials_are_refused_naming_their_file_and_nothing_changes(
    tls_registry: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = auth_json(tmp_path / "auth.json", tls_registry.host, WRONG)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(wrong))
    repo, image = fresh(), build_image("refused")
    with pytest.raises(AuthenticationFailed) as caught:
        push(client(tls_registry), repo, image, tag="v1")
    assert str(wrong) in caught.value.hint and "REGISTRY_AUTH_FILE" in caught.value.hint
    assert WRONG not in str(caught.value) and WRONG not in caplog.text
    assert owner(tls_registry, tmp_path).list_tags(repo) == []


def test_a_missing_authfile_is_an_error_not_a_silent_fallback(
    tls_registry: RegistryServer, tmp_path: Path
) -> None:
    set_auth_file(str(tmp_path / "nope.json"))
    with pytest.raises(AuthenticationFailed, match="--authfile"):
        client(tls_registry).resolve("any/repo", "v1")


def test_cli_authfile_and_ssl_cert_file_reach_a_private_tls_registry(
    tls_registry: RegistryServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No caFile, no Docker config: trust from SSL_CERT_FILE, credentials from --authfile."""
    for name in ("SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.ca_file))
    repo, image = fresh(), build_image("cli")
    push(owner(tls_registry, tmp_path), repo, image)
    state = StateRepo(tmp_path / "state")
    state.commit(
        {
            "reconciler.cue": "package reconciler\n\nsettings: {\n"
            f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
            "catalogs/c.cue": 'package reconciler\n\ncatalogs: "example.org/c": {\n'
            f'\tsource: "{tls_registry.host}/{repo}"\n'
            f'\treleases: [{{name: "v1", items: {{app: "{image.digest}"}}}}]\n}}\n',
            "environments/dev.cue": "package reconciler\n\nenvironments: dev: {\n"
            '\tcatalog: "example.org/c"\n\trelease: "v1"\n}\n',
            recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
        }
    )
    authfile = auth_json(tmp_path / "ci-auth.json", tls_registry.host)
    assert main(["status", "--repo", str(state.path)]) == 1  # no credentials anywhere
    out, err = capsys.readouterr()
    assert "authfile" in out + err
    assert main(["apply", "--repo", str(state.path), "--authfile", str(authfile)]) == 0
    capsys.readouterr()
    assert owner(tls_registry, tmp_path).resolve(repo, "dev-app") == image.digest
    assert main(["status", "--repo", str(state.path), "--authfile", str(authfile)]) == 0
