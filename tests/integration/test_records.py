"""Signed apply records, the local anchor, garbage collection and verification summaries
(issue 12), against a real registry: what someone with registry push can write, and why
none of it counts."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from reconciler.evidence import records
from reconciler.evidence.signing import envelope, load_signing_key, new_signing_key, statement
from reconciler.model import PublicKey, record_tag
from reconciler.registry import EMPTY_JSON, OCI_EMPTY, OCI_MANIFEST, referrers_tag, sha256_digest
from tests.support import recordkeys
from tests.support.registry_servers import RegistryFactory, RegistryServer, require_tool
from tests.support.world import World, build_world, desired_only


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


def by_name(result: dict) -> dict:  # type: ignore[type-arg]
    return {e["name"]: e for e in result["environments"]}


def put_record(world: World, env: str, body: bytes, previous_head: str) -> str:
    """Write a record manifest with ``body`` as its layer under env's head tag, as anyone
    with push to the registry can."""
    registry = world.registry
    registry.put_blob(world.source, sha256_digest(body), len(body), [body])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.reconciler.record.v1+json",
            "config": {
                "mediaType": OCI_EMPTY,
                "digest": sha256_digest(EMPTY_JSON),
                "size": len(EMPTY_JSON),
            },
            "layers": [
                {
                    "mediaType": records.DSSE_MEDIA_TYPE,
                    "digest": sha256_digest(body),
                    "size": len(body),
                }
            ],
        }
    ).encode()
    assert registry.resolve(world.source, record_tag(env)) == previous_head
    return registry.put_manifest(world.source, record_tag(env), manifest, OCI_MANIFEST)


def staging_claims_v12(world: World) -> tuple[bytes, records.Record]:
    """The statement of a record saying staging runs v1.2, chained to staging's head."""
    head = records.read_head(world.registry, world.source, "staging")
    assert head is not None
    v12 = {f"staging-{i}": d for i, d in world.digests["v1.2"].items()}
    claim = replace(head, release="v1.2", tags=v12, previous=head.digest)
    subjects = {f"{claim.repository}:{t}": d for t, d in v12.items()}
    return statement(subjects, records.PREDICATE_TYPE, claim.to_json()), head


def test_a_signed_chain_lets_prod_follow_staging(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: signed records satisfy requires, and each names its signer."""
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2", staging="v1.2", prod="v1.2")
    code, result = world.cli(capsys, "apply")
    assert code == 0 and by_name(result)["prod"]["status"] == "applied", result
    head = records.read_head(world.registry, world.source, "prod")
    assert head is not None
    trusted = records.verify(head, records.Trust((recordkeys_public(),)))
    assert trusted.signer is not None and trusted.signer.startswith("sha256:")
    assert trusted.receipt is not None and trusted.receipt["requires"]


def recordkeys_public() -> PublicKey:
    return PublicKey("keys/records.pub", recordkeys.session_key()[1])


def test_an_edited_record_with_a_stale_signature_satisfies_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone with registry push edits staging's record to claim v1.2, keeping the old
    signature: prod must not follow it."""
    assert world.cli(capsys, "apply")[0] == 0
    payload, head = staging_claims_v12(world)
    stale = envelope(payload, None)
    stale["signatures"] = [
        {"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in head.signatures
    ]
    forged = put_record(world, "staging", json.dumps(stale).encode(), head.digest)
    world.promote(prod="v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "prod")
    prod = by_name(result)["prod"]
    assert code == 1 and prod["status"] == "refused" and prod["error"]["rule"] == "records"
    assert forged in prod["error"]["message"] and "is not a record" in prod["error"]["message"]
    assert world.tags() == before


def test_a_record_signed_by_a_key_not_in_force_satisfies_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.cli(capsys, "apply")[0] == 0
    payload, head = staging_claims_v12(world)
    mallory = new_signing_key()
    forged = put_record(
        world, "staging", json.dumps(envelope(payload, mallory)).encode(), head.digest
    )
    world.promote(prod="v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "prod")
    prod = by_name(result)["prod"]
    assert code == 1 and prod["error"]["rule"] == "records"
    assert forged in prod["error"]["message"] and mallory.keyid in prod["error"]["message"]
    assert world.tags() == before
    code, result = world.cli(capsys, "audit", "--env", "staging")
    marked = [e for e in result["entries"] if e["kind"] == "record"]
    assert code == 0 and marked[0]["status"] == "untrusted" and marked[0]["record"] == forged


def test_a_deleted_head_and_a_force_push_back_in_time_are_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delete prod's head record (by digest), move main back: the local anchor remembers."""
    first = world.repo.repo.head.target
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2", staging="v1.2", prod="v1.2")
    assert world.cli(capsys, "apply")[0] == 0
    head = world.registry.resolve(world.source, record_tag("prod"))
    assert head is not None
    deleted = requests.delete(
        f"http://{world.host}/v2/{world.source}/manifests/{head}", timeout=10
    )  # by digest: every tag on it goes too
    assert deleted.status_code == 202, deleted.text
    assert world.registry.resolve(world.source, record_tag("prod")) is None
    world.repo.repo.references["refs/heads/main"].set_target(first)  # the force-push
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "prod")
    prod = by_name(result)["prod"]
    # The commit went back in time (rule history); at the commit in force, prod's head
    # record is missing (rule records): both are said.
    assert code == 1 and prod["error"]["rule"] == "history"
    assert f"{record_tag('prod')} of prod is missing" in prod["transition"]
    assert head in prod["transition"]
    assert world.tags() == before
    code, result = world.cli(capsys, "audit", "--env", "prod")
    (missing,) = [e for e in result["entries"] if e["status"] == "missing"]
    assert code == 0 and missing["record"] == head


def test_a_forged_head_that_does_not_chain_to_the_anchor_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even signed by the right key (a leaked key, another reconciler), a head that
    rewrites history below the anchor is refused."""
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2")
    assert world.cli(capsys, "apply")[0] == 0
    head = records.read_head(world.registry, world.source, "dev")
    assert head is not None and head.previous is not None
    key = load_signing_key(recordkeys.session_key()[0])
    branch = replace(head, previous=None, note="a history of my own")
    records.write(world.registry, world.source, branch, head.digest, key)
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "dev")
    dev = by_name(result)["dev"]
    assert code == 1 and dev["error"]["rule"] == "records"
    assert f"does not chain back to {head.digest}" in dev["error"]["message"]
    assert world.tags() == before


def test_without_record_keys_requires_and_prune_are_refused_unless_insecure(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = (world.repo.path / "reconciler.cue").read_text()
    world.repo.commit({"reconciler.cue": settings.replace(recordkeys.SETTINGS, "")})
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    envs = by_name(result)
    assert code == 1 and envs["dev"]["status"] == "applied"  # relies on no record
    for name in ("staging", "prod"):
        assert envs[name]["error"]["rule"] == "records"
        assert "uses requires, which trusts apply records" in envs[name]["error"]["message"]
    assert {t: d for t, d in world.tags().items() if t.startswith(("staging", "prod"))} == {
        t: d for t, d in before.items() if t.startswith(("staging", "prod"))
    }
    insecure = settings.replace(recordkeys.SETTINGS, "records: insecureUnsigned: true")
    world.repo.commit({"reconciler.cue": insecure})
    code, result = world.cli(capsys, "apply")
    assert code == 0, result


def test_records_that_must_be_signed_without_a_key_move_nothing(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILER_RECORD_KEY")
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    envs = by_name(result)
    assert code == 1 and all(e["status"] == "refused" for e in envs.values())
    assert envs["dev"]["error"]["rule"] == "records"
    assert "this reconciler has no record key" in envs["dev"]["error"]["message"]
    assert envs["staging"]["error"]["rule"] == "requires"  # dev has no record to show
    assert world.tags() == before


def test_verification_summary_is_signed_names_the_digest_and_cosign_accepts_it(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checked independently: PAE and the signature with `cryptography`, then `cosign
    verify-attestation --key`, which knows nothing of this project."""
    assert world.cli(capsys, "apply", "--env", "dev")[0] == 0
    digest = world.digests["v1.1"]["web"]
    registry = world.registry
    index = registry.get_manifest(world.source, referrers_tag(digest)).document()
    (referrer,) = [m for m in index["manifests"] if m.get("artifactType", "").endswith("v0.3+json")]
    manifest = registry.get_manifest(world.source, referrer["digest"]).document()
    assert manifest["subject"]["digest"] == digest
    with registry.open_blob(world.source, manifest["layers"][0]["digest"]) as chunks:
        bundle = json.loads(b"".join(chunks))
    dsse = bundle["dsseEnvelope"]
    payload = base64.b64decode(dsse["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (
        len(dsse["payloadType"]),
        dsse["payloadType"].encode(),
        len(payload),
        payload,
    )
    public = load_pem_public_key(recordkeys.session_key()[1].encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(dsse["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    vsa = json.loads(payload)
    assert vsa["predicateType"] == "https://slsa.dev/verification_summary/v1"
    assert vsa["subject"][0]["digest"]["sha256"] == digest.removeprefix("sha256:")
    predicate = vsa["predicate"]
    assert predicate["verificationResult"] == "PASSED"
    assert predicate["resourceUri"] == f"{world.host}/{world.source}:dev-web"
    assert predicate["policy"]["uri"].endswith("#environments/dev.cue")

    cosign = require_tool("cosign")
    pub = tmp_path / "records.pub"
    pub.write_text(recordkeys.session_key()[1])
    proc = subprocess.run(
        [
            cosign, "verify-attestation", "--key", str(pub),
            "--type", "https://slsa.dev/verification_summary/v1",
            "--insecure-ignore-tlog=true", "--allow-http-registry=true",
            f"{world.host}/{world.source}@{digest}",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (verified,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert json.loads(base64.b64decode(verified["payload"])) == vsa


# --------------------------------------------------------------------------- garbage collection


def garbage_collect(server: RegistryServer) -> str:
    """The registry operator's routine: stop, `garbage-collect --delete-untagged`, start."""
    server.stop()
    proc = subprocess.run(
        [require_tool("docker-registry"), "garbage-collect", "--delete-untagged",
         str(server.directory / "config.yml")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    server.start()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_records_survive_garbage_collection_and_a_lost_link_is_a_visible_gap(
    registry_factory: RegistryFactory,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = registry_factory.plain()
    world = build_world(server.host, tmp_path)
    assert world.cli(capsys, "apply")[0] == 0
    for release in ("v1.2", "v1.1", "v1.2"):
        world.promote(dev=release, staging=release)
        assert world.cli(capsys, "apply")[0] == 0
    chain = records.read_chain(world.registry, world.source, "staging")
    assert len(chain) == 4

    garbage_collect(server)
    assert [r.digest for r in records.read_chain(world.registry, world.source, "staging")] == [
        r.digest for r in chain
    ]

    # A tag removed by hand (or a registry's lifecycle rule), then the next collection:
    middle = chain[2].digest
    tags = server.data_dir / f"docker/registry/v2/repositories/{world.source}/_manifests/tags"
    shutil.rmtree(tags / records.history_tag(middle))
    garbage_collect(server)
    walked = records.walk(
        world.registry, world.source, records.read_head(world.registry, world.source, "staging")
    )
    assert len(walked.records) == 2 and walked.gap == middle

    code, result = world.cli(capsys, "audit", "--env", "staging")
    gaps = [e for e in result["entries"] if e["status"] == "gap"]
    assert code == 0 and gaps and middle in gaps[0]["subject"]

    # requires walks staging's chain up to the gap: a refusal naming it, not a crash.
    world.repo.commit(
        {"environments/prod.cue": world.env("prod", "v1.0", "\n\tallowHazards: true")}
    )
    before = desired_only(world.tags())
    code, result = world.cli(capsys, "apply", "--env", "prod")
    prod = by_name(result)["prod"]
    assert code == 1 and prod["error"]["rule"] == "requires"
    assert "staging runs v1.2 and never ran" in prod["error"]["message"]
    assert desired_only(world.tags()) == before
