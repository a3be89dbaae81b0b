"""The distribution client against a real docker-registry, cross-checked with skopeo."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import requests

from reconciler.errors import Stalled
from reconciler.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    DigestMismatch,
    HostConfig,
    HttpRegistry,
    NotFound,
    RegistryRefused,
    RegistrySettings,
    TLSFailure,
    Unsupported,
    open_registry,
    referrers_tag,
)
from tests.support.registry_servers import (
    RegistryFactory,
    RegistryServer,
    build_image,
    build_index,
    build_referrer,
    push,
    referrers_index,
    sha256,
    skopeo,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(plain_registry: RegistryServer) -> Iterator[HttpRegistry]:
    registry = HttpRegistry(plain_registry.host, HostConfig(plain_http=True))
    yield registry
    registry.close()


def fresh(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def test_resolve_returns_the_digest_and_none_for_an_absent_tag(client: HttpRegistry) -> None:
    repo = fresh()
    image = build_image("resolve")
    push(client, repo, image, tag="v1")
    assert client.resolve(repo, "v1") == image.digest
    assert client.resolve(repo, "nope") is None
    assert client.resolve(fresh(), "v1") is None


def test_manifest_bytes_are_stored_verbatim_and_match_skopeo(
    client: HttpRegistry, plain_registry: RegistryServer
) -> None:
    repo = fresh()
    image = build_image("verbatim")
    push(client, repo, image, tag="v1")
    raw = skopeo(
        "inspect", "--raw", f"docker://{plain_registry.host}/{repo}:v1", server=plain_registry
    )
    assert raw.stdout.encode() == image.data
    got = client.get_manifest(repo, image.digest)
    assert got.data == image.data
    assert got.media_type == OCI_MANIFEST
    assert got.digest == image.digest
    assert client.get_manifest(repo, "v1").data == image.data


def test_an_index_is_put_as_an_index_with_its_children(
    client: HttpRegistry, plain_registry: RegistryServer
) -> None:
    repo = fresh()
    index = build_index("multi")
    push(client, repo, index, tag="multi")
    got = client.get_manifest(repo, "multi")
    assert got.media_type == OCI_INDEX
    assert [c.digest for c in got.children()] == [c.digest for c in index.children]
    raw = skopeo(
        "inspect", "--raw", f"docker://{plain_registry.host}/{repo}:multi", server=plain_registry
    )
    assert raw.stdout.encode() == index.data
    for child in index.children:
        assert client.get_manifest(repo, child.digest).data == child.data


def test_a_document_without_media_type_is_sent_with_the_detected_type(
    client: HttpRegistry,
) -> None:
    repo = fresh()
    child = build_image("no-media-type")
    push(client, repo, child)
    data = json.dumps({"schemaVersion": 2, "manifests": [child.descriptor()]}).encode()
    client.put_manifest(repo, "bare", data)
    got = client.get_manifest(repo, "bare")
    assert got.data == data
    assert got.media_type == OCI_INDEX


def test_list_tags_matches_skopeo_and_an_absent_repository_has_none(
    client: HttpRegistry, plain_registry: RegistryServer
) -> None:
    repo = fresh()
    image = build_image("tags")
    for tag in ("a", "b", "c"):
        push(client, repo, image, tag=tag)
    listed = skopeo("list-tags", f"docker://{plain_registry.host}/{repo}", server=plain_registry)
    assert (
        sorted(client.list_tags(repo))
        == sorted(json.loads(listed.stdout)["Tags"])
        == [
            "a",
            "b",
            "c",
        ]
    )
    assert client.list_tags(fresh()) == []


def test_list_tags_tolerates_tags_null(
    client: HttpRegistry, plain_registry: RegistryServer
) -> None:
    repo = fresh()
    image = build_image("null-tags")
    push(client, repo, image, tag="only")
    # Deleting the manifest by digest (test set-up only) leaves `"tags": null`.
    requests.delete(
        f"{plain_registry.url}/v2/{repo}/manifests/{image.digest}", timeout=5
    ).raise_for_status()
    body = requests.get(f"{plain_registry.url}/v2/{repo}/tags/list", timeout=5)
    assert body.status_code == 404 or body.json().get("tags") is None
    assert client.list_tags(repo) == []


def test_blob_exists_and_cross_repository_mount_counts_only_201(client: HttpRegistry) -> None:
    source, target = fresh(), fresh()
    image = build_image("mount")
    push(client, source, image)
    layer = next(d for d in build_image_layers(image))
    assert client.blob_exists(source, layer)
    assert not client.blob_exists(target, layer)
    assert client.mount_blob(target, layer, source) is True
    assert client.blob_exists(target, layer)
    missing = sha256(b"not stored anywhere")
    assert client.mount_blob(target, missing, source) is False
    assert not client.blob_exists(target, missing)


def build_image_layers(image: object) -> list[str]:
    return list(image.blobs)  # type: ignore[attr-defined]


def test_put_blob_refuses_content_that_does_not_hash(client: HttpRegistry) -> None:
    repo = fresh()
    claimed = sha256(b"the real bytes")
    with pytest.raises(DigestMismatch):
        client.put_blob(repo, claimed, len(b"other bytes!!!"), [b"other bytes!!!"])
    assert not client.blob_exists(repo, claimed)


def test_open_blob_streams_the_exact_bytes(client: HttpRegistry) -> None:
    repo = fresh()
    image = build_image("stream", size=300_000)
    push(client, repo, image)
    for digest, data in image.blobs.items():
        with client.open_blob(repo, digest) as chunks:
            assert b"".join(chunks) == data


def test_referrers_fall_back_to_the_tag_schema(client: HttpRegistry) -> None:
    repo = fresh()
    image = build_image("subject")
    referrer = build_referrer(image)
    push(client, repo, image, tag="v1")
    push(client, repo, referrer)
    assert client.referrers(repo, image.digest) == []
    push(client, repo, referrers_index(referrer), tag=referrers_tag(image.digest))
    found = client.referrers(repo, image.digest)
    assert [d.digest for d in found] == [referrer.digest]
    assert found[0].artifact_type == "application/vnd.example.sbom"
    assert client.has_referrers_api is False


def test_delete_tag_on_distribution_removes_that_tag_only_through_a_throwaway(
    client: HttpRegistry, plain_registry: RegistryServer
) -> None:
    """Distribution 2.8 has no tag delete; deleting the manifest would take `keep` too."""
    repo = fresh()
    image = build_image("delete")
    push(client, repo, image, tag="keep")
    push(client, repo, image, tag="drop")
    client.delete_tag(repo, "drop", expected=image.digest)
    assert client.resolve(repo, "drop") is None
    assert client.resolve(repo, "keep") == image.digest
    assert client.manifest_exists(repo, image.digest)
    listed = skopeo("list-tags", f"docker://{plain_registry.host}/{repo}", server=plain_registry)
    assert json.loads(listed.stdout)["Tags"] == ["keep"]
    deletes = [k for k in client.stats.snapshot() if k[1] == "DELETE"]
    assert deletes  # the tag-delete attempt, then the throwaway's digest, never the image's
    # Known now: the next deletion goes straight to the throwaway.
    push(client, repo, image, tag="drop2")
    before = client.stats.total(method="DELETE")
    client.delete_tag(repo, "drop2")
    assert client.stats.total(method="DELETE") == before + 1
    assert client.resolve(repo, "keep") == image.digest


def test_delete_tag_leaves_a_tag_that_moved_since_it_was_observed(client: HttpRegistry) -> None:
    repo = fresh()
    first, second = build_image("moved-1"), build_image("moved-2")
    push(client, repo, first, tag="t")
    push(client, repo, second, tag="t")
    client.delete_tag(repo, "t", expected=first.digest)
    assert client.resolve(repo, "t") == second.digest
    assert client.stats.total(method="DELETE") == 0


def test_a_registry_that_deletes_nothing_keeps_the_tag_where_it_was(
    registry_factory: RegistryFactory,
) -> None:
    server = registry_factory.plain(deletes=False)
    try:
        client = HttpRegistry(server.host, HostConfig(plain_http=True))
        repo = fresh()
        image = build_image("no-deletes")
        push(client, repo, image, tag="keep")
        push(client, repo, image, tag="drop")
        with pytest.raises(Unsupported, match="deletes nothing") as caught:
            client.delete_tag(repo, "drop")
        assert isinstance(caught.value, Stalled)
        assert "storage.delete.enabled" in caught.value.hint
        assert client.resolve(repo, "drop") == image.digest
        assert client.resolve(repo, "keep") == image.digest
        assert sorted(client.list_tags(repo)) == ["drop", "keep"]
    finally:
        server.stop()


def test_delete_of_an_absent_tag_is_a_no_op(client: HttpRegistry) -> None:
    client.delete_tag(fresh(), "never-existed")
    assert client.stats.writes() == 0


def test_bad_input_is_refused_with_a_clear_error_and_no_change(client: HttpRegistry) -> None:
    repo = fresh()
    image = build_image("bad")
    with pytest.raises(DigestMismatch):
        client.put_manifest(repo, sha256(b"something else"), image.data, OCI_MANIFEST)
    assert client.stats.writes() == 0
    # A manifest naming blobs the registry does not have: the registry refuses it.
    with pytest.raises(RegistryRefused) as caught:
        client.put_manifest(repo, "v1", image.data, OCI_MANIFEST)
    assert "MANIFEST_BLOB_UNKNOWN" in str(caught.value)
    assert client.resolve(repo, "v1") is None
    with pytest.raises(NotFound):
        client.get_manifest(repo, image.digest)


def test_loopback_is_not_plain_http_unless_settings_say_so(
    plain_registry: RegistryServer,
) -> None:
    registry = open_registry(plain_registry.host, RegistrySettings())
    with pytest.raises(TLSFailure) as caught:
        registry.resolve("any/repo", "v1")
    assert caught.value.hint
    plain = open_registry(
        f"{plain_registry.host}/any/repo:v1",
        RegistrySettings(hosts={plain_registry.host: HostConfig(plain_http=True)}),
    )
    assert plain.resolve("any/repo", "v1") is None
