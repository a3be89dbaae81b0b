"""Promotion governance (issue 25): who may promote prod, four eyes, soak time, freeze.

Real parts: git commits SSH-signed by different keys (the real ssh-keygen), a real
registry, the real cue. The clock is the test's (``Reconciler(clock=...)``): soak and
freeze are decided at the instants the test sets. Every refusal asserts the rule, that
the message names who or what is at fault, and that prod's tags and record did not move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest

from reconciler.cli.main import main
from reconciler.desired import Loader
from reconciler.engine.outcomes import EnvOutcome, Mode, Status
from reconciler.engine.reconcile import Reconciler
from reconciler.evidence.signing import signing_key_from
from reconciler.git import GitSource
from reconciler.proposals.workflows import Workflows
from reconciler.verify import Rule, Waiting
from reconciler.verify.root import trust_root_from
from tests.support.attack import SIGNERS, SignedWorld, settings_cue
from tests.support.registry_servers import RegistryServer
from tests.support.sshsign import (
    SshKey,
    commit_content,
    commit_ssh_signed,
    new_key,
    sign,
    write_signed,
)
from tests.support.staterepo import SIGNATURE
from tests.support.world import World, build_world, expected_tags

PROD_SIGNERS = "keys/prod_signers"
T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)  # a Friday
ALICE, BOB, MALLORY = "alice@example.org", "bob@example.org", "mallory@example.org"


@dataclass
class Governed:
    """A world whose repository allows alice, bob and mallory to sign, and whose prod
    only alice and bob may change; the test moves the clock."""

    world: World
    alice: SshKey
    bob: SshKey
    mallory: SshKey
    now: datetime = T0

    @property
    def repo(self) -> pygit2.Repository:
        return self.world.repo.repo

    def prod(self, release: str, extra: str = "", requires: str = '["staging"]') -> str:
        return (
            'package reconciler\n\nenvironments: prod: {\n\tcatalog: "example.org/acme/shop"\n'
            f'\trelease: "{release}"\n\trequires: {requires}\n\tsigners: "{PROD_SIGNERS}"\n'
            f"{extra}}}\n"
        )

    def promote(
        self, release: str, by: SshKey, extra: str = "", requires: str = '["staging"]', **more: str
    ) -> str:
        """dev, staging and prod at ``release`` in one commit signed by ``by``."""
        files = {
            "environments/dev.cue": self.world.env("dev", release),
            "environments/staging.cue": self.world.env("staging", release),
            "environments/prod.cue": self.prod(release, extra, requires),
            **more,
        }
        return commit_ssh_signed(self.repo, by, files, f"promote to {release}")

    def aside(self, files: Mapping[str, str], by: SshKey, message: str) -> str:
        """A signed commit on a branch off main (main does not move): a merge request."""
        main = self.repo.revparse_single("main").peel(pygit2.Commit)
        content = commit_content(self.repo, files, message, parents=[main.id])
        return str(self.repo.create_commit_with_signature(content, sign(by, content)))

    def merge(self, tip: str, by: SshKey) -> str:
        """A merge commit of ``tip`` into main, signed by ``by`` (a forge's merge button
        with a signing key, or `git merge -S`)."""
        main = self.repo.revparse_single("main").peel(pygit2.Commit)
        merged = self.repo.merge_commits(main, pygit2.Oid(hex=tip))
        assert not merged.conflicts
        tree = merged.write_tree(self.repo)
        content = str(
            self.repo.create_commit_string(
                SIGNATURE, SIGNATURE, "Merge the change", tree, [main.id, pygit2.Oid(hex=tip)]
            )
        )
        return write_signed(self.repo, content, sign(by, content))

    def approve(self, by: SshKey) -> str:
        """An empty commit signed by ``by``: an approval of what came before it."""
        return commit_ssh_signed(self.repo, by, {}, "Approved-by: the signer of this commit")

    def apply(self, mode: Mode = Mode.APPLY) -> dict[str, EnvOutcome]:
        reconciler = Reconciler(
            GitSource(str(self.world.repo.path), self.world.cache),
            Loader(self.world.cache),
            record_key=signing_key_from(None),
            trust_root=trust_root_from(None),
            clock=lambda: self.now,
        )
        try:
            return {o.environment: o for o in reconciler.run(mode).outcomes}
        finally:
            reconciler.close()

    def prod_tags(self) -> dict[str, str]:
        """prod's tags and its record tag, as the registry says."""
        return {t: d for t, d in self.world.tags().items() if "prod" in t}


@pytest.fixture
def governed(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> Governed:
    """Everything applied at v1.1 (at T0) after alice signed the governance of prod."""
    world = build_world(plain_registry.host, tmp_path)
    keys = tmp_path / "ssh"
    alice, bob, mallory = new_key(keys, "alice"), new_key(keys, "bob"), new_key(keys, "mallory")
    gov = Governed(world, alice, bob, mallory)
    commit_ssh_signed(
        gov.repo,
        alice,
        {
            "reconciler.cue": settings_cue(world.host, "insecureSkipSignatures: true"),
            SIGNERS: alice.allowed(ALICE) + bob.allowed(BOB) + mallory.allowed(MALLORY),
            PROD_SIGNERS: alice.allowed(ALICE) + bob.allowed(BOB),
            "environments/prod.cue": gov.prod("v1.1"),
        },
        "Only alice and bob may change prod",
    )
    first = gov.apply()
    assert all(o.status is Status.APPLIED for o in first.values()), first
    return gov


def assert_refused(outcome: EnvOutcome, rule: Rule, *named: str) -> None:
    assert outcome.status is Status.REFUSED, (outcome.status, outcome.error)
    error = outcome.error
    assert error is not None and getattr(error, "rule", None) is rule, error
    for text in named:
        assert text in error.message, f"{text!r} not in: {error.message}"


# --------------------------------------------------------------------------- who may promote


def test_a_prod_signer_may_promote_prod_and_audit_says_who(
    governed: Governed, capsys: pytest.CaptureFixture[str]
) -> None:
    commit = governed.promote("v1.2", governed.bob)
    assert main(["plan", "--repo", str(governed.world.repo.path)]) == 0
    shown = capsys.readouterr().out
    assert f"governance: {commit[:10]} signed by {BOB}, one of prod's signers" in shown
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    assert expected_tags(governed.world, prod="v1.2").items() <= governed.world.tags().items()
    receipt = outcomes["prod"].receipt
    assert receipt is not None and receipt.governance is not None
    assert [s for _, s in receipt.governance.changes] == [BOB]
    assert receipt.to_json()["governance"]["signers"] == PROD_SIGNERS
    code, audit = governed.world.cli(capsys, "audit", "--env", "prod")
    assert code == 0
    entry = next(e for e in audit["entries"] if e["commit"] == commit)
    assert entry["governance"] == [f"{commit[:10]} signed by {BOB}, one of prod's signers "
                                   f"({PROD_SIGNERS})"]  # fmt: skip


def test_promote_shows_the_rules_the_merge_must_meet(governed: Governed) -> None:
    commit_ssh_signed(
        governed.repo,
        governed.alice,
        {
            "environments/dev.cue": governed.world.env("dev", "v1.2"),
            "environments/staging.cue": governed.world.env("staging", "v1.2"),
            "environments/prod.cue": governed.prod("v1.1", "\tapprovals: 2\n"),
        },
        "dev and staging to v1.2; four eyes for prod",
    )
    assert governed.apply()["staging"].status is Status.APPLIED
    reconciler = governed.world.reconciler()
    try:
        proposal = Workflows(reconciler).promote("prod", "v1.2")
    finally:
        reconciler.close()
    assert proposal.to_json()["governance"] == [
        f"signers: a change to prod is signed by one of {PROD_SIGNERS} ({ALICE}, {BOB})",
        "four eyes: another of prod's signers merges it with a signed merge commit, or "
        "approves it with an empty signed commit (git commit --allow-empty -S)",
    ]


def test_a_repository_signer_who_is_not_a_prod_signer_cannot_promote_prod(
    governed: Governed,
) -> None:
    before = governed.prod_tags()
    commit = governed.promote("v1.2", governed.mallory)
    outcomes = governed.apply()
    assert outcomes["staging"].status is Status.APPLIED  # the repository's rule holds for it
    assert_refused(outcomes["prod"], Rule.SIGNERS, commit[:10], PROD_SIGNERS)
    assert governed.prod_tags() == before


def test_attack_adding_oneself_to_prod_signers_and_promoting_in_one_commit(
    governed: Governed,
) -> None:
    before = governed.prod_tags()
    signers = governed.alice.allowed(ALICE) + governed.bob.allowed(BOB)
    commit = governed.promote(
        "v1.2", governed.mallory, **{PROD_SIGNERS: signers + governed.mallory.allowed(MALLORY)}
    )
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.SIGNERS, commit[:10], PROD_SIGNERS)
    assert governed.prod_tags() == before
    planned = governed.apply(Mode.PLAN)
    assert_refused(planned["prod"], Rule.SIGNERS, commit[:10])


def test_attack_adding_oneself_to_prod_signers_then_promoting_in_a_second_commit(
    governed: Governed,
) -> None:
    before = governed.prod_tags()
    signers = governed.alice.allowed(ALICE) + governed.bob.allowed(BOB)
    added = commit_ssh_signed(
        governed.repo,
        governed.mallory,
        {PROD_SIGNERS: signers + governed.mallory.allowed(MALLORY)},
        "add mallory to prod's signers",
    )
    assert governed.apply()["prod"].status is Status.IN_SYNC  # nothing of prod moves
    governed.promote("v1.2", governed.mallory)
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.SIGNERS, added[:10])
    assert governed.prod_tags() == before


# --------------------------------------------------------------------------- four eyes


def test_four_eyes_refuses_self_approval_and_accepts_another_signers_merge(
    governed: Governed,
) -> None:
    approvals = "\tapprovals: 2\n"
    # Turning four eyes on is a change to prod's governance: alice signs it (one pair of
    # eyes suffices under the rules in force, approvals: 1).
    governed.promote("v1.1", governed.alice, extra=approvals)
    assert governed.apply()["prod"].status is Status.IN_SYNC
    before = governed.prod_tags()
    files = {
        "environments/dev.cue": governed.world.env("dev", "v1.2"),
        "environments/staging.cue": governed.world.env("staging", "v1.2"),
        "environments/prod.cue": governed.prod("v1.2", approvals),
    }
    change = governed.aside(files, governed.alice, "promote to v1.2")
    merge = governed.merge(change, governed.alice)
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.APPROVALS, change[:10], ALICE, "self-approval")
    assert merge[:10] in outcomes["prod"].error.message  # type: ignore[union-attr]
    assert governed.prod_tags() == before

    governed.approve(governed.bob)
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    receipt = outcomes["prod"].receipt
    assert receipt is not None and receipt.governance is not None
    assert (change, BOB) in {(c, s) for c, _, s in receipt.governance.approvals}
    assert receipt.governance.four_eyes  # bob's approval covers alice's earlier commit too


def test_four_eyes_accepts_a_merge_signed_by_the_other_signer(governed: Governed) -> None:
    approvals = "\tapprovals: 2\n"
    governed.promote("v1.1", governed.alice, extra=approvals)
    files = {
        "environments/dev.cue": governed.world.env("dev", "v1.2"),
        "environments/staging.cue": governed.world.env("staging", "v1.2"),
        "environments/prod.cue": governed.prod("v1.2", approvals),
    }
    change = governed.aside(files, governed.alice, "promote to v1.2")
    merge = governed.merge(change, governed.bob)
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    receipt = outcomes["prod"].receipt
    assert receipt is not None and receipt.governance is not None
    assert {"commit": change, "by": merge, "approver": BOB} in receipt.to_json()["governance"][
        "approved"
    ]


# --------------------------------------------------------------------------- soak


def test_soak_waits_until_staging_ran_the_digests_for_24h(governed: Governed) -> None:
    soak = '[{environment: "staging", soak: "24h"}]'
    commit_ssh_signed(
        governed.repo,
        governed.alice,
        {"environments/prod.cue": governed.prod("v1.1", requires=soak)},
        "prod soaks in staging for a day",
    )
    before = governed.prod_tags()
    governed.now = T0 + timedelta(hours=1)
    governed.promote("v1.2", governed.alice, requires=soak)
    outcomes = governed.apply()
    assert outcomes["staging"].status is Status.APPLIED
    assert_refused(outcomes["prod"], Rule.SOAK, "staging", "24h")
    error = outcomes["prod"].error
    assert isinstance(error, Waiting) and error.until == T0 + timedelta(hours=25)
    assert governed.prod_tags() == before

    governed.now = T0 + timedelta(hours=24, minutes=59)
    assert_refused(governed.apply()["prod"], Rule.SOAK)
    assert governed.prod_tags() == before

    governed.now = T0 + timedelta(hours=25)
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    assert expected_tags(governed.world, prod="v1.2").items() <= governed.world.tags().items()


# --------------------------------------------------------------------------- freeze


FREEZE = (
    "\tfreeze: [\n"
    '\t\t{from: "2026-12-04T11:00:00Z", until: "2026-12-04T13:00:00Z", reason: "release day"},\n'
    '\t\t{days: ["fri"], from: "18:00", until: "08:00", timeZone: "Europe/Berlin", '
    'reason: "weekend"},\n'
    "\t]\n"
)


def test_freeze_holds_a_promotion_until_the_window_ends_and_lets_a_rollback_through(
    governed: Governed,
) -> None:
    governed.promote("v1.1", governed.alice, extra=FREEZE)
    assert governed.apply()["prod"].status is Status.IN_SYNC
    before = governed.prod_tags()
    governed.now = T0 + timedelta(hours=2)  # 12:00Z, inside "release day"
    promotion = governed.promote("v1.2", governed.alice, extra=FREEZE)
    outcomes = governed.apply()
    assert outcomes["staging"].status is Status.APPLIED  # no freeze there
    assert_refused(outcomes["prod"], Rule.FREEZE, "release day")
    error = outcomes["prod"].error
    assert isinstance(error, Waiting) and error.until == datetime(2026, 12, 4, 13, tzinfo=UTC)
    assert governed.prod_tags() == before

    governed.now = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)  # the window has closed
    assert governed.apply()["prod"].status is Status.APPLIED
    assert expected_tags(governed.world, prod="v1.2").items() <= governed.world.tags().items()

    governed.now = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)  # 21:00 in Berlin: "weekend"
    SignedWorld(governed.world, governed.alice, governed.mallory, "").revert(promotion)
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    receipt = outcomes["prod"].receipt
    assert receipt is not None and "rollback during a freeze (weekend)" in receipt.freeze
    assert expected_tags(governed.world, prod="v1.1").items() <= governed.world.tags().items()


def test_attack_an_unsigned_merge_combining_a_catalog_edit_with_a_prod_promotion(
    governed: Governed,
) -> None:
    """mallory rewrites v1.2's digests on one branch (prod runs v1.1: no change to prod
    there); alice promotes prod to v1.2 on another, as she saw it. Merged with the merge
    button (unsigned, clean), prod would run digests no prod signer ever signed."""
    before = governed.prod_tags()
    history = governed.world.reconciler().history
    main = str(governed.repo.revparse_single("main").id)
    catalog = (history.file_at(main, "catalogs/shop.cue") or b"").decode()
    for item, digest in governed.world.digests["v1.2"].items():
        catalog = catalog.replace(digest, governed.world.digests["v1.1"][item])
    swapped = governed.aside({"catalogs/shop.cue": catalog}, governed.mallory, "tidy catalog")
    files = {
        "environments/dev.cue": governed.world.env("dev", "v1.2"),
        "environments/staging.cue": governed.world.env("staging", "v1.2"),
        "environments/prod.cue": governed.prod("v1.2"),
    }
    promoted = governed.aside(files, governed.alice, "promote to v1.2")
    SignedWorld(governed.world, governed.alice, governed.mallory, "").merge(swapped, "merge A")
    merge = SignedWorld(governed.world, governed.alice, governed.mallory, "").merge(
        promoted, "merge B"
    )
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.SIGNERS, merge[:10])
    assert governed.prod_tags() == before


def test_attack_removing_prod_and_declaring_its_tags_in_a_new_environment(
    governed: Governed,
) -> None:
    before = governed.prod_tags()
    prod2 = (
        'package reconciler\n\nenvironments: prod2: {\n\tcatalog: "example.org/acme/shop"\n'
        '\trelease: "v1.2"\n\ttarget: tag: "prod-{item}"\n}\n'
    )
    commit = commit_ssh_signed(
        governed.repo,
        governed.mallory,
        {
            "environments/prod.cue": None,
            "environments/prod2.cue": prod2,
            "environments/dev.cue": governed.world.env("dev", "v1.2"),
            "environments/staging.cue": governed.world.env("staging", "v1.2"),
        },
        "replace prod",
    )
    outcomes = governed.apply()
    assert_refused(outcomes["prod2"], Rule.SIGNERS, commit[:10], "prod's signers")
    assert governed.prod_tags() == before


def test_attack_turning_four_eyes_off_in_the_change_itself(governed: Governed) -> None:
    """approvals: 2 is in force; alice lowers it to 1 and promotes prod in one commit:
    judged by the rule in force, the commit needs a second signer."""
    governed.promote("v1.1", governed.alice, extra="\tapprovals: 2\n")
    assert governed.apply()["prod"].status is Status.IN_SYNC
    before = governed.prod_tags()
    commit = governed.promote("v1.2", governed.alice, extra="\tapprovals: 1\n")
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.APPROVALS, commit[:10], ALICE)
    assert governed.prod_tags() == before


def test_a_freeze_override_ships_only_once_a_second_signer_approved_it(
    governed: Governed,
) -> None:
    strict = (
        '\tfreeze: [{from: "2026-12-04T11:00:00Z", until: "2026-12-04T13:00:00Z", '
        'reason: "audit week", allowRollback: false}]\n'
    )
    governed.promote("v1.2", governed.alice, extra=strict)  # at 10:00, before the window
    assert governed.apply()["prod"].status is Status.APPLIED
    before = governed.prod_tags()
    governed.now = T0 + timedelta(hours=2)
    override = strict + '\toverrideFreeze: "INC-7: v1.2 breaks checkout"\n'
    commit = commit_ssh_signed(
        governed.repo,
        governed.alice,
        {"environments/prod.cue": governed.prod("v1.1", override)},
        "roll prod back despite the freeze",
    )
    outcomes = governed.apply()
    assert_refused(outcomes["prod"], Rule.FREEZE, "audit week", "not approved by a second")
    assert governed.prod_tags() == before

    approval = governed.approve(governed.bob)
    outcomes = governed.apply()
    assert outcomes["prod"].status is Status.APPLIED, outcomes["prod"].error
    receipt = outcomes["prod"].receipt
    assert receipt is not None and receipt.governance is not None
    assert "overridden: INC-7" in receipt.freeze and BOB in receipt.freeze
    assert receipt.to_json()["governance"]["approved"] == [
        {"commit": commit, "by": approval, "approver": BOB}
    ]
    assert expected_tags(governed.world, prod="v1.1").items() <= governed.world.tags().items()
