"""settings.registries end to end, with one parser: the schemas (CUE and JSON Schema,
in agreement) accept connectTimeout, readTimeout and attempts; the loader reads caFile
from the commit's tree (an input of the state); registry_settings() hands all of it to
the registry layer; and a TLS registry trusted only through that caFile is applied to."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reconciler.cli.main import main
from reconciler.desired import Loader, schema_dir
from reconciler.engine.reconcile import registry_settings
from reconciler.errors import InvalidState
from reconciler.git import GitSource
from reconciler.registry import HostConfig, HttpRegistry
from tests.support import recordkeys
from tests.support.judged import in_force
from tests.support.registry_servers import RegistryFactory, RegistryServer, build_image, push
from tests.support.schemas import cue_verdict
from tests.support.staterepo import StateRepo

pytestmark = pytest.mark.integration

HOST = "127.0.0.1:5000"


def registries(**fields: Any) -> dict[str, Any]:
    return {"settings": {"registries": {HOST: fields}}}


CASES: dict[str, tuple[bool, dict[str, Any]]] = {
    "timeouts-and-attempts": (True, registries(connectTimeout=2, readTimeout=12.5, attempts=5)),
    "connect-timeout-zero": (False, registries(connectTimeout=0)),
    "read-timeout-string": (False, registries(readTimeout="30s")),
    "attempts-zero": (False, registries(attempts=0)),
    "attempts-fraction": (False, registries(attempts=1.5)),
    "attempts-too-many": (False, registries(attempts=100)),
    "retry-object-is-gone": (False, registries(retry={"attempts": 3})),
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_schemas_judge_the_new_fields_alike(name: str, cue_bin: str, tmp_path: Path) -> None:
    expected, doc = CASES[name]
    schema = json.loads((schema_dir() / "reconciler.schema.json").read_text())
    assert jsonschema.Draft202012Validator(schema).is_valid(doc) is expected
    assert cue_verdict(cue_bin, doc, tmp_path) is expected


def state_files(host: str, repo: str, digest: str, settings: str) -> dict[str, str]:
    return {
        "reconciler.cue": "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{host}": {{{settings}}}\n'
        f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
        "catalogs/c.cue": 'package reconciler\n\ncatalogs: "example.org/c": {\n'
        f'\tsource: "{host}/{repo}"\n'
        f'\treleases: [{{name: "v1", items: {{app: "{digest}"}}}}]\n}}\n',
        "environments/dev.cue": "package reconciler\n\nenvironments: dev: {\n"
        '\tcatalog: "example.org/c"\n\trelease: "v1"\n}\n',
        recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
    }


def load(repo: StateRepo, tmp_path: Path) -> Any:
    return Loader(tmp_path / "cache").load(GitSource(str(repo.path)).snapshot("main"))


def test_ca_file_is_read_from_the_tree_and_every_field_reaches_the_registry_layer(
    tmp_path: Path, cue_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing is read relative to the working directory
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    repo = StateRepo(tmp_path / "state")
    settings = 'caFile: "keys/ca.pem", connectTimeout: 2, readTimeout: 12.5, attempts: 5'
    repo.commit({**state_files(HOST, "a/b", "sha256:" + "a" * 64, settings), "keys/ca.pem": pem})
    state = load(repo, tmp_path)
    assert "keys/ca.pem" in state.inputs  # the commit-signature rule guards it
    registry = state.proposed_settings.registries[HOST]
    assert registry.ca_data == pem.encode()
    host = registry_settings(in_force(state).policy).for_host(HOST)
    assert host.ca_pem == pem.encode() and host.ca_file is None
    assert (host.connect_timeout, host.read_timeout, host.retry.attempts) == (2, 12.5, 5)
    assert host.concurrency == 16  # the default


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "is not a file in the repository"),
        ({"keys/ca.pem": "not a certificate"}, "is not a PEM CA certificate"),
    ],
)
def test_a_missing_or_bad_ca_file_is_a_problem_naming_the_field(
    files: dict[str, str], message: str, tmp_path: Path, cue_bin: str
) -> None:
    repo = StateRepo(tmp_path / "state")
    repo.commit(
        {**state_files(HOST, "a/b", "sha256:" + "a" * 64, 'caFile: "keys/ca.pem"'), **files}
    )
    with pytest.raises(InvalidState) as caught:
        load(repo, tmp_path)
    (problem,) = caught.value.problems
    assert message in problem.message and "caFile" in problem.field
    assert problem.file == "reconciler.cue"


def test_apply_to_a_tls_registry_trusted_only_through_the_state_repositorys_ca_file(
    registry_factory: RegistryFactory,
    tmp_path: Path,
    cue_bin: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    server: RegistryServer = registry_factory.tls_only()
    try:
        owner = HttpRegistry(server.host, HostConfig(ca_file=server.ca_file))
        repo, image = f"ca/{uuid.uuid4().hex[:8]}", build_image("ca-from-tree")
        push(owner, repo, image)
        state = StateRepo(tmp_path / "state")
        state.commit(state_files(server.host, repo, image.digest, ""))
        assert main(["apply", "--repo", str(state.path)]) == 1  # not trusted: refused
        assert "TLS verification failed" in capsys.readouterr().out
        assert owner.resolve(repo, "dev-app") is None
        files = state_files(server.host, repo, image.digest, 'caFile: "keys/registry-ca.pem"')
        files["keys/registry-ca.pem"] = Path(str(server.ca_file)).read_text()
        state.commit(files)
        assert main(["apply", "--repo", str(state.path)]) == 0, capsys.readouterr()
        assert owner.resolve(repo, "dev-app") == image.digest
    finally:
        server.stop()
