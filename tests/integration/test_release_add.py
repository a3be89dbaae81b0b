"""`reconciler release add`: tags resolved in a real registry, verified against the
catalog's signers, written into the catalog file byte for byte, on a branch of a real
remote, then merged, promoted and applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main
from tests.support.publish import CATALOG, CATALOG_FILE, Origin, push_build, with_signers
from tests.support.registry_servers import RegistryServer
from tests.support.world import World, build_world, desired_only

BRANCH = "release/example.org-acme-shop/v1.3"


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    return build_world(plain_registry.host, tmp_path)


def test_signed_tags_become_a_release_then_a_promotion_without_typing_a_digest(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = with_signers(world)
    origin = Origin(world, tmp_path / "origin.git")
    assert origin.run(capsys, "apply")[0] == 0
    digests = push_build(world, "v1.3", key)
    before = origin.file(CATALOG_FILE)
    tags = world.tags()

    code, proposal = origin.run(
        capsys, "release", "add", CATALOG, "v1.3", "web=v1.3-web", "worker=v1.3-worker",
        "--metadata", "semver=1.3.0", "--push",
    )  # fmt: skip
    assert code == 0, proposal
    assert proposal["branch"] == BRANCH and proposal["pushed"] is True
    assert {i: v["digest"] for i, v in proposal["items"].items()} == digests
    assert all("catalog signer: key sha256:" in proposal["verified"][d] for d in digests.values())
    assert BRANCH in origin.branches() and origin.head() != origin.head(BRANCH)
    assert origin.changed(BRANCH) == [CATALOG_FILE]
    line = (
        f'\t\t{{name: "v1.3", items: {{web: "{digests["web"]}", worker: "{digests["worker"]}"}}, '
        'metadata: {semver: "1.3.0"}},\n'
    )
    assert origin.file(CATALOG_FILE, BRANCH) == before.replace(
        "\treleases: [\n", "\treleases: [\n" + line, 1
    )
    message = origin.repo.revparse_single(BRANCH).message
    assert "Release-Catalog: example.org/acme/shop\nRelease-Name: v1.3" in message
    assert f"{world.host}/{world.source}:v1.3-web -> {digests['web']}" in message
    assert world.tags() == tags  # only read

    origin.merge(BRANCH)
    code, proposal = origin.run(capsys, "promote", "dev", "v1.3", "--push")
    assert code == 0, proposal
    origin.merge(proposal["branch"])
    code, applied = origin.run(capsys, "apply", "--env", "dev")
    assert code == 0, applied
    assert applied["environments"][0]["transition"] == "dev promoted from v1.1 to v1.3"
    assert desired_only(world.tags())["dev-web"] == digests["web"]
    assert desired_only(world.tags())["dev-worker"] == digests["worker"]


@pytest.mark.parametrize(
    ("signed", "items", "fragment"),
    [
        (False, ("web=v1.3-web", "worker=v1.3-worker"), "no signature found for"),
        (True, ("web=v1.3-web", "worker=v9-worker"), "no tag 'v9-worker'"),
        (True, ("web=v1.1-web", "worker=v1.3-worker"), "no tag 'v1.1-web'"),
    ],
    ids=["unsigned", "missing-tag", "not-a-build-tag"],
)
def test_refused_release_commits_nothing_and_writes_nothing(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    signed: bool,
    items: tuple[str, ...],
    fragment: str,
) -> None:
    key = with_signers(world)
    origin = Origin(world, tmp_path / "origin.git")
    push_build(world, "v1.3", key if signed else None)
    refs = {r: origin.repo.references[r].target for r in origin.repo.references}
    tags = world.tags()
    code = main(["release", "add", CATALOG, "v1.3", *items, "--push", "--repo", origin.url])
    err = capsys.readouterr().err
    assert code == 1
    assert fragment in err and "was not added" in err and "Traceback" not in err
    assert {r: origin.repo.references[r].target for r in origin.repo.references} == refs
    assert world.tags() == tags


def test_a_catalog_without_signers_takes_no_release(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = Origin(world, tmp_path / "origin.git")
    push_build(world, "v1.3", None)
    code = main(["release", "add", CATALOG, "v1.3", "web=v1.3-web", "--push", "--repo", origin.url])
    err = capsys.readouterr().err
    assert code == 1 and "names no signers" in err and "insecureSkipSignatures" in err
    assert origin.branches() == {"main"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("v1.2", "web=v1.2-web"), "already has a release 'v1.2'"),
        (("v1.3",), "the following arguments are required"),
        (("v1.3", "web"), "expected ITEM=REF"),
    ],
    ids=["existing", "no-items", "not-a-pair"],
)
def test_release_add_usage_and_existing_names(
    world: World, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragment: str
) -> None:
    with_signers(world)
    try:
        code = main(["release", "add", CATALOG, *args, "--repo", str(world.repo.path)])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    assert code in (1, 2)
    assert fragment in capsys.readouterr().err


def test_json_catalog_and_a_local_checkout_keep_every_byte(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    world = build_world(plain_registry.host, tmp_path)
    key = with_signers(world)
    releases = [{"name": r, "items": world.digests[r]} for r in ("v1.2", "v1.1", "v1.0")]
    releases[2]["hazards"] = {"CVE-2026-1": "broken"}
    doc = {
        "name": CATALOG,
        "source": f"{world.host}/{world.source}",
        "signers": {"keys": ["keys/cosign.pub"]},
        "releases": releases,
    }
    text = json.dumps(doc, indent=2).replace('"name": "v1.0"', '"name":    "v1.0"') + "\n"
    world.repo.commit({CATALOG_FILE: None, "catalogs/shop.json": text}, "the catalog as JSON")
    digests = push_build(world, "v1.3", key, tag="build-{version}-{item}")
    main_before = str(world.repo.repo.head.target)

    code = main(
        ["release", "add", CATALOG, "v1.3", "worker=build-v1.3-worker",
         f"web={world.host}/{world.source}:build-v1.3-web", "--repo", str(world.repo.path),
         "--hazard", "CVE-2026-9=known; fixed in v1.4", "--json"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    proposal = json.loads(out)
    assert proposal["pushed"] is False and proposal["file"] == "catalogs/shop.json"
    branch = world.repo.repo.references[f"refs/heads/{proposal['branch']}"]
    edited = world.repo.repo[branch.target].tree["catalogs/shop.json"].data.decode()
    entry = (
        '    {\n      "name": "v1.3",\n      "items": {\n'
        f'        "worker": "{digests["worker"]}",\n        "web": "{digests["web"]}"\n'
        '      },\n      "hazards": {\n        "CVE-2026-9": "known; fixed in v1.4"\n'
        "      }\n    },\n"
    )
    assert edited == text.replace('"releases": [\n', '"releases": [\n' + entry, 1)
    # the work tree and main are untouched: a branch for a merge request only
    assert str(world.repo.repo.head.target) == main_before
    assert (world.repo.path / "catalogs/shop.json").read_text() == text


FORGED = "Promote-Environment: prod"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (('v1.7"}\nPromote-Environment: prod', "web=v1.3-web"), "release name"),
        (("v1.7", 'web"}\n{evil=v1.3-web'), "item name"),
        (("v1.7", "web=v1.3-web", "-m", f"Add v1.7\n\n{FORGED}"), "commit subject"),
    ],
    ids=["release-name", "item-name", "subject"],
)
def test_names_that_would_add_lines_to_the_commit_are_refused_before_any_commit(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    fragment: str,
) -> None:
    key = with_signers(world)
    origin = Origin(world, tmp_path / "origin.git")
    push_build(world, "v1.3", key)
    # Control: the same build under a plain name is committed, with its own trailers only.
    code, proposal = origin.run(
        capsys, "release", "add", CATALOG, "v1.6", "web=v1.3-web", "worker=v1.3-worker", "--push"
    )
    assert code == 0, proposal
    assert "Release-Name: v1.6\n" in proposal["message"] and FORGED not in proposal["message"]
    refs = {r: origin.repo.references[r].target for r in origin.repo.references}
    tags = world.tags()

    code = main(["release", "add", CATALOG, *args, "--push", "--repo", origin.url])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert fragment in err and ("not a valid name" in err or "line break" in err), err
    assert {r: origin.repo.references[r].target for r in origin.repo.references} == refs
    assert world.tags() == tags


def test_promote_refuses_a_subject_or_release_that_would_forge_a_trailer(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = Origin(world, tmp_path / "origin.git")
    code, proposal = origin.run(capsys, "promote", "dev", "v1.2", "-m", "Promote dev", "--push")
    assert code == 0, proposal  # control
    assert proposal["message"].startswith("Promote dev\n")
    refs = {r: origin.repo.references[r].target for r in origin.repo.references}
    for args in (("v1.2", "-m", f"Promote dev\n\n{FORGED}"), (f"v1.2\n{FORGED}",)):
        code = main(["promote", "dev", *args, "--branch", "b", "--push", "--repo", origin.url])
        err = capsys.readouterr().err
        assert code == 1 and "line break" in err and "Traceback" not in err, err
    assert {r: origin.repo.references[r].target for r in origin.repo.references} == refs
