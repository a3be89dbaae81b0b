"""The Sigstore conformance corpus (tests/fixtures/sigstore-conformance, see its NOTICE)
through the reconciler's own verification layer, offline.

Each case's artifact is identified by its sha256, as an OCI manifest is by its digest;
``key.pub`` makes a key policy, otherwise the default identity and issuer make a keyless
one, against the case's trusted root or the public-good root sigstore-python ships.
Every ``_fail`` case must be refused and every other case accepted, except the
exceptions listed below with their reasons; those must still behave as listed, so a
fix upstream shows up here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler.model import Identity, Policy, PublicKey
from reconciler.verify import Refused
from reconciler.verify.signatures import Evidence, require

CORPUS = Path(__file__).resolve().parents[1] / "fixtures/sigstore-conformance/bundle-verify"
DEFAULT_IDENTITY = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
DEFAULT_ISSUER = "https://token.actions.githubusercontent.com"

# Cases that should pass but are refused, and why (sigstore-python 4.5.1).
REFUSED_BUT_VALID = {
    "intoto-with-custom-trust-root": "its log entry is intoto 0.0.2, which sigstore-python "
    "does not verify (only dsse / hashedrekord 0.0.1)",
    "trust-root-tsa-validity-end-inclusive": "sigstore-python treats a timestamp "
    "authority's validity end as exclusive",
}
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "bundle.sigstore.json").exists())


pytestmark = pytest.mark.usefixtures("offline")  # verification never goes online


def policy_for(case: Path) -> Policy:
    if (case / "key.pub").exists():
        return Policy(keys=(PublicKey("key.pub", (case / "key.pub").read_text()),))
    identity = (case / "identity").read_text().strip() if (case / "identity").exists() else None
    issuer = (case / "issuer").read_text().strip() if (case / "issuer").exists() else None
    root = case / "trusted_root.json"
    return Policy(
        identities=(Identity(issuer or DEFAULT_ISSUER, identity or DEFAULT_IDENTITY),),
        trusted_root="trusted_root.json" if root.exists() else None,
        trusted_root_json=root.read_text() if root.exists() else None,
    )


def verify_case(name: str) -> None:
    case = CORPUS / name
    artifact = case / "artifact" if (case / "artifact").exists() else CORPUS / "a.txt"
    digest = "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest()
    evidence = Evidence(
        "bundle", "sha256:" + "0" * 64, bundle=(case / "bundle.sigstore.json").read_bytes()
    )
    policy = policy_for(case)
    if name == "managed-key-no-key_fail":  # the case gives no key: verify as the default identity
        policy = Policy(identities=(Identity(DEFAULT_ISSUER, DEFAULT_IDENTITY),))
    require(policy, digest, [evidence], name, predicate_types=None)


def test_corpus_is_present() -> None:
    assert len(CASES) >= 70, "copy the corpus into tests/fixtures/sigstore-conformance"


@pytest.mark.parametrize("name", CASES)
def test_conformance_case(name: str) -> None:
    should_fail = name.endswith("_fail") or name in REFUSED_BUT_VALID
    if should_fail:
        with pytest.raises(Refused):
            verify_case(name)
    else:
        verify_case(name)
