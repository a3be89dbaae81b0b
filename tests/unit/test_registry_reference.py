"""Parsing references and OCI values at the boundary."""

from __future__ import annotations

import json

import pytest

from reconciler.errors import Stalled
from reconciler.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    DigestMismatch,
    InvalidManifest,
    InvalidReference,
    Manifest,
    Reference,
    parse_reference,
    referrers_tag,
    sha256_digest,
)
from reconciler.registry.oci import check_digest, media_type_of, verify_digest

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/team/app:v1", Reference("127.0.0.1:5000", "team/app", "v1")),
        ("localhost/app", Reference("localhost", "app")),
        ("ghcr.io/org/app@" + DIGEST, Reference("ghcr.io", "org/app", None, DIGEST)),
        ("r.example:443/a/b:t@" + DIGEST, Reference("r.example:443", "a/b", "t", DIGEST)),
        ("busybox", Reference("docker.io", "library/busybox")),
        ("index.docker.io/org/x:1", Reference("docker.io", "org/x", "1")),
        ("oci:/srv/demo/app:v1", Reference("oci:", "/srv/demo/app", "v1")),
        ("oci:/srv/demo/app", Reference("oci:", "/srv/demo/app")),
        ("oci:/srv/demo/app@" + DIGEST, Reference("oci:", "/srv/demo/app", None, DIGEST)),
    ],
)
def test_references_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:5000/Team/app",
        "https://ghcr.io/org/app",
        "ghcr.io/org/app:bad tag",
        "ghcr.io/org/app@sha256:short",
        "ghcr.io/org//app",
        "oci::v1",
    ],
)
def test_bad_references_are_refused_as_stalled(text: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert isinstance(caught.value, Stalled)


def test_reference_prints_back() -> None:
    assert str(parse_reference("h:1/a/b:v1")) == "h:1/a/b:v1"
    assert str(parse_reference("oci:/x/y:v1")) == "oci:/x/y:v1"


def test_only_sha256_digests_can_be_verified() -> None:
    assert check_digest(DIGEST) == DIGEST
    with pytest.raises(InvalidReference, match="unsupported digest algorithm"):
        check_digest("sha512:" + "ab" * 64)


def test_verify_digest_names_both_digests() -> None:
    with pytest.raises(DigestMismatch, match=DIGEST):
        verify_digest(b"x", DIGEST, "here")
    verify_digest(b"x", sha256_digest(b"x"), "here")


def test_referrers_tag_schema() -> None:
    assert referrers_tag(DIGEST) == "sha256-" + "ab" * 32


def test_media_type_comes_from_the_document_or_its_shape() -> None:
    assert media_type_of(b'{"mediaType":"x/y","layers":[]}') == "x/y"
    assert media_type_of(b'{"schemaVersion":2,"manifests":[]}') == OCI_INDEX
    assert media_type_of(b'{"schemaVersion":2,"config":{},"layers":[]}') == OCI_MANIFEST
    with pytest.raises(InvalidManifest):
        media_type_of(b'{"schemaVersion":2}')
    with pytest.raises(InvalidManifest):
        media_type_of(b"[1]")
    with pytest.raises(InvalidManifest):
        media_type_of(b"\xff")


def test_manifest_keeps_bytes_and_finds_what_it_points_at() -> None:
    child = {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 10, "x-extra": 1}
    data = json.dumps({"mediaType": OCI_INDEX, "manifests": [child]}, indent=4).encode()
    manifest = Manifest(data, OCI_INDEX)
    assert manifest.digest == sha256_digest(data)
    assert manifest.is_index and manifest.blobs() == []
    (descriptor,) = manifest.children()
    assert descriptor.digest == DIGEST
    assert descriptor.to_json() == child  # unknown fields survive
    data_bytes, media_type = manifest  # unpacks as (bytes, media_type)
    assert (data_bytes, media_type) == (data, OCI_INDEX)
