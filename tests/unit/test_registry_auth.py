"""Credentials from Docker's config.json and the bearer/basic handshake, without a server."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import requests

from reconciler.registry import AuthenticationFailed, Credential, DockerCredentials
from reconciler.registry.auth import Authenticator, normalise_host, parse_challenge


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_challenge_parsing_keeps_commas_inside_quotes() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",'
        'scope="repository:a/b:pull,push repository:c:pull"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push repository:c:pull",
    }
    basic = parse_challenge('Basic realm="x"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("") is None


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://r.example:5000/path", "r.example:5000"),
        ("R.Example", "r.example"),
    ],
)
def test_config_keys_normalise_to_hosts(key: str, host: str) -> None:
    assert normalise_host(key) == host


def test_docker_config_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_config(tmp_path / "cfg", {"auths": {"r.example": {"auth": b64("u:p:w")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    cred = DockerCredentials().lookup("r.example")
    assert cred == Credential("u", "p:w")
    assert "p:w" not in repr(cred)
    assert DockerCredentials().lookup("other.example") is None


def test_home_docker_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_config(tmp_path / ".docker", {"auths": {"h": {"username": "a", "password": "b"}}})
    assert DockerCredentials().lookup("h") == Credential("a", "b")


def test_identity_tokens_are_kept(tmp_path: Path) -> None:
    directory = write_config(tmp_path, {"auths": {"h": {"auth": b64("u:"), "identitytoken": "T"}}})
    cred = DockerCredentials(str(directory)).lookup("h")
    assert cred is not None and cred.identity_token == "T"


def test_cred_helper_wins_over_auths_and_token_username(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\nread host\n"
        'if [ "$host" = "h" ]; then echo \'{"Username":"<token>","Secret":"REFRESH"}\'; exit 0; fi\n'
        "echo 'credentials not found in native keychain'; exit 1\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    directory = write_config(
        tmp_path / "cfg",
        {"credHelpers": {"h": "fake"}, "auths": {"h": {"auth": b64("x:y")}}, "credsStore": "fake"},
    )
    creds = DockerCredentials(str(directory))
    assert creds.lookup("h") == Credential("", "", "REFRESH")
    assert creds.lookup("elsewhere") is None  # the store has nothing: anonymous


def test_malformed_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AuthenticationFailed, match="not valid JSON"):
        DockerCredentials(str(tmp_path)).lookup("h")


def _response(status: int, headers: dict[str, str] | None = None, body: object = None) -> Any:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = json.dumps(body).encode() if body is not None else b""
    return response


class FakeTokenService:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kwargs})
        scopes = [v for k, v in kwargs.get("params", []) if k == "scope"]
        return _response(200, body={"token": "tok-" + "+".join(scopes), "expires_in": 300})


def bearer(scope: str = "") -> Any:
    extra = f',scope="{scope}"' if scope else ""
    return _response(
        401, {"WWW-Authenticate": f'Bearer realm="https://a/token",service="s"{extra}'}
    )


def test_bearer_tokens_are_cached_per_scope_and_rescoped_on_challenge() -> None:
    service = FakeTokenService()
    auth = Authenticator("h", lambda: Credential("u", "p"), service, allow_plain_realm=False)
    pull = ["repository:a:pull"]
    assert auth.authorization(pull) is None  # nothing known yet
    assert auth.on_challenge(bearer("repository:a:pull"), pull)
    assert auth.authorization(pull) == "Bearer tok-repository:a:pull"
    assert len(service.calls) == 1
    # A push to another repo: fetched before sending, with its own scope.
    push = ["repository:b:pull,push"]
    assert auth.authorization(push) == "Bearer tok-repository:b:pull,push"
    # A 401 naming a wider scope gets a token that includes it.
    assert auth.on_challenge(bearer("repository:b:delete"), push)
    header = auth.authorization(push)
    assert header is not None and "repository:b:delete" in header
    assert service.calls[0]["auth"] == ("u", "p")


def test_credentials_are_not_sent_to_a_plain_http_realm_of_a_tls_registry() -> None:
    def fetch(method: str, url: str, **kwargs: Any) -> Any:
        raise AssertionError("must not be called")

    auth = Authenticator("h", lambda: Credential("u", "p"), fetch, allow_plain_realm=False)
    challenge = _response(401, {"WWW-Authenticate": 'Bearer realm="http://a/token"'})
    with pytest.raises(AuthenticationFailed, match="plain-HTTP token realm"):
        auth.on_challenge(challenge, ["repository:a:pull"])


def test_identity_tokens_use_the_oauth2_refresh_grant() -> None:
    service = FakeTokenService()
    auth = Authenticator("h", lambda: Credential("", "", "REFRESH"), service, False)
    assert auth.on_challenge(bearer(), ["repository:a:pull"])
    call = service.calls[0]
    assert call["method"] == "POST" and call["data"]["refresh_token"] == "REFRESH"
    assert call["data"]["grant_type"] == "refresh_token"


def test_basic_challenge_without_credentials_gives_up() -> None:
    auth = Authenticator("h", lambda: None, FakeTokenService(), False)
    assert not auth.on_challenge(_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), [])
    with_creds = Authenticator("h", lambda: Credential("u", "p"), FakeTokenService(), False)
    assert with_creds.on_challenge(_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), [])
    assert with_creds.authorization([]) == "Basic " + b64("u:p")
    # A second Basic challenge means the password is wrong: stop.
    assert not with_creds.on_challenge(_response(401, {"WWW-Authenticate": 'Basic realm="r"'}), [])


def test_token_service_refusal_is_an_authentication_failure() -> None:
    def refuse(method: str, url: str, **kwargs: Any) -> Any:
        return _response(401)

    auth = Authenticator("h", lambda: Credential("u", "secret-pw"), refuse, False)
    with pytest.raises(AuthenticationFailed) as caught:
        auth.on_challenge(bearer(), ["repository:a:pull"])
    assert "secret-pw" not in str(caught.value)


# --------------------------------------------------------------------------- sources


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of the test's own and no credential variables; returns the home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    return home


def recording_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, knows: str) -> Path:
    """docker-credential-rec: answers for ``knows`` only, logs what it was asked."""
    asked = tmp_path / "asked"
    helper = tmp_path / "bin" / "docker-credential-rec"
    helper.parent.mkdir(exist_ok=True)
    helper.write_text(
        f'#!/bin/sh\nread server\necho "$server" >> {asked}\n'
        f'if [ "$server" = "{knows}" ]; then echo \'{{"Username":"u","Secret":"s"}}\'; exit 0; fi\n'
        "exit 1\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    return asked


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_credentials_live_under_the_legacy_index_key(
    host: str, tmp_path: Path, isolated: Path
) -> None:
    directory = write_config(
        tmp_path / "cfg", {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}}}
    )
    assert DockerCredentials(str(directory)).lookup(host) == Credential("hub", "pw")


@pytest.mark.parametrize("kind", ["credsStore", "credHelpers"])
def test_helpers_are_asked_for_docker_hub_under_its_key(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    asked = recording_helper(tmp_path, monkeypatch, "https://index.docker.io/v1/")
    config: dict[str, Any] = (
        {"credsStore": "rec"} if kind == "credsStore" else {"credHelpers": {"docker.io": "rec"}}
    )
    creds = DockerCredentials(str(write_config(tmp_path / "cfg", config)))
    assert creds.lookup("docker.io") == Credential("u", "s")
    assert asked.read_text().split() == ["https://index.docker.io/v1/"]


def test_a_helper_is_asked_for_other_hosts_by_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    asked = recording_helper(tmp_path, monkeypatch, "r.example:5000")
    creds = DockerCredentials(str(write_config(tmp_path / "cfg", {"credsStore": "rec"})))
    assert creds.lookup("r.example:5000") == Credential("u", "s")
    assert asked.read_text().split() == ["r.example:5000"]


def test_the_files_are_consulted_in_the_documented_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "env-auth.json"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    files = DockerCredentials(auth_file=str(tmp_path / "flag.json")).files
    assert files == [
        tmp_path / "flag.json",
        tmp_path / "docker" / "config.json",
        tmp_path / "env-auth.json",
        tmp_path / "run" / "containers" / "auth.json",
        isolated / ".config" / "containers" / "auth.json",
    ]


def test_the_first_file_that_knows_the_host_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    write_config(tmp_path / "docker", {"auths": {"other.example": {"auth": b64("d:d")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    env_file = tmp_path / "env-auth.json"
    env_file.write_text(json.dumps({"auths": {"h.example": {"auth": b64("env:1")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    home_file = isolated / ".config" / "containers" / "auth.json"
    home_file.parent.mkdir(parents=True)
    home_file.write_text(json.dumps({"auths": {"h.example": {"auth": b64("home:2")}}}))
    cred = DockerCredentials().lookup("h.example")
    assert cred == Credential("env", "1") and cred is not None and cred.source == str(env_file)
    assert DockerCredentials().lookup("other.example") == Credential("d", "d")


def test_namespace_scoped_keys_are_not_whole_host_credentials(
    tmp_path: Path, isolated: Path
) -> None:
    directory = write_config(tmp_path, {"auths": {"quay.io/team": {"auth": b64("t:t")}}})
    assert DockerCredentials(str(directory)).lookup("quay.io") is None


def test_an_oversized_credential_file_is_refused(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "config.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(AuthenticationFailed, match="limit"):
        DockerCredentials(str(tmp_path)).lookup("h")


def test_credentials_are_looked_up_again_after_a_while(tmp_path: Path, isolated: Path) -> None:
    """A daemon picks up a new login without a restart."""
    now = [0.0]
    directory = write_config(tmp_path / "cfg", {"auths": {"h": {"auth": b64("u:old")}}})
    creds = DockerCredentials(str(directory), clock=lambda: now[0])
    assert creds.lookup("h") == Credential("u", "old")
    write_config(directory, {"auths": {"h": {"auth": b64("u:new")}}})
    now[0] = 10.0
    assert creds.lookup("h") == Credential("u", "old")  # cached
    now[0] = 400.0
    assert creds.lookup("h") == Credential("u", "new")
