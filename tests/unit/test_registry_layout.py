"""The OCI layout store: skopeo's on-disk format, atomic index writes, verified reads."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.registry import (
    DigestMismatch,
    InvalidReference,
    LayoutRegistry,
    NotFound,
    RegistryRefused,
    copy_artifact,
    open_registry,
    sha256_digest,
)
from tests.support.registry_servers import build_image, build_index, push

TESTREPO = Path(__file__).parents[1] / "fixtures" / "regclient-testrepo"
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture
def testrepo(tmp_path: Path) -> str:
    target = tmp_path / "testrepo"
    shutil.copytree(TESTREPO, target)
    return str(target)


def test_put_resolve_get_list_delete_round_trip(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "app")
    image = build_image("layout")
    push(store, repo, image, tag="v1")
    push(store, repo, image, tag="v2")
    assert store.resolve(repo, "v1") == image.digest
    assert store.get_manifest(repo, "v1").data == image.data
    assert store.list_tags(repo) == ["v1", "v2"]
    store.delete_tag(repo, "v1")
    assert store.resolve(repo, "v1") is None
    assert store.resolve(repo, "v2") == image.digest  # the other tag and the blob stay
    index = json.loads((tmp_path / "app" / "index.json").read_text())
    assert [m["annotations"][REF_NAME] for m in index["manifests"]] == ["v2"]
    assert json.loads((tmp_path / "app" / "oci-layout").read_text()) == {
        "imageLayoutVersion": "1.0.0"
    }
    assert not [p for p in (tmp_path / "app").rglob(".*")]  # no temp files left


def test_retag_replaces_the_entry(tmp_path: Path) -> None:
    store = LayoutRegistry(tmp_path)
    one, two = build_image("one"), build_image("two")
    push(store, "team/app", one, tag="v1")
    push(store, "team/app", two, tag="v1")
    assert store.resolve("team/app", "v1") == two.digest
    assert store.list_tags("team/app") == ["v1"]
    assert (tmp_path / "team" / "app" / "index.json").exists()


def test_concurrent_tag_writes_are_all_kept(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "app")
    image = build_image("many")
    push(store, repo, image)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put_manifest(repo, f"t{i}", image.data), range(64)))
    assert sorted(store.list_tags(repo)) == sorted(f"t{i}" for i in range(64))


def test_a_manifest_naming_missing_blobs_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "app")
    image = build_image("incomplete")
    with pytest.raises(RegistryRefused, match="missing blob"):
        store.put_manifest(repo, "v1", image.data)
    assert store.list_tags(repo) == []
    index = build_index("incomplete-index")
    with pytest.raises(RegistryRefused, match="child manifest"):
        store.put_manifest(repo, "v1", index.data)
    assert store.stats.writes() == 0


def test_tampered_content_is_detected_on_read(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "app")
    image = build_image("tamper")
    push(store, repo, image, tag="v1")
    path = tmp_path / "app" / "blobs" / "sha256" / image.digest.split(":")[1]
    path.chmod(0o644)
    path.write_bytes(image.data.replace(b"tamper", b"tamped"))
    with pytest.raises(DigestMismatch):
        store.get_manifest(repo, "v1")


def test_put_blob_verifies_and_leaves_no_partial_file(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "app")
    claimed = sha256_digest(b"real")
    with pytest.raises(DigestMismatch):
        store.put_blob(repo, claimed, 4, [b"fake"])
    assert not store.blob_exists(repo, claimed)
    assert list((tmp_path / "app" / "blobs" / "sha256").iterdir()) == []


def test_repository_paths_are_checked() -> None:
    with pytest.raises(InvalidReference, match="absolute"):
        LayoutRegistry().resolve("relative/dir", "v1")
    with pytest.raises(InvalidReference, match="leaves"):
        LayoutRegistry("/tmp").resolve("../etc", "v1")


def test_open_registry_gives_layout_stores() -> None:
    assert isinstance(open_registry("oci:"), LayoutRegistry)
    rooted = open_registry("oci:/srv/layouts")
    assert isinstance(rooted, LayoutRegistry) and rooted.root == Path("/srv/layouts")


def test_missing_things_are_absent_not_errors(tmp_path: Path) -> None:
    store = LayoutRegistry()
    repo = str(tmp_path / "nothing")
    assert store.resolve(repo, "v1") is None
    assert store.list_tags(repo) == []
    assert store.referrers(repo, sha256_digest(b"x")) == []
    with pytest.raises(NotFound):
        store.get_manifest(repo, "v1")


def test_reads_the_regclient_testrepo_and_its_referrers(testrepo: str) -> None:
    store = LayoutRegistry()
    v2 = store.resolve(testrepo, "v2")
    assert v2 == "sha256:dfae8f425735a5e3a72e40d6609e03079995511d48157c74d54801ff4430491e"
    assert store.get_manifest(testrepo, "v2").is_index
    found = store.referrers(testrepo, v2)
    assert found and all(d.media_type for d in found)


def test_copying_every_tag_of_the_testrepo_terminates_and_is_byte_exact(
    testrepo: str, tmp_path: Path
) -> None:
    store = LayoutRegistry()
    target = str(tmp_path / "copy")
    tags = store.list_tags(testrepo)
    for tag in tags:
        digest = store.resolve(testrepo, tag)
        assert digest is not None
        copy_artifact(store, testrepo, digest, store, target, tag=tag)
    assert set(store.list_tags(target)) >= set(tags)
    for tag in tags:
        assert store.get_manifest(target, tag).data == store.get_manifest(testrepo, tag).data
    writes = store.stats.writes()
    again = copy_artifact(store, testrepo, store.resolve(testrepo, "loop") or "", store, target)
    assert again.manifests_put == 0 and store.stats.writes() == writes


def test_copy_between_layouts_hard_links_blobs(testrepo: str, tmp_path: Path) -> None:
    store = LayoutRegistry()
    digest = store.resolve(testrepo, "v1")
    assert digest is not None
    result = copy_artifact(store, testrepo, digest, store, str(tmp_path / "copy"), tag="v1")
    assert result.blobs_mounted > 0 and result.blobs_copied == 0
