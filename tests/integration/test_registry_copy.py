"""Whole-artifact copies across repositories, registries and OCI layouts, byte for byte."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.model import Policy, PublicKey
from reconciler.registry import (
    OCI_MANIFEST,
    Descriptor,
    DigestMismatch,
    DockerCredentials,
    HostConfig,
    HttpRegistry,
    LayoutRegistry,
    copy_artifact,
    referrers_tag,
)
from reconciler.verify.signatures import find_evidence, require
from tests.support.registry_servers import (
    PASSWORD,
    USER,
    Built,
    RegistryServer,
    basic_auth_entry,
    build_image,
    build_index,
    build_referrer,
    build_signature,
    push,
    referrers_index,
    sha256,
    skopeo,
)
from tests.support.signing import SIMPLE_SIGNING, new_key, sign_legacy

pytestmark = pytest.mark.integration

TESTREPO = Path(__file__).parents[1] / "fixtures" / "regclient-testrepo"


def fresh(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def plain(plain_registry: RegistryServer) -> Iterator[HttpRegistry]:
    client = HttpRegistry(plain_registry.host, HostConfig(plain_http=True))
    yield client
    client.close()


def raw(server: RegistryServer, repo: str, ref: str) -> bytes:
    sep = "@" if ref.startswith("sha256:") else ":"
    done = skopeo("inspect", "--raw", f"docker://{server.host}/{repo}{sep}{ref}", server=server)
    return done.stdout.encode()


def signed_release(client: HttpRegistry, repo: str) -> tuple[Built, Built, Built]:
    """An index of two platforms, a cosign .sig tag, and a referrer (tag schema)."""
    index = build_index(f"rel-{uuid.uuid4().hex[:6]}")
    signature = build_signature(index, f"example.com/{repo}")
    referrer = build_referrer(index)
    push(client, repo, index, tag="v1")
    push(client, repo, signature, tag=referrers_tag(index.digest) + ".sig")
    push(client, repo, referrer)
    push(client, repo, referrers_index(referrer), tag=referrers_tag(index.digest))
    return index, signature, referrer


def assert_release_copied(
    server: RegistryServer, repo: str, index: Built, signature: Built, referrer: Built
) -> None:
    assert raw(server, repo, "v1") == index.data
    for child in index.children:
        assert raw(server, repo, child.digest) == child.data
    assert raw(server, repo, referrers_tag(index.digest) + ".sig") == signature.data
    assert raw(server, repo, referrer.digest) == referrer.data
    listed = json.loads(raw(server, repo, referrers_tag(index.digest)))
    assert [m["digest"] for m in listed["manifests"]] == [referrer.digest]


def test_copy_across_repositories_mounts_blobs_and_brings_signatures_and_referrers(
    plain: HttpRegistry, plain_registry: RegistryServer
) -> None:
    source, target = fresh(), fresh()
    index, signature, referrer = signed_release(plain, source)
    result = copy_artifact(plain, source, index.digest, plain, target, tag="v1")
    assert result.blobs_copied == 0 and result.blobs_mounted > 0
    assert result.tags[-1] == "v1"
    assert_release_copied(plain_registry, target, index, signature, referrer)
    # The source's referrers index travels verbatim.
    tag = referrers_tag(index.digest)
    assert plain.resolve(target, tag) == plain.resolve(source, tag)


def test_copy_across_two_registries_streams_blobs(
    plain: HttpRegistry,
    tls_registry: RegistryServer,
    docker_config: Callable[[dict[str, object]], Path],
) -> None:
    docker_config({"auths": {tls_registry.host: basic_auth_entry(USER, PASSWORD)}})
    other = HttpRegistry(tls_registry.host, HostConfig(ca_file=tls_registry.ca_file))
    source, target = fresh(), fresh()
    index, signature, referrer = signed_release(plain, source)
    result = copy_artifact(plain, source, index.digest, other, target, tag="v1")
    assert result.blobs_copied > 0 and result.blobs_mounted == 0
    assert_release_copied(tls_registry, target, index, signature, referrer)
    again = copy_artifact(plain, source, index.digest, other, target, tag="v1")
    assert (again.manifests_put, again.blobs_copied, again.tags) == (0, 0, [])


def test_large_blobs_stream_across_registries_with_a_digest_check(
    plain: HttpRegistry, second_registry: RegistryServer
) -> None:
    other = HttpRegistry(second_registry.host, HostConfig(plain_http=True))
    source, target = fresh(), fresh()
    image = build_image("large", layers=2, size=3_000_000)
    push(plain, source, image, tag="v1")
    result = copy_artifact(plain, source, image.digest, other, target, tag="v1")
    assert result.blobs_copied == 3 and result.bytes_copied > 6_000_000
    for digest in image.blobs:
        with other.open_blob(target, digest) as chunks:
            assert hashlib.sha256(b"".join(chunks)).hexdigest() == digest.split(":")[1]
    assert raw(second_registry, target, "v1") == image.data
    wrong = bytes(3_000_000)
    with pytest.raises(DigestMismatch):
        other.put_blob(fresh(), digest, len(wrong), iter([wrong[:1000], wrong[1000:]]))


def test_copy_into_a_token_registry(
    plain: HttpRegistry,
    token_registry: RegistryServer,
    docker_config: Callable[[dict[str, object]], Path],
) -> None:
    docker_config({"auths": {token_registry.host: basic_auth_entry(USER, PASSWORD)}})
    other = HttpRegistry(token_registry.host, HostConfig(plain_http=True), DockerCredentials())
    source, target = fresh(), fresh()
    index, signature, referrer = signed_release(plain, source)
    copy_artifact(plain, source, index.digest, other, target, tag="v1")
    assert other.resolve(target, "v1") == index.digest
    assert other.get_manifest(target, referrers_tag(index.digest) + ".sig").data == signature.data
    assert [d.digest for d in other.referrers(target, index.digest)] == [referrer.digest]


def test_a_second_copy_writes_nothing(plain: HttpRegistry) -> None:
    source, target = fresh(), fresh()
    index, _, _ = signed_release(plain, source)
    copy_artifact(plain, source, index.digest, plain, target, tag="v1")
    writes = plain.stats.writes()
    again = copy_artifact(plain, source, index.digest, plain, target, tag="v1")
    assert plain.stats.writes() == writes
    assert again.manifests_put == 0 and again.tags == []


def test_regclient_testrepo_layout_to_registry_matches_skopeo_byte_for_byte(
    plain: HttpRegistry, plain_registry: RegistryServer, tmp_path: Path
) -> None:
    layout_dir = tmp_path / "testrepo"
    shutil.copytree(TESTREPO, layout_dir)
    layout = LayoutRegistry()
    repo = fresh("regclient")
    tags = layout.list_tags(str(layout_dir))
    assert "loop" in tags and "v1" in tags
    for tag in tags:
        digest = layout.resolve(str(layout_dir), tag)
        assert digest is not None
        copy_artifact(layout, str(layout_dir), digest, plain, repo, tag=tag)
    copied = set(plain.list_tags(repo))
    # Referrers found only through untagged layout entries get a tag-schema index.
    assert copied >= set(tags)
    assert all(t.startswith("sha256-") for t in copied - set(tags))
    for tag in ("v1", "v3", "loop", "child", "a-docker", "ai"):
        expected = layout.get_manifest(str(layout_dir), tag).data
        assert raw(plain_registry, repo, tag) == expected


def test_skopeo_reads_our_layouts_and_we_read_skopeos(
    plain: HttpRegistry, plain_registry: RegistryServer, tmp_path: Path
) -> None:
    source = fresh()
    index, signature, referrer = signed_release(plain, source)
    # Ours -> skopeo: copy registry -> our layout, then skopeo layout -> registry.
    ours = tmp_path / "ours"
    layout = LayoutRegistry()
    copy_artifact(plain, source, index.digest, layout, str(ours), tag="v1")
    assert (ours / "oci-layout").exists()
    inspected = skopeo("inspect", "--raw", f"oci:{ours}:v1")
    assert inspected.stdout.encode() == index.data
    back = fresh()
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{ours}:v1",
        f"docker://{plain_registry.host}/{back}:v1",
    )
    assert raw(plain_registry, back, "v1") == index.data
    # Skopeo -> ours: skopeo writes a layout, our store reads it byte for byte.
    theirs = tmp_path / "theirs"
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{plain_registry.host}/{source}:v1",
        f"oci:{theirs}:v1",
    )
    assert layout.resolve(str(theirs), "v1") == index.digest
    assert layout.get_manifest(str(theirs), "v1").data == index.data
    for child in index.children:
        assert layout.get_manifest(str(theirs), child.digest).data == child.data
    # Our layout keeps the signature and the referrers index as tags.
    assert layout.resolve(str(ours), referrers_tag(index.digest) + ".sig") == signature.digest
    assert [d.digest for d in layout.referrers(str(ours), index.digest)] == [referrer.digest]


# --------------------------------------------------------------------------- .sig merge


def _policy(pem: str) -> Policy:
    return Policy(keys=(PublicKey("inline", pem),))


def test_copy_merges_the_targets_own_signature_with_the_sources(
    plain: HttpRegistry, second_registry: RegistryServer
) -> None:
    """The target repository signed the same digest with its own key: copying the
    source's signature must keep both, not overwrite the target's."""
    other = HttpRegistry(second_registry.host, HostConfig(plain_http=True))
    source, target = fresh(), fresh()
    image = build_image("merge-sigs")
    push(plain, source, image, tag="v1")
    push(other, target, image, tag="v1")
    source_key, source_pem = new_key()
    target_key, target_pem = new_key()
    sign_legacy(plain, source, image.digest, source_key)
    sign_legacy(other, target, image.digest, target_key)
    sig_tag = referrers_tag(image.digest) + ".sig"
    before = other.resolve(target, sig_tag)

    result = copy_artifact(plain, source, image.digest, other, target)
    assert sig_tag in result.tags
    merged = other.get_manifest(target, sig_tag)
    assert merged.digest not in (before, plain.resolve(source, sig_tag))
    assert len(merged.document()["layers"]) == 2  # the target's first, then the source's
    evidence = find_evidence(other, target, image.digest)
    require(_policy(target_pem), image.digest, evidence, "target key")
    require(_policy(source_pem), image.digest, evidence, "source key")
    # Idempotent: a second copy has nothing to add.
    again = copy_artifact(plain, source, image.digest, other, target)
    assert sig_tag not in again.tags and other.resolve(target, sig_tag) == merged.digest


def test_a_cosign_style_config_follows_the_merged_layers(
    plain: HttpRegistry, second_registry: RegistryServer
) -> None:
    """cosign's signature image config lists each layer's diff id: it stays in step."""
    other = HttpRegistry(second_registry.host, HostConfig(plain_http=True))
    source, target = fresh(), fresh()
    image = build_image("merge-config")
    push(plain, source, image, tag="v1")
    push(other, target, image, tag="v1")
    sig_tag = referrers_tag(image.digest) + ".sig"
    for registry, repo, name in ((plain, source, "src"), (other, target, "dst")):
        payload = json.dumps(
            {"critical": {"image": {"docker-manifest-digest": image.digest}}, "who": name}
        ).encode()
        layer = {
            "mediaType": SIMPLE_SIGNING,
            "digest": sha256(payload),
            "size": len(payload),
            "annotations": {"dev.cosignproject.cosign/signature": f"sig-{name}"},
        }
        config = json.dumps(
            {
                "architecture": "",
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode()
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [layer],
        }
        built = Built(
            json.dumps(doc).encode(),
            OCI_MANIFEST,
            {sha256(config): config, sha256(payload): payload},
        )
        push(registry, repo, built, tag=sig_tag)
    copy_artifact(plain, source, image.digest, other, target)
    merged = other.get_manifest(target, sig_tag).document()
    digests = [layer["digest"] for layer in merged["layers"]]
    config = json.loads(other.read_blob(target, merged["config"]["digest"], 1 << 20))
    assert len(digests) == 2 and config["rootfs"]["diff_ids"] == digests
    assert [
        layer["annotations"]["dev.cosignproject.cosign/signature"] for layer in merged["layers"]
    ] == ["sig-dst", "sig-src"]


class _AddsReferrerAfterListing:
    """The source, with another writer adding a referrer just after the copy listed them
    (as an environment attaching its verification summary does during a pass)."""

    def __init__(self, inner: HttpRegistry, repo: str, subject: Built, early: Built) -> None:
        self.inner, self.repo, self.subject, self.early = inner, repo, subject, early
        self.late: Built | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def referrers(self, repo: str, digest: str) -> list[Descriptor]:
        found = self.inner.referrers(repo, digest)
        if digest == self.subject.digest and self.late is None:
            self.late = build_referrer(self.subject, "application/vnd.example.late")
            push(self.inner, self.repo, self.late)
            index = referrers_index(self.early, self.late)
            push(self.inner, self.repo, index, tag=referrers_tag(digest))
        return found


def test_a_referrer_added_at_the_source_during_the_copy_does_not_break_the_target_index(
    plain: HttpRegistry,
) -> None:
    """The source's tag-schema index, read after its referrers were copied, names one
    that was not: the target gets an index of what was copied, not a dangling one."""
    source, target = fresh(), fresh()
    image = build_image("late-referrer")
    push(plain, source, image, tag="v1")
    early = build_referrer(image)
    push(plain, source, early)
    push(plain, source, referrers_index(early), tag=referrers_tag(image.digest))
    racing = _AddsReferrerAfterListing(plain, source, image, early)
    copy_artifact(racing, source, image.digest, plain, target, tag="v1")  # type: ignore[arg-type]
    index = plain.get_manifest(target, referrers_tag(image.digest))
    assert [d.digest for d in index.children()] == [early.digest]
    assert plain.manifest_exists(target, early.digest)
