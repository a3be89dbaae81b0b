"""Auth against real registries: htpasswd + TLS with a test CA, and bearer tokens."""

from __future__ import annotations

import json
import logging
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import Stalled
from reconciler.registry import (
    AuthenticationFailed,
    DockerCredentials,
    HostConfig,
    HttpRegistry,
    TLSFailure,
    copy_artifact,
)
from tests.support.registry_servers import (
    PASSWORD,
    USER,
    RegistryServer,
    TokenServer,
    basic_auth_entry,
    build_image,
    build_index,
    push,
    skopeo,
)

pytestmark = pytest.mark.integration

WriteConfig = Callable[[dict[str, object]], Path]


def fresh(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def tls_client(server: RegistryServer, ca: bool = True) -> HttpRegistry:
    return HttpRegistry(server.host, HostConfig(ca_file=server.ca_file if ca else None))


def test_basic_auth_and_a_custom_ca_from_docker_config(
    tls_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, PASSWORD)}})
    client = tls_client(tls_registry)
    repo = fresh()
    image = build_image("tls")
    push(client, repo, image, tag="v1")
    assert client.resolve(repo, "v1") == image.digest
    raw = skopeo("inspect", "--raw", f"docker://{tls_registry.host}/{repo}:v1", server=tls_registry)
    assert raw.stdout.encode() == image.data


def test_docker_config_auth_keys_with_scheme_and_path_match_the_host(
    tls_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    docker_config(
        {"auths": {f"https://{tls_registry.host}/v1/": {"username": USER, "password": PASSWORD}}}
    )
    assert tls_client(tls_registry).list_tags(fresh()) == []


def test_without_the_ca_file_tls_verification_fails_as_stalled(
    tls_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, PASSWORD)}})
    with pytest.raises(TLSFailure) as caught:
        tls_client(tls_registry, ca=False).resolve("any/repo", "v1")
    assert isinstance(caught.value, Stalled)
    assert "caFile" in caught.value.hint


def test_a_wrong_password_is_refused_without_printing_it(
    tls_registry: RegistryServer, docker_config: WriteConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, "wrong-pass-123")}})
    with pytest.raises(AuthenticationFailed) as caught:
        tls_client(tls_registry).resolve("any/repo", "v1")
    assert "DOCKER_CONFIG" in caught.value.hint
    assert "wrong-pass-123" not in str(caught.value)
    assert "wrong-pass-123" not in caplog.text


def test_no_credentials_is_an_authentication_failure(
    tls_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    with pytest.raises(AuthenticationFailed):
        tls_client(tls_registry).resolve("any/repo", "v1")


def _helper(bin_dir: Path, name: str, secret: str) -> None:
    script = bin_dir / f"docker-credential-{name}"
    answer = json.dumps({"ServerURL": "x", "Username": USER, "Secret": secret})
    script.write_text(
        "#!/bin/sh\n"
        'read host\n[ "$1" = get ] || exit 2\n'
        f'echo "$host" >> {bin_dir}/asked\n'
        f"echo '{answer}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("kind", ["credHelpers", "credsStore"])
def test_credential_helpers_are_invoked_for_the_host(
    kind: str,
    tls_registry: RegistryServer,
    docker_config: WriteConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _helper(bin_dir, "testhelper", PASSWORD)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if kind == "credHelpers":
        docker_config({"credHelpers": {tls_registry.host: "testhelper"}})
    else:
        docker_config({"credsStore": "testhelper"})
    client = HttpRegistry(tls_registry.host, HostConfig(ca_file=tls_registry.ca_file))
    assert client.list_tags(fresh()) == []
    assert (bin_dir / "asked").read_text().split() == [tls_registry.host]


def test_a_missing_credential_helper_is_a_clear_stalled_error(
    tls_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    docker_config({"credHelpers": {tls_registry.host: "does-not-exist"}})
    with pytest.raises(AuthenticationFailed, match="docker-credential-does-not-exist"):
        tls_client(tls_registry).resolve("any/repo", "v1")


def _token_client(server: RegistryServer, docker_config: WriteConfig, user: bool) -> HttpRegistry:
    if user:
        docker_config({"auths": {server.host: basic_auth_entry(USER, PASSWORD)}})
    return HttpRegistry(server.host, HostConfig(plain_http=True), DockerCredentials())


def test_bearer_tokens_push_to_a_fresh_repository_and_are_rescoped(
    token_registry: RegistryServer, token_server: TokenServer, docker_config: WriteConfig
) -> None:
    client = _token_client(token_registry, docker_config, user=True)
    repo = fresh("team")
    image = build_image("token")
    before = len(token_server.issued)
    assert client.resolve(repo, "v1") is None  # pull scope first
    push(client, repo, image, tag="v1")  # then push: needs a wider token
    assert client.resolve(repo, "v1") == image.digest
    scopes = [s for _, granted in token_server.issued[before:] for s in granted]
    assert f"repository:{repo}:pull" in scopes
    assert f"repository:{repo}:pull,push" in scopes
    # Tokens are cached per scope: a handful of token calls for a dozen requests.
    assert len(token_server.issued) - before <= 4
    assert client.stats.total() >= 8


def test_bearer_cross_repository_mount_asks_for_both_scopes(
    token_registry: RegistryServer, token_server: TokenServer, docker_config: WriteConfig
) -> None:
    client = _token_client(token_registry, docker_config, user=True)
    source, target = fresh("team"), fresh("team")
    index = build_index("mount-multi")
    push(client, source, index, tag="v1")
    result = copy_artifact(client, source, index.digest, client, target, tag="v1")
    assert result.blobs_mounted == 4 and result.blobs_copied == 0
    assert client.resolve(target, "v1") == index.digest


def test_anonymous_bearer_pull_works_where_granted_and_push_is_refused(
    token_registry: RegistryServer, docker_config: WriteConfig
) -> None:
    writer = _token_client(token_registry, docker_config, user=True)
    repo = fresh("public")
    image = build_image("anon")
    push(writer, repo, image, tag="v1")
    docker_config({})
    reader = HttpRegistry(token_registry.host, HostConfig(plain_http=True), DockerCredentials())
    assert reader.resolve(repo, "v1") == image.digest
    with pytest.raises(AuthenticationFailed) as caught:
        reader.put_manifest(repo, "v2", image.data, image.media_type)
    assert isinstance(caught.value, Stalled)
    assert reader.resolve(repo, "v2") is None
