"""The trust gate (issue 11): attacks by someone who can push to the state repository
but holds no allowed signing key, each refused with nothing moved; and the positive
paths (signed promotions, signed reverts, merges) that must keep working.

Real parts throughout: git commits signed with the real ssh-keygen, a real registry,
the real cue, the real CLI. Every refusal asserts the rule, that the message names the
commit (or file) at fault, and that no tag and no apply record moved in the registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.registry import LayoutRegistry
from tests.support import recordkeys
from tests.support.attack import (
    ALICE,
    MALLORY,
    SIGNERS,
    SignedWorld,
    assert_refused,
    by_name,
    require_signed_commits,
    settings_cue,
)
from tests.support.registry_servers import RegistryServer, build_image, build_index, push
from tests.support.signing import new_key, sign_legacy
from tests.support.staterepo import StateRepo
from tests.support.world import World, build_world

COMMITS = "commit-signature"
KEY_POLICY = 'keys: ["keys/cosign.pub"]'


@pytest.fixture
def signed(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> SignedWorld:
    """Every environment applied at v1.1, at a commit alice signed that requires signed
    commits; signatures of artifacts are not checked (insecureSkipSignatures)."""
    world = build_world(plain_registry.host, tmp_path)
    signed = require_signed_commits(world, tmp_path / "ssh")
    code, envs = signed.apply(capsys)
    assert code == 0, envs
    return signed


@pytest.fixture
def keyed(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> SignedWorld:
    """As ``signed``, with a cosign key policy (keys/cosign.pub): v1.1 is signed with the
    team's key, v1.2 by nobody."""
    team, pem = new_key()
    world = build_world(
        plain_registry.host, tmp_path, extra_files={"keys/cosign.pub": pem}, verify=KEY_POLICY
    )
    for digest in world.digests["v1.1"].values():
        sign_legacy(world.registry, world.source, digest, team)
    signed = require_signed_commits(world, tmp_path / "ssh", verify=KEY_POLICY)
    code, envs = signed.apply(capsys)
    assert code == 0, envs
    return signed


@pytest.fixture
def world(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> World:
    """A world without the signed-commit rule, every environment on v1.1 (not applied)."""
    return build_world(plain_registry.host, tmp_path)


# --------------------------------------------------------------------------- the signed-commit rule


def test_unsigned_commit_deleting_allowed_signers_unlocks_nothing(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 1: an unsigned promotion is refused; a second unsigned commit deletes
    settings.git.allowedSigners (and the signers file) to unlock itself and the first."""
    world = signed.world
    promotion = signed.unsigned(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    before = world.tags()
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before
    assert code == 1

    unlock = signed.unsigned(
        {"reconciler.cue": settings_cue(world.host, signed.verify, signers=None), SIGNERS: None},
        "Signed commits are a hassle",
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion, unlock)
    assert world.tags() == before
    assert code == 1


@pytest.mark.parametrize("how", ["point the rule at a new file", "edit the signers file"])
def test_commit_signed_by_unknown_key_cannot_make_itself_a_signer(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """Attack 2: mallory's signed promotion is refused; then a commit mallory signs points
    allowedSigners at a new file listing her key (or adds her key to the file), so that her
    commits would be "signed by an allowed signer". Judged by the old rule: refused."""
    world = signed.world
    promotion = signed.signed(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2", by=signed.mallory
    )
    before = world.tags()
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before

    signers = signed.alice.allowed(ALICE) + signed.mallory.allowed(MALLORY)
    if how == "point the rule at a new file":
        files = {
            "reconciler.cue": settings_cue(world.host, signed.verify, signers="keys/team_signers"),
            "keys/team_signers": signers,
        }
    else:
        files = {SIGNERS: signers}
    loosening = signed.signed(files, "Add mallory to the signers", by=signed.mallory)
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion, loosening)
    assert world.tags() == before
    assert code == 1


def test_unsigned_side_file_cannot_allow_hazards(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 3: alice's signed promotion of the hazardous v1.0 is refused (hazards); an
    unsigned side file environments/zz.cue sets `environments: dev: allowHazards: true`,
    which cue merges into dev, though dev's own file is signed."""
    world = signed.world
    signed.signed({"environments/dev.cue": world.env("dev", "v1.0")}, "Promote dev to v1.0")
    before = world.tags()
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], "hazards", "CVE-2026-1")
    assert world.tags() == before

    side = signed.unsigned(
        {"environments/zz.cue": "package reconciler\n\nenvironments: dev: allowHazards: true\n"},
        "Add zz.cue",
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, side)
    assert world.tags() == before
    assert code == 1


@pytest.mark.parametrize(
    "side_file",
    [
        "environments: dev: verify: insecureSkipSignatures: true",
        "settings: verify: insecureSkipSignatures: true",
    ],
)
def test_unsigned_side_file_cannot_skip_signatures(
    keyed: SignedWorld, capsys: pytest.CaptureFixture[str], side_file: str
) -> None:
    """Attack 3: alice's signed promotion of v1.2, which no key signed, is refused
    (signatures); an unsigned side file environments/zz.cue switches signature checks off
    for dev or for everyone."""
    world = keyed.world
    keyed.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2")
    before = world.tags()
    code, envs = keyed.apply(capsys)
    assert_refused(envs["dev"], "signatures", *world.digests["v1.2"].values())
    assert world.tags() == before

    side = keyed.unsigned(
        {"environments/zz.cue": f"package reconciler\n\n{side_file}\n"}, "Add zz.cue"
    )
    code, envs = keyed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, side)
    assert world.tags() == before
    assert code == 1


def test_unsigned_key_replacement_is_not_vouched_for_by_later_signed_promotion(
    keyed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 4: the attacker signs v1.2 with their own cosign key (a .sig in the
    registry), which the policy rejects; then slips in an unsigned commit that replaces
    keys/cosign.pub with their key, and waits for alice to sign a promotion of v1.2."""
    world = keyed.world
    attacker, attacker_pem = new_key()
    for digest in world.digests["v1.2"].values():
        sign_legacy(world.registry, world.source, digest, attacker)
    promotion = keyed.signed(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    before = world.tags()
    code, envs = keyed.apply(capsys)
    assert_refused(envs["dev"], "signatures", *world.digests["v1.2"].values())
    assert world.tags() == before

    keyed.revert(promotion)
    key_swap = keyed.unsigned({"keys/cosign.pub": attacker_pem}, "Rotate the release key")
    keyed.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2 again")
    code, envs = keyed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, key_swap)
    assert world.tags() == before
    assert code == 1


# --------------------------------------------------------------------------- reverts and merges


def test_revert_message_without_reverting_excuses_nothing(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 5: an unsigned promotion is refused; a signed commit whose message says
    "This reverts commit <it>" but leaves its change in place (it only adds a comment)."""
    world = signed.world
    promotion = signed.unsigned(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    before = world.tags()
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before

    signed.signed(
        {"environments/dev.cue": world.env("dev", "v1.2") + "// reviewed\n"},
        f'Revert "Promote dev to v1.2"\n\nThis reverts commit {promotion}.\n',
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before
    assert code == 1


@pytest.mark.parametrize(
    "message",
    [None, "Put dev back on v1.1\n\nNo revert trailer: the tree says it all.\n"],
    ids=["git revert", "restored without a revert message"],
)
def test_signed_revert_of_unsigned_commit_clears_the_way(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str], message: str | None
) -> None:
    """Positive: an unsigned promotion is refused; a signed commit that restores what it
    changed (a `git revert`, judged by content, whatever its message) excuses it, and a
    signed promotion then applies."""
    world = signed.world
    promotion = signed.unsigned(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    before = world.tags()
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before

    signed.revert(promotion, message)
    signed.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2, signed")
    code, envs = signed.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]["error"]
    assert code == 0
    assert world.tags()["dev-web"] == world.digests["v1.2"]["web"]
    assert "commits signed by alice@example.org" in json.dumps(envs["dev"]["verified"])


def test_signed_promotion_merged_by_unsigned_merge_commit_applies(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Positive: alice signs a promotion on a branch while main moves on (another signed
    commit); the forge's unsigned merge commit adds nothing beyond its parents."""
    world = signed.world
    branch = signed.signed_aside(
        {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    signed.signed(
        {"environments/prod.cue": "// owned by the platform team\n" + world.env("prod", "v1.1")},
        "Name prod's owner",
    )
    signed.merge(branch, "Merge branch 'promote/dev/v1.2'")
    code, envs = signed.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]["error"]
    assert code == 0
    assert world.tags()["dev-web"] == world.digests["v1.2"]["web"]


# --------------------------------------------------------------------------- where things come from


@pytest.mark.parametrize("disguise", ["environment named catalog", "catalog named source"])
def test_unsigned_environment_in_a_side_file_cannot_write_another_repositorys_tag(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str], disguise: str
) -> None:
    """Attack 6: an unsigned new environment that writes another repository's `stable` tag
    is refused in a file of its own; moved into environments/zz.cue and named `catalog`
    (or run from a new catalog named `source`), a text search attributes it to a signed
    file (environments/dev.cue, catalogs/shop.cue), and it is a first apply."""
    world = signed.world
    other = f"{world.source.split('/')[0]}/other"
    push(world.registry, other, build_image(f"{other}-stable"), tag="stable")
    if disguise == "environment named catalog":
        body = (
            'environments: catalog: {\n\tcatalog: "example.org/acme/shop"\n\trelease: "v1.2"\n'
            f'\titems: ["web"]\n\ttarget: {{repository: "{world.host}/{other}", tag: "stable"}}\n}}\n'
        )
    else:
        planted = push(world.registry, other, build_image(f"{other}-planted"))
        body = (
            f'catalogs: source: {{\n\tsource: "{world.host}/{other}"\n'
            f'\treleases: [{{name: "v9", items: {{web: "{planted}"}}}}]\n}}\n'
            'environments: catalog: {catalog: "source", release: "v9", target: tag: "stable"}\n'
        )
    text = f"package reconciler\n\n{body}"
    before, before_other = world.tags(), world.tags(other)

    own_file = signed.unsigned({"environments/catalog.cue": text}, "Add an environment")
    code, envs = signed.apply(capsys)
    assert_refused(envs["catalog"], COMMITS, own_file)
    assert world.tags(other) == before_other
    assert world.tags() == before

    side_file = signed.unsigned(
        {"environments/catalog.cue": None, "environments/zz.cue": text}, "Tidy up"
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["catalog"], COMMITS, own_file, side_file)
    assert world.tags(other) == before_other
    assert world.tags() == before
    assert code == 1


# --------------------------------------------------------------------------- suspend


def test_unsigned_suspend_is_refused_not_honoured(
    signed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signed `suspend: true` suspends staging; an unsigned one on dev (to hold dev on
    its release, say, against a fix) is a change like any other: refused, and said so."""
    world = signed.world
    signed.signed(
        {"environments/staging.cue": world.env("staging", "v1.1", "\n\tsuspend: true")},
        "Suspend staging",
    )
    code, envs = signed.apply(capsys)
    assert envs["staging"]["status"] == "suspended"
    assert code == 0

    before = world.tags()
    suspend = signed.unsigned(
        {"environments/dev.cue": world.env("dev", "v1.1", "\n\tsuspend: true")}, "Suspend dev"
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, suspend)
    assert world.tags() == before
    assert code == 1


# --------------------------------------------------------------------------- rules beyond commits


def _rebuild(world: World, release: str) -> dict[str, str]:
    """Push new artifacts and point ``release`` of the catalog at them: same name, new digests."""
    rebuilt = {
        "web": push(world.registry, world.source, build_index(f"{world.source}-web-rebuilt")),
        "worker": push(world.registry, world.source, build_image(f"{world.source}-worker-rebuilt")),
    }
    catalog = (world.repo.path / "catalogs" / "shop.cue").read_text()
    for item, digest in world.digests[release].items():
        catalog = catalog.replace(digest, rebuilt[item])
    world.repo.commit({"catalogs/shop.cue": catalog}, f"Rebuild {release}")
    return rebuilt


def test_requires_compares_digests_not_release_names(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """prod requires staging. v1.2 is rebuilt under the same name (new digests); prod,
    applied on its own (`--env prod`), must not take digests staging never ran."""
    assert world.cli(capsys, "apply")[0] == 0
    world.promote(dev="v1.2", prod="v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "prod")
    assert_refused(by_name(result)["prod"], "requires", "staging")
    assert world.tags() == before

    world.promote(staging="v1.2")
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert world.tags()["prod-web"] == world.digests["v1.2"]["web"]

    rebuilt = _rebuild(world, "v1.2")
    before = world.tags()
    code, result = world.cli(capsys, "apply", "--env", "prod")
    assert_refused(by_name(result)["prod"], "requires", "staging")
    assert world.tags() == before
    assert code == 1

    code, result = world.cli(capsys, "apply")  # staging first, then prod follows
    assert code == 0, result
    assert world.tags()["staging-web"] == rebuilt["web"]
    assert world.tags()["prod-web"] == rebuilt["web"]


def test_prune_keeps_a_tag_another_environment_now_desires(
    tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Environment a (prune: true) wrote a-web, a-worker and a-job; a now wants web only,
    and environment b now targets a-worker. a prunes a-job (nobody wants it) and must
    leave a-worker, which b desires. On an OCI layout, which can delete tags."""
    layout, store = str(tmp_path / "layout"), LayoutRegistry(None)
    digests = {i: push(store, layout, build_image(f"layout-{i}")) for i in ("web", "worker", "job")}
    catalog = {
        "name": "example.org/l",
        "source": f"oci:{layout}",
        "releases": [{"name": "v1", "items": digests}],
    }
    env = {"catalog": "example.org/l", "release": "v1", "verify": {"insecureSkipSignatures": True}}
    repo = StateRepo(tmp_path / "state")
    repo.commit(
        {
            "catalogs/l.json": json.dumps(catalog),
            "environments/a.json": json.dumps({**env, "prune": True}),
            **recordkeys.json_settings(),
        }
    )
    assert main(["apply", "--repo", str(repo.path)]) == 0
    assert {"a-web", "a-worker", "a-job"} <= set(store.list_tags(layout))

    repo.commit(
        {
            "environments/a.json": json.dumps({**env, "prune": True, "items": ["web"]}),
            "environments/b.json": json.dumps(
                {**env, "items": ["worker"], "target": {"tag": "a-{item}"}}
            ),
        },
        "b takes over a-worker",
    )
    capsys.readouterr()
    code = main(["apply", "--env", "a", "--repo", str(repo.path), "--json"])
    a = by_name(json.loads(capsys.readouterr().out))["a"]
    assert code == 0 and a["status"] == "applied", a["error"]
    assert a["applied"]["deleted"] == ["a-job"]
    assert store.resolve(layout, "a-worker") == digests["worker"]
    assert store.resolve(layout, "a-job") is None


def test_skipping_signatures_still_needs_the_catalogs_signers(
    keyed: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """dev opts out of its own signature policy (insecureSkipSignatures), but its catalog
    names signers: the catalog's policy still holds, unless the catalog opts out itself."""
    world = keyed.world
    catalog = (world.repo.path / "catalogs" / "shop.cue").read_text()
    skip = "\n\tverify: insecureSkipSignatures: true"
    keyed.signed(
        {
            "catalogs/shop.cue": catalog.replace(
                "\treleases: [", f"\tsigners: {KEY_POLICY}\n\treleases: ["
            ),
            "environments/dev.cue": world.env("dev", "v1.1", skip),
        },
        "The shop's releases are signed by its key; dev skips its own check",
    )
    code, envs = keyed.apply(capsys)
    assert code == 0, envs
    assert envs["dev"]["status"] == "applied"

    keyed.signed({"environments/dev.cue": world.env("dev", "v1.2", skip)}, "Promote dev to v1.2")
    before = world.tags()
    code, envs = keyed.apply(capsys)
    assert_refused(envs["dev"], "signatures", *world.digests["v1.2"].values())
    assert world.tags() == before
    assert code == 1

    keyed.signed(
        {
            "catalogs/shop.cue": catalog.replace(
                "\treleases: [", "\tsigners: insecureSkipSignatures: true\n\treleases: ["
            )
        },
        "The shop's releases are not signed",
    )
    code, envs = keyed.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]["error"]
    assert world.tags()["dev-web"] == world.digests["v1.2"]["web"]
