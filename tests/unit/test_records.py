"""Records, their signatures and the local anchor, on an OCI layout (no server)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.evidence import records
from reconciler.evidence.anchor import Anchor, Anchors
from reconciler.evidence.signing import (
    KeyProblem,
    generate,
    load_signing_key,
    new_signing_key,
)
from reconciler.model import Record, frozen_map, record_tag
from reconciler.registry import EMPTY_JSON, OCI_MANIFEST, LayoutRegistry, sha256_digest
from reconciler.verify import Refused, Rule

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def record(release: str, digest: str, previous: str | None = None) -> Record:
    return Record(
        environment="prod",
        commit="c" * 40,
        tree="t" * 40,
        catalog="shop",
        release=release,
        repository="reg.example/shop",
        tags=frozen_map({"prod-web": digest}),
        owned=frozen_map({"prod-web": digest}),
        verified=frozen_map({}),
        time="2026-11-30T00:00:00Z",
        reconciler="test",
        previous=previous,
    )


@pytest.fixture
def store(tmp_path: Path) -> tuple[LayoutRegistry, str]:
    return LayoutRegistry(None), str(tmp_path / "layout")


def test_a_record_round_trips_as_a_signed_in_toto_statement(
    store: tuple[LayoutRegistry, str],
) -> None:
    registry, repo = store
    key = new_signing_key()
    digest = records.write(registry, repo, record("v1", D1), None, key)
    head = records.read_head(registry, repo, "prod")
    assert head is not None and head.digest == digest and head.release == "v1"
    statement = json.loads(head.statement)
    assert statement["predicateType"] == records.PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": "reg.example/shop:prod-web", "digest": {"sha256": "1" * 64}}
    ]
    trusted = records.verify(head, records.Trust((key.public,)))
    assert trusted.signer == key.keyid
    # Every record keeps a tag of its own, so garbage collection keeps the chain.
    assert registry.resolve(repo, records.history_tag(digest)) == digest


def test_a_record_signed_by_another_key_or_unsigned_is_not_a_record(
    store: tuple[LayoutRegistry, str],
) -> None:
    registry, repo = store
    ours, theirs = new_signing_key(), new_signing_key()
    records.write(registry, repo, record("v1", D1), None, theirs)
    head = records.read_head(registry, repo, "prod")
    assert head is not None
    with pytest.raises(Refused) as exc:
        records.verify(head, records.Trust((ours.public,)))
    assert exc.value.rule is Rule.RECORDS and theirs.keyid in exc.value.message
    unsigned = records.write(registry, repo, record("v2", D2, head.digest), head.digest, None)
    stored = records.read_at(registry, repo, "prod", unsigned)
    with pytest.raises(Refused, match="it is not signed"):
        records.verify(stored, records.Trust((ours.public,)))
    assert records.verify(stored, records.Trust()).signer is None  # insecure mode reads it


def test_establish_follows_the_chain_back_to_the_anchor(
    store: tuple[LayoutRegistry, str],
) -> None:
    registry, repo = store
    key = new_signing_key()
    trust = records.Trust((key.public,))
    first = records.write(registry, repo, record("v1", D1), None, key)
    second = records.write(registry, repo, record("v2", D2, first), first, key)
    head = records.read_head(registry, repo, "prod")
    assert records.establish(registry, repo, "prod", head, first, trust) is not None
    assert records.establish(registry, repo, "prod", head, second, trust) is not None
    with pytest.raises(Refused, match="does not chain back"):
        records.establish(registry, repo, "prod", head, "sha256:" + "9" * 64, trust)
    with pytest.raises(Refused, match="is missing"):
        records.establish(registry, repo, "prod", None, second, trust)
    assert records.establish(registry, repo, "prod", None, None, trust) is None


def test_walk_stops_at_a_missing_link_and_says_where(store: tuple[LayoutRegistry, str]) -> None:
    registry, repo = store
    key = new_signing_key()
    gone = "sha256:" + "7" * 64
    head_digest = records.write(registry, repo, record("v2", D2, gone), None, key)
    head = records.read_at(registry, repo, "prod", head_digest)
    chain = records.walk(registry, repo, head)
    assert [r.digest for r in chain.records] == [head_digest] and chain.gap == gone


def test_a_record_under_another_environments_tag_is_corrupt(
    store: tuple[LayoutRegistry, str],
) -> None:
    registry, repo = store
    records.write(registry, repo, record("v1", D1), None, new_signing_key())
    digest = registry.resolve(repo, record_tag("prod"))
    assert digest is not None
    with pytest.raises(records.RecordCorrupt, match="belongs to 'prod'"):
        records.read_at(registry, repo, "staging", digest)


def test_records_from_before_signing_still_read(store: tuple[LayoutRegistry, str]) -> None:
    """A schema 1 record: a plain JSON layer of the record itself."""
    registry, repo = store
    body = json.dumps(record("v0", D1).to_json()).encode()
    manifest, _ = records.encode(record("v0", D1), None)
    doc = json.loads(manifest)
    doc["layers"] = [
        {
            "mediaType": "application/vnd.reconciler.record.v1+json",
            "digest": sha256_digest(body),
            "size": len(body),
        }
    ]
    registry.put_blob(repo, sha256_digest(EMPTY_JSON), 2, [EMPTY_JSON])
    registry.put_blob(repo, sha256_digest(body), len(body), [body])
    data = json.dumps(doc).encode()
    registry.put_manifest(repo, record_tag("prod"), data, OCI_MANIFEST)
    old = records.read_head(registry, repo, "prod")
    assert old is not None and old.release == "v0" and old.signatures == ()


def test_anchors_are_per_repository_and_environment(tmp_path: Path) -> None:
    anchors = Anchors(tmp_path)
    assert anchors.get("reg/shop", "prod") is None
    anchors.set("reg/shop", "prod", Anchor(D1, "c" * 40))
    assert anchors.get("reg/shop", "prod") == Anchor(D1, "c" * 40)
    assert anchors.get("reg/shop", "dev") is None and anchors.get("reg/other", "prod") is None
    path = anchors.path("reg/shop", "prod")
    assert path is not None
    path.write_text("{not json")
    with pytest.raises(OSError, match="unreadable"):  # never silently "no anchor"
        anchors.get("reg/shop", "prod")
    assert Anchors(None).get("reg/shop", "prod") is None


def test_keygen_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = generate(tmp_path / "records.key")
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_signing_key(private)
    assert key.public.pem == public.read_text()
    with pytest.raises(KeyProblem, match="exists"):
        generate(tmp_path / "records.key")
    monkeypatch.setenv("RECONCILER_RECORD_KEY_PASSWORD", "s3cret")
    locked, _ = generate(tmp_path / "locked.key", "ed25519")
    assert load_signing_key(locked, b"s3cret").keyid.startswith("sha256:")
    with pytest.raises(KeyProblem, match="is encrypted") as exc:
        load_signing_key(locked)
    assert "s3cret" not in str(exc.value)
    with pytest.raises(KeyProblem, match="not a usable PEM"):
        load_signing_key(locked, b"wrong")


def test_a_signed_record_keeps_its_signature_when_read_back(
    store: tuple[LayoutRegistry, str],
) -> None:
    registry, repo = store
    key = new_signing_key("ed25519")
    records.write(registry, repo, record("v1", D1), None, key)
    head = records.read_head(registry, repo, "prod")
    assert head is not None
    edited = replace(head, statement=head.statement.replace(b'"v1"', b'"v9"'))
    with pytest.raises(Refused):
        records.verify(edited, records.Trust((key.public,)))
