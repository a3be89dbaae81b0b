"""End to end with real signatures: key policies, keyless policies, receipts, re-verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import records
from reconciler.model import PublicKey
from reconciler.verify.signatures import key_id
from tests.support.registry_servers import RegistryServer
from tests.support.signing import attach_bundle, new_key, sign_legacy
from tests.support.sigstore_instance import SigstoreInstance, in_toto_statement
from tests.support.world import World, build_world, desired_only, expected_tags

WORKFLOW = "https://github.com/acme/shop/.github/workflows/release.yml@refs/heads/main"
ISSUER = "https://token.actions.githubusercontent.com"


@pytest.fixture
def keyed(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str
) -> tuple[World, object, str]:
    """Every v1.1 digest signed with a cosign key (legacy .sig); v1.2 left unsigned."""
    private, pem = new_key()
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"keys/cosign.pub": pem},
        verify='keys: ["keys/cosign.pub"]',
    )
    for digest in world.digests["v1.1"].values():
        sign_legacy(world.registry, world.source, digest, private)
    return world, private, pem


def test_key_policy_promotes_signed_and_refuses_unsigned(
    keyed: tuple[World, object, str], capsys: pytest.CaptureFixture[str]
) -> None:
    world, _, pem = keyed
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert (
        desired_only(world.tags()).items()
        >= expected_tags(world, dev="v1.1", staging="v1.1", prod="v1.1").items()
    )
    head = records.read_head(world.registry, world.source, "dev")
    assert head is not None
    kid = key_id(PublicKey("keys/cosign.pub", pem))
    assert all(f"signed: key {kid}" in how for how in head.verified.values())
    assert set(head.verified) == set(world.digests["v1.1"].values())

    world.promote(dev="v1.2")  # v1.2 has no signature
    before = world.tags()
    code, plan = world.cli(capsys, "plan")
    dev = plan["environments"][0]
    assert code == 1 and dev["status"] == "refused" and dev["error"]["rule"] == "signatures"
    assert "no signature found for" in dev["error"]["message"]
    code, result = world.cli(capsys, "apply")
    assert code == 1
    statuses = {e["name"]: e["status"] for e in result["environments"]}
    assert statuses == {"dev": "refused", "staging": "in-sync", "prod": "in-sync"}
    assert world.tags() == before  # no tag and no record moved anywhere


def test_signature_by_another_key_is_refused(
    keyed: tuple[World, object, str], capsys: pytest.CaptureFixture[str]
) -> None:
    world, _, _ = keyed
    stranger, _ = new_key()
    for digest in world.digests["v1.2"].values():
        sign_legacy(world.registry, world.source, digest, stranger)
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    assert code == 1
    error = result["environments"][0]["error"]
    assert "no policy key verifies this signature" in error["message"]
    assert world.tags() == before


def test_policy_change_re_verifies_what_is_applied(
    keyed: tuple[World, object, str], capsys: pytest.CaptureFixture[str]
) -> None:
    world, _, _ = keyed
    assert world.cli(capsys, "apply")[0] == 0
    _, other_pem = new_key()
    world.repo.commit({"keys/cosign.pub": other_pem}, "rotate the key without re-signing")
    code, result = world.cli(capsys, "apply")
    assert code == 1
    assert {e["status"] for e in result["environments"]} == {"refused"}
    assert all(e["error"]["rule"] == "signatures" for e in result["environments"])


def test_keyless_policy_with_private_trusted_root_and_signatures_travel(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = SigstoreInstance.create("acme")
    verify = (
        f'{{identities: [{{issuer: "{ISSUER}", subjectRegExp: "https://github\\\\.com/acme/.+"}}], '
        'trustedRoot: "keys/trusted_root.json"}'
    )
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"keys/trusted_root.json": instance.trusted_root_json()},
        verify=verify,
    )
    for digest in world.digests["v1.1"].values():
        bundle = instance.sign_dsse(in_toto_statement(digest), identity=WORKFLOW, issuer=ISSUER)
        attach_bundle(world.registry, world.source, digest, bundle)
    target = f"{world.source.split('/')[0]}/prod"
    world.repo.commit(
        {
            "environments/prod.cue": world.env(
                "prod", "v1.1", f'\n\ttarget: repository: "{world.host}/{target}"'
            )
        }
    )
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    prod = records.read_head(world.registry, target, "prod")
    assert prod is not None
    assert all(
        f"identity {ISSUER} ~https://github" in how and "tlog" in how
        for how in prod.verified.values()
    )
    # The bundles came along into prod's repository: they verify there too.
    from reconciler.verify.signatures import discover

    for digest in world.digests["v1.1"].values():
        assert discover(world.registry, target, digest), f"no signature for {digest} in {target}"

    # A bundle from someone else's instance does not satisfy the policy.
    stranger = SigstoreInstance.create("stranger")
    for digest in world.digests["v1.2"].values():
        bundle = stranger.sign_dsse(in_toto_statement(digest), identity=WORKFLOW, issuer=ISSUER)
        attach_bundle(world.registry, world.source, digest, bundle)
    world.promote(dev="v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    assert code == 1
    assert result["environments"][0]["error"]["rule"] == "signatures"
    assert world.tags() == before
