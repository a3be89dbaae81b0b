"""Peers as judges: the real `oras`, `crane` and `cosign` (built by `make peers` from the Go
module proxy) read and write what the reconciler reads and writes.

- oras pushes an artifact (``--artifact-type``) and attaches an SBOM referrer; the
  reconciler promotes it to another registry; ``oras discover`` / ``oras pull`` /
  ``oras manifest fetch`` on the target agree with the source.
- ``crane validate`` and ``crane manifest`` accept every manifest the reconciler wrote
  (copies, tags, apply records).
- ``cosign sign --key`` (no transparency log) signatures satisfy a key policy.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from tests.support import recordkeys
from tests.support.registry_servers import RegistryServer, build_image, push, require_tool
from tests.support.staterepo import StateRepo
from tests.support.world import build_world, desired_only, plain

SBOM_TYPE = "application/spdx+json"
APP_TYPE = "application/vnd.acme.app.v1"
VSA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def oras(*args: str, cwd: Path | None = None) -> str:
    return run(require_tool("oras"), *args, cwd=cwd)


def oras_json(*args: str, cwd: Path | None = None) -> Any:
    return json.loads(oras(*args, "--plain-http", "--format", "json", cwd=cwd))


def crane(*args: str) -> str:
    return run(require_tool("crane"), *args, "--insecure")


def shape(discovered: dict[str, Any]) -> list[tuple[str, str, tuple[Any, ...]]]:
    """What must agree between two registries: digests, types, nested referrers."""
    return sorted(
        (r["digest"], r.get("artifactType", ""), tuple(shape(r)))
        for r in discovered.get("referrers", [])
    )


def state_files(
    source: str, target: str, digest: str, *hosts: str
) -> dict[str, str | bytes | None]:
    registries = "\n".join(f'\tregistries: "{h}": plainHTTP: true' for h in hosts)
    return {
        "reconciler.cue": f"package reconciler\n\nsettings: {{\n{registries}\n"
        f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
        recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
        "catalogs/app.cue": 'package reconciler\n\ncatalogs: "example.org/acme/app": {\n'
        f'\tsource: "{source}"\n\treleases: [{{name: "v1", items: {{app: "{digest}"}}}}]\n}}\n',
        "environments/prod.cue": "package reconciler\n\nenvironments: prod: {\n"
        '\tcatalog: "example.org/acme/app"\n\trelease: "v1"\n'
        f'\ttarget: {{repository: "{target}", tag: "prod-{{item}}"}}\n}}\n',
    }


def test_oras_artifact_and_sbom_promoted_across_registries_agree(
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "files"
    work.mkdir()
    (work / "app.txt").write_text("the app\n")
    (work / "sbom.json").write_text('{"spdxVersion": "SPDX-2.3", "name": "app"}\n')
    source = f"{plain_registry.host}/acme/app"
    pushed = oras_json(
        "push", f"{source}:v1", "--artifact-type", APP_TYPE, "app.txt:text/plain", cwd=work
    )
    digest = pushed["digest"]
    sbom = oras_json(
        "attach", f"{source}@{digest}", "--artifact-type", SBOM_TYPE,
        f"sbom.json:{SBOM_TYPE}", cwd=work,
    )  # fmt: skip
    target = f"{second_registry.host}/prod/app"
    repo = StateRepo(tmp_path / "state")
    repo.commit(state_files(source, target, digest, plain_registry.host, second_registry.host))

    assert main(["apply", "--repo", str(repo.path)]) == 0, capsys.readouterr().out
    capsys.readouterr()

    # The tag on the target is the same artifact, byte for byte, with the same referrer.
    assert oras("resolve", "--plain-http", f"{target}:prod-app").strip() == digest
    assert oras("manifest", "fetch", "--plain-http", f"{target}:prod-app") == oras(
        "manifest", "fetch", "--plain-http", f"{source}@{digest}"
    )
    on_target = oras_json("discover", f"{target}:prod-app")
    on_source = oras_json("discover", f"{source}@{digest}")
    assert on_target["digest"] == digest
    assert shape(on_source) == [(sbom["digest"], SBOM_TYPE, ())]
    # The target has the SBOM too, plus the reconciler's own verification summary.
    assert set(shape(on_source)) < set(shape(on_target))
    extra = set(shape(on_target)) - set(shape(on_source))
    assert {kind for _, kind, _ in extra} == {VSA_TYPE}
    # The pulled files agree, the artifact's and the SBOM's.
    for ref, name in (
        (f"{target}:prod-app", "app.txt"),
        (f"{target}@{sbom['digest']}", "sbom.json"),
    ):
        out = tmp_path / f"pulled-{name}"
        oras("pull", "--plain-http", ref, "-o", str(out))
        assert (out / name).read_bytes() == (work / name).read_bytes()
    manifest = json.loads(oras("manifest", "fetch", "--plain-http", f"{target}:prod-app"))
    assert manifest["artifactType"] == APP_TYPE
    # crane accepts every manifest the reconciler wrote there, the record included.
    tags = crane("ls", target).split()
    assert {"prod-app", "reconciler-record.prod"} <= set(tags)
    for tag in tags:
        assert "PASS" in crane("validate", "--remote", f"{target}:{tag}")
    record = json.loads(crane("manifest", f"{target}:reconciler-record.prod"))
    assert record["schemaVersion"] == 2


def crane_image(ref: str, work: Path, text: str) -> str:
    """A real image made by crane itself (gzip layer, proper config); returns its digest."""
    layer = work / f"{abs(hash(text))}.tar"
    with tarfile.open(layer, "w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return crane("append", "--new_layer", str(layer), "--new_tag", ref).strip().split("@")[1]


def test_crane_accepts_every_manifest_the_reconciler_writes(
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Images and an index made by crane, moved within a registry and copied to another,
    plus the apply records: crane validates each and reads the same bytes."""
    source = f"{plain_registry.host}/acme/shop"
    target = f"{second_registry.host}/prod/shop"
    digests: dict[str, dict[str, str]] = {}
    for release in ("v1", "v2"):
        a = crane_image(f"{source}:{release}-a", tmp_path, f"{release} a")
        b = crane_image(f"{source}:{release}-b", tmp_path, f"{release} b")
        index = crane(
            "index", "append", "--manifest", f"{source}@{a}", "--manifest", f"{source}@{b}",
            "--tag", f"{source}:{release}-web",
        ).strip().split("@")[1]  # fmt: skip
        digests[release] = {"web": index, "worker": a}  # worker is one of web's platforms
    releases = ", ".join(
        f'{{name: "{r}", items: {{web: "{d["web"]}", worker: "{d["worker"]}"}}}}'
        for r, d in digests.items()
    )
    hosts = (plain_registry.host, second_registry.host)
    registries = "\n".join(f'\tregistries: "{h}": plainHTTP: true' for h in hosts)
    repo = StateRepo(tmp_path / "state")

    def envs(dev: str, prod: str) -> dict[str, str | bytes | None]:
        return {
            "environments/dev.cue": f'package reconciler\nenvironments: dev: {{catalog: "shop", '
            f'release: "{dev}"}}\n',
            "environments/prod.cue": f'package reconciler\nenvironments: prod: {{catalog: "shop", '
            f'release: "{prod}", target: repository: "{target}"}}\n',
        }

    repo.commit(
        {
            "reconciler.cue": f"package reconciler\nsettings: {{\n{registries}\n"
            f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n}}\n",
            recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
            "catalogs/shop.cue": f'package reconciler\ncatalogs: shop: {{source: "{source}", '
            f"releases: [{releases}]}}\n",
            **envs("v1", "v1"),
        }
    )
    assert main(["apply", "--repo", str(repo.path)]) == 0, capsys.readouterr().out
    repo.commit(envs("v2", "v2"))
    assert main(["apply", "--repo", str(repo.path)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    checked = set()
    for repository, host, path in (
        (source, plain_registry.host, "acme/shop"),
        (target, second_registry.host, "prod/shop"),
    ):
        for tag in crane("ls", repository).split():
            assert "PASS" in crane("validate", "--remote", f"{repository}:{tag}")
            data = crane("manifest", f"{repository}:{tag}").encode()
            digest = plain(host).resolve(path, tag)
            assert digest and plain(host).get_manifest(path, digest).data == data
            checked.add(f"{path}:{tag}")
    assert {
        "acme/shop:dev-web",
        "acme/shop:reconciler-record.dev",
        "prod/shop:prod-web",
        "prod/shop:prod-worker",
        "prod/shop:reconciler-record.prod",
    } <= checked
    assert plain(second_registry.host).resolve("prod/shop", "prod-web") == digests["v2"]["web"]


@pytest.mark.parametrize("bundle", [False, True], ids=["legacy-sig", "bundle"])
def test_cosign_key_signatures_are_accepted(
    bundle: bool,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`cosign sign --key` (transparency log off) signs v1.1; a key policy accepts it, and
    refuses v1.2, which nobody signed."""
    cosign = require_tool("cosign")
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true", "HOME": str(tmp_path)}
    run(cosign, "generate-key-pair", cwd=tmp_path, env=env)
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"keys/cosign.pub": (tmp_path / "cosign.pub").read_text()},
        verify='keys: ["keys/cosign.pub"]',
    )
    for digest in world.digests["v1.1"].values():
        run(
            cosign, "sign", "--key", str(tmp_path / "cosign.key"),
            f"--new-bundle-format={str(bundle).lower()}", "--use-signing-config=false",
            "--tlog-upload=false",
            "--allow-insecure-registry", "--allow-http-registry",
            f"{plain_registry.host}/{world.source}@{digest}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
    code, result = world.cli(capsys, "apply", "--env", "dev")
    assert code == 0, result
    assert desired_only(world.tags())["dev-web"] == world.digests["v1.1"]["web"]
    world.promote(dev="v1.2")
    code, result = world.cli(capsys, "apply", "--env", "dev")
    assert code == 1 and "signature" in json.dumps(result).lower(), result
    assert desired_only(world.tags())["dev-web"] == world.digests["v1.1"]["web"]


def test_cosign_verify_attestation_accepts_the_reconciler_vsa(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The verification summary on an applied digest verifies with the record key."""
    world = build_world(plain_registry.host, tmp_path)
    assert world.cli(capsys, "apply", "--env", "dev")[0] == 0
    public = tmp_path / "records.pub"
    public.write_text(recordkeys.session_key()[1])
    digest = world.digests["v1.1"]["web"]
    verified = run(
        require_tool("cosign"), "verify-attestation", "--key", str(public),
        "--type", "https://slsa.dev/verification_summary/v1", "--insecure-ignore-tlog=true",
        "--allow-http-registry", "--allow-insecure-registry",
        f"{plain_registry.host}/{world.source}@{digest}",
    )  # fmt: skip
    envelope = json.loads(verified.splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://slsa.dev/verification_summary/v1"
    assert digest.removeprefix("sha256:") in json.dumps(statement["subject"])


@pytest.mark.parametrize("bundle", [False, True], ids=["legacy-sig", "bundle"])
def test_cosign_verify_still_passes_on_the_target_after_a_promotion_with_records_on(
    bundle: bool,
    plain_registry: RegistryServer,
    second_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Signed by `cosign sign --key` (legacy `.sig` or a bundle), applied in the source
    repository (dev) and copied to another registry (prod) with record signing on: the
    verification summaries hide no signature from `cosign verify` (v3 looks only at
    bundles once one exists), and `cosign verify-attestation` finds them."""
    cosign = require_tool("cosign")
    env = {**os.environ, "COSIGN_PASSWORD": "", "COSIGN_YES": "true", "HOME": str(tmp_path)}
    run(cosign, "generate-key-pair", cwd=tmp_path, env=env)
    source = f"{plain_registry.host}/acme/{tmp_path.name[-12:].lower()}"
    target = f"{second_registry.host}/prod/{tmp_path.name[-12:].lower()}"
    digest = push(plain(plain_registry.host), source.split("/", 1)[1], build_image(source))
    run(
        cosign, "sign", "--key", str(tmp_path / "cosign.key"),
        f"--new-bundle-format={str(bundle).lower()}", "--use-signing-config=false",
        "--tlog-upload=false", "--allow-insecure-registry", "--allow-http-registry",
        f"{source}@{digest}",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    hosts = (plain_registry.host, second_registry.host)
    registries = "\n".join(f'\tregistries: "{h}": plainHTTP: true' for h in hosts)
    repo = StateRepo(tmp_path / "state")
    repo.commit(
        {
            "reconciler.cue": f"package reconciler\nsettings: {{\n{registries}\n"
            f'\tverify: keys: ["keys/cosign.pub"]\n\t{recordkeys.SETTINGS}\n}}\n',
            "keys/cosign.pub": (tmp_path / "cosign.pub").read_text(),
            recordkeys.RECORDS_PUB: recordkeys.session_key()[1],
            "catalogs/shop.cue": f'package reconciler\ncatalogs: shop: {{source: "{source}", '
            f'releases: [{{name: "v1", items: {{web: "{digest}"}}}}]}}\n',
            "environments/dev.cue": 'package reconciler\nenvironments: dev: {catalog: "shop", '
            'release: "v1"}\n',
            "environments/prod.cue": 'package reconciler\nenvironments: prod: {catalog: "shop", '
            f'release: "v1", target: repository: "{target}"}}\n',
        }
    )
    assert main(["apply", "--repo", str(repo.path)]) == 0, capsys.readouterr().out
    records_pub = tmp_path / "records.pub"
    records_pub.write_text(recordkeys.session_key()[1])
    insecure = ("--allow-http-registry", "--allow-insecure-registry")
    for where in (source, target):
        run(
            cosign, "verify", "--key", str(tmp_path / "cosign.pub"),
            "--insecure-ignore-tlog=true", *insecure, f"{where}@{digest}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        verified = run(
            cosign, "verify-attestation", "--key", str(records_pub),
            "--type", "https://slsa.dev/verification_summary/v1",
            "--insecure-ignore-tlog=true", *insecure, f"{where}@{digest}",
            cwd=tmp_path, env=env,
        )  # fmt: skip
        statement = json.loads(base64.b64decode(json.loads(verified.splitlines()[0])["payload"]))
        assert statement["predicateType"] == "https://slsa.dev/verification_summary/v1"
        assert digest.removeprefix("sha256:") in json.dumps(statement["subject"])
