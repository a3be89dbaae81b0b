"""Every example in examples/ validates as shipped and works against real registries.

The examples name registries like ``registry.dev.example:5000``; the tests put the
example in a git repository with those hosts replaced by local registries, push the
artifacts the catalogs name (built deterministically, so the digests match), sign them,
and run the reconciler.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from reconciler.cli.main import main
from tests.support.registry_servers import Built, RegistryServer, build_image, build_index, push
from tests.support.signing import attach_bundle, sign_legacy
from tests.support.sigstore_instance import SigstoreInstance, in_toto_statement
from tests.support.staterepo import ROOT, StateRepo
from tests.support.world import plain

EXAMPLES = ROOT / "examples"
STATE_EXAMPLES = sorted(p.name for p in EXAMPLES.iterdir() if (p / "environments").is_dir())


def artifact(example: str, item: str, release: str) -> Built:
    name = f"{example} {item} {release}"
    return build_index(name) if item == "ui" else build_image(name)


def state_from(
    example: str, tmp_path: Path, hosts: dict[str, str], extra: dict[str, str] | None = None
) -> StateRepo:
    files: dict[str, str | bytes | None] = {}
    for path in (EXAMPLES / example).rglob("*"):
        if path.is_file() and path.name != "README.md":
            text = path.read_text()
            for placeholder, host in hosts.items():
                text = text.replace(placeholder, host)
            files[str(path.relative_to(EXAMPLES / example))] = text
    repo = StateRepo(tmp_path / example)
    repo.commit({**files, **(extra or {})}, f"the {example} example")
    return repo


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(autouse=True)
def _example_record_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples list keys/records.pub: sign their records with its private half."""
    monkeypatch.setenv(
        "RECONCILER_RECORD_KEY", str(ROOT / "tests/fixtures/example-keys/records.key")
    )


@pytest.mark.parametrize("example", STATE_EXAMPLES)
def test_example_validates_as_shipped(
    example: str, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = state_from(example, tmp_path, {})
    code, doc = run(capsys, "validate", "--repo", str(repo.path))
    assert code == 0, doc
    assert doc["valid"] is True and doc["environments"]


def test_cross_registry_example_copies_into_the_prod_registry(
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dev, prod = plain(plain_registry.host), plain(second_registry.host)
    key = load_pem_private_key(
        (ROOT / "tests/fixtures/example-keys/cross-registry.key").read_bytes(), None
    )
    repo_name = f"x{tmp_path.name[-8:]}/shop".lower().replace("_", "")
    digests = {}
    for release in ("v1", "v2"):
        for item in ("api", "ui"):
            digests[(item, release)] = push(dev, repo_name, artifact("cross", item, release))
            sign_legacy(dev, repo_name, digests[(item, release)], key)  # type: ignore[arg-type]
    hosts = {
        "registry.dev.example:5000/acme/shop": f"{plain_registry.host}/{repo_name}",
        "registry.prod.example:5000/acme/shop": f"{second_registry.host}/{repo_name}",
        "registry.dev.example:5000": plain_registry.host,
        "registry.prod.example:5000": second_registry.host,
    }
    repo = state_from("cross-registry", tmp_path, hosts)
    code, result = run(capsys, "apply", "--repo", str(repo.path))
    assert code == 0, result
    assert prod.resolve(repo_name, "api-v1") == digests[("api", "v1")]
    assert prod.resolve(repo_name, "ui-v1") == digests[("ui", "v1")]
    assert dev.resolve(repo_name, "dev-api") == digests[("api", "v1")]
    assert prod.resolve(repo_name, "dev-api") is None
    sig = "sha256-" + digests[("ui", "v1")].removeprefix("sha256:") + ".sig"
    assert prod.resolve(repo_name, sig) == dev.resolve(repo_name, sig)  # the signature came along
    assert all(
        "signed: key" in how for e in result["environments"] for how in e["verified"].values()
    )


def test_keyless_example_accepts_the_release_workflow_only(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = plain(plain_registry.host)
    instance = SigstoreInstance.create("acme-sigstore")
    repo_name = f"k{tmp_path.name[-8:]}/shop".lower().replace("_", "")
    workflow = "https://github.com/acme/shop/.github/workflows/release.yml@refs/tags/v1"
    issuer = "https://token.actions.githubusercontent.com"
    for item in ("api", "ui"):
        digest = push(registry, repo_name, artifact("keyless", item, "v1"))
        bundle = instance.sign_dsse(in_toto_statement(digest), identity=workflow, issuer=issuer)
        attach_bundle(registry, repo_name, digest, bundle)
        v2 = push(registry, repo_name, artifact("keyless", item, "v2"))
        wrong = workflow.replace("release.yml", "debug.yml")  # not the release workflow
        attach_bundle(
            registry,
            repo_name,
            v2,
            instance.sign_dsse(in_toto_statement(v2), identity=wrong, issuer=issuer),
        )
    repo = state_from(
        "keyless",
        tmp_path,
        {
            "registry.example:5000/acme/shop": f"{plain_registry.host}/{repo_name}",
            "registry.example:5000": plain_registry.host,
        },
        extra={
            "keys/trusted_root.json": instance.trusted_root_json(),
            # CUE unifies this file with the example's settings: it only adds the root.
            "trust.cue": 'package reconciler\nsettings: verify: trustedRoot: "keys/trusted_root.json"\n',
        },
    )
    code, result = run(capsys, "apply", "--repo", str(repo.path))
    assert code == 0, result
    assert registry.resolve(repo_name, "prod-api") is not None
    repo.commit(
        {
            "environments/prod.cue": (EXAMPLES / "keyless/environments/prod.cue")
            .read_text()
            .replace('"v1"', '"v2"')
        }
    )
    before = registry.resolve(repo_name, "prod-api")
    code, result = run(capsys, "apply", "--repo", str(repo.path))
    assert code == 1
    assert "does not match" in result["environments"][0]["error"]["message"]
    assert registry.resolve(repo_name, "prod-api") == before


def test_hazards_example_sandbox_accepts_prod_refuses(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = plain(plain_registry.host)
    repo_name = f"h{tmp_path.name[-8:]}/shop".lower().replace("_", "")
    for release in ("v1", "v2"):
        for item in ("api", "ui"):
            push(registry, repo_name, artifact("hazards", item, release))
    hosts = {
        "registry.example:5000/acme/shop": f"{plain_registry.host}/{repo_name}",
        "registry.example:5000": plain_registry.host,
    }
    repo = state_from("hazards", tmp_path, hosts)
    code, result = run(capsys, "apply", "--repo", str(repo.path))
    assert code == 0, result
    assert registry.resolve(repo_name, "sandbox-api") == artifact("hazards", "api", "v2").digest
    repo.commit(
        {
            "environments/prod.cue": (EXAMPLES / "hazards/environments/prod.cue")
            .read_text()
            .replace('"v1"', '"v2"')
        }
    )
    code, result = run(capsys, "apply", "--repo", str(repo.path))
    prod = next(e for e in result["environments"] if e["name"] == "prod")
    assert code == 1 and prod["error"]["rule"] == "hazards"
    assert "CVE-2026-4242" in prod["error"]["message"]
    assert registry.resolve(repo_name, "prod-api") == artifact("hazards", "api", "v1").digest


def test_kubernetes_example_runs_the_cli_it_ships_with() -> None:
    """Everything a cluster would take on trust: the container's arguments are ones
    `reconciler run` accepts, with leader election on, and RBAC covers the Lease work.
    (tests/integration/test_leader_election.py submits every manifest to a real API
    server with dryRun=All.)"""
    import yaml

    from reconciler.cli.parser import build_parser

    k8s = EXAMPLES / "kubernetes"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    docs = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((k8s / name).read_text())
        if d
    ]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployment = by_kind["StatefulSet"][0]
    assert deployment["spec"]["replicas"] == 2
    # The cache (the local anchor of trusted records) is on a volume per replica.
    (claim,) = deployment["spec"]["volumeClaimTemplates"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # no sidecar
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts[claim["metadata"]["name"]] == env["RECONCILER_CACHE_DIR"]
    assert env["RECONCILER_RECORD_KEY"].startswith(mounts["record-key"])
    assert env["RECONCILER_TRUST_ROOT"].startswith(mounts["trust-root"])
    args = build_parser().parse_args(container["args"])
    assert args.command == "run" and args.leader_elect and args.lease_name == "reconciler"
    assert args.identity == "$(POD_NAME)" and "POD_NAME" in env
    assert args.webhook_secret_file and args.log_format == "json"
    role = next(d for d in by_kind["Role"])
    lease_verbs = {v for r in role["rules"] if "leases" in r["resources"] for v in r["verbs"]}
    assert {"create", "get", "update", "list"} <= lease_verbs
