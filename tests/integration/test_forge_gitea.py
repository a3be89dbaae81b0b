"""Merge requests for real: a promotion opened, checked, approved, merged, applied and
reported on a real Gitea, with a real registry and real git; and a hazardous one that gets
a failure status naming the rule and, merged anyway, a "refused" comment."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from reconciler.evidence import records
from tests.support.daemon import DaemonProcess, converged, eventually, within
from tests.support.gitea import GiteaServer
from tests.support.publish import CATALOG_FILE, push_build, with_signers
from tests.support.registry_servers import RegistryServer
from tests.support.world import World, build_world, desired_only, expected_tags

TOKEN_ENV = "RECONCILER_FORGE_TOKEN"
HOOK_SECRET = "a-gitea-webhook-secret-0123456789"


def forge_cue(gitea: GiteaServer, repository: str) -> str:
    return (
        'package reconciler\n\nsettings: forge: {\n\ttype: "gitea"\n'
        f'\turl: "{gitea.base}"\n\trepository: "{repository}"\n\ttokenEnv: "{TOKEN_ENV}"\n}}\n'
    )


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "Bob", "GIT_AUTHOR_EMAIL": "bob@example.org",
           "GIT_COMMITTER_NAME": "Bob", "GIT_COMMITTER_EMAIL": "bob@example.org",
           "PATH": "/usr/bin:/bin", "HOME": str(cwd or Path.cwd())}  # fmt: skip
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"git {args[0]}: {proc.stderr}"
    return proc.stdout.strip()


def verify_state(gitea: GiteaServer, repo: str, sha: str, context: str) -> dict[str, Any]:
    found = gitea.api("alice", "GET", f"/repos/{repo}/commits/{sha}/status")
    return next((s for s in found.get("statuses") or () if s["context"] == context), {})


def recorded(world: World, env: str) -> str | None:
    """The release of the environment's newest record (tags move before it is written)."""
    head = records.read_head(world.registry, world.source, env)
    return head.release if head is not None else None


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def test_a_promotion_is_a_merge_request_checked_merged_applied_and_reported(
    gitea: GiteaServer,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    daemons: list[DaemonProcess],
) -> None:
    name = f"state-{uuid.uuid4().hex[:8]}"
    repo = f"alice/{name}"
    clone = gitea.create_repo(name)
    world: World = build_world(
        plain_registry.host, tmp_path, extra_files={"forge.cue": forge_cue(gitea, repo)}
    )
    world.repo.repo.remotes.create("origin", gitea.push_url(clone, "alice"))
    git("push", "origin", "main", cwd=world.repo.path)

    # The daemon reads the repository from Gitea; its forge token is in its environment.
    daemon_env = {
        TOKEN_ENV: gitea.tokens["alice"],
        "RECONCILER_CACHE_DIR": str(tmp_path / "dc"),
        "RECONCILER_WEBHOOK_SECRET": HOOK_SECRET,
    }
    daemon = DaemonProcess(tmp_path / "daemon.log", clone, env=daemon_env)
    daemons.append(daemon)
    hook = {"url": f"{daemon.base}/hooks/git", "content_type": "json", "secret": HOOK_SECRET}
    gitea.api(
        "alice", "POST", f"/repos/{repo}/hooks",
        {"type": "gitea", "config": hook, "events": ["push"], "active": True},
    )  # fmt: skip
    eventually(converged(world, dev="v1.1", staging="v1.1", prod="v1.1"), within(3), "first")
    world.promote(dev="v1.2", staging="v1.2")  # pushed straight to main, before the flow
    git("push", "origin", "main", cwd=world.repo.path)
    before = {"dev": "v1.2", "staging": "v1.2", "prod": "v1.1"}
    eventually(converged(world, **before), within(3), "staging at v1.2", daemon)
    eventually(lambda: recorded(world, "staging") == "v1.2", within(1), "staging's record", daemon)

    # 1. promote prod v1.2 --open: a pull request whose description is the plan.
    monkeypatch.setenv(TOKEN_ENV, gitea.tokens["alice"])
    code, out = cli(capsys, "promote", "prod", "v1.2", "--open", "--repo", str(world.repo.path))
    assert code == 0, out
    assert "merge request !" in out and "reconciler/verify: success" in out, out
    pulls = gitea.api("alice", "GET", f"/repos/{repo}/pulls?state=open")
    assert len(pulls) == 1
    pr = pulls[0]
    number, head = pr["number"], pr["head"]["sha"]
    assert pr["head"]["ref"] == "promote/prod/v1.2"
    assert {label["name"] for label in pr["labels"]} == {"reconciler", "promote", "prod"}
    body = pr["body"]
    for item in ("web", "worker"):
        assert world.digests["v1.1"][item] in body and world.digests["v1.2"][item] in body
    assert "requires: staging" in body and "hazards: none" in body and "receipts" in body
    assert verify_state(gitea, repo, head, "reconciler/verify")["status"] == "success"

    # 2. Opening again updates the one that exists; check-mr re-runs the same gate.
    code, out = cli(capsys, "promote", "prod", "v1.2", "--open", "--repo", str(world.repo.path))
    assert code == 0 and f"merge request !{number} updated" in out, out
    code, out = cli(capsys, "check-mr", str(number), "--repo", clone)
    assert code == 0 and "reconciler/verify: success" in out, out
    assert len(gitea.api("alice", "GET", f"/repos/{repo}/pulls?state=open")) == 1

    # 3. bob approves and merges; the daemon applies and says so on the pull request.
    gitea.api("bob", "POST", f"/repos/{repo}/pulls/{number}/reviews", {"event": "APPROVED"})
    merge = gitea.merge(repo, number, "bob")
    after = {**before, "prod": "v1.2"}
    eventually(converged(world, **after), within(3), "the merged promotion applied", daemon)

    def comment(kind: str, pr: int) -> str:
        found = gitea.api("alice", "GET", f"/repos/{repo}/issues/{pr}/comments")
        return next((c["body"] for c in found if kind in c["body"]), "")

    eventually(lambda: bool(comment("**Applied**", number)), within(2), "the applied comment")
    applied = comment("**Applied**", number)
    head_record = records.read_head(world.registry, world.source, "prod")
    assert head_record is not None and head_record.release == "v1.2"
    assert head_record.digest in applied and world.digests["v1.2"]["web"] in applied
    eventually(
        lambda: verify_state(gitea, repo, merge, "reconciler/apply").get("status") == "success",
        within(1), "reconciler/apply on the merge commit",
    )  # fmt: skip

    # Gitea's push webhook (X-Gitea-Signature) reached the daemon and was accepted.
    eventually(lambda: bool(daemon.events("webhook")), within(2), "gitea's webhook", daemon)
    assert not daemon.events("webhook-refused")

    # audit: the merge request's number, author, approvers and merger from the API.
    code, out = cli(capsys, "audit", "--env", "prod", "--json", "--repo", clone)
    assert code == 0, out
    promoted = next(e for e in json.loads(out)["entries"] if e["commit"] == merge)
    assert promoted["mergeRequest"] == f"!{number}"
    assert promoted["forge"]["author"] == "alice" and promoted["forge"]["approvers"] == ["bob"]
    assert promoted["forge"]["mergedBy"] == "bob" and promoted["status"] == "applied"

    # 4. A hand-made pull request to the hazardous v1.0: a failure status naming the rule.
    work = tmp_path / "bob"
    git("clone", gitea.push_url(clone, "bob"), str(work))
    prod = (work / "environments" / "prod.cue").read_text().replace('"v1.2"', '"v1.0"')
    (work / "environments" / "prod.cue").write_text(prod)
    git("checkout", "-b", "hotfix/prod-v1.0", cwd=work)
    git("commit", "-am", "prod to v1.0", cwd=work)
    git("push", "origin", "hotfix/prod-v1.0", cwd=work)
    hazard_head = git("rev-parse", "HEAD", cwd=work)
    gitea.wait_for_branch(repo, "hotfix/prod-v1.0", hazard_head)
    opened = gitea.api(
        "bob", "POST", f"/repos/{repo}/pulls",
        {"head": "hotfix/prod-v1.0", "base": "main", "title": "prod to v1.0", "body": "urgent"},
    )  # fmt: skip
    hazard = opened["number"]
    # The daemon checks a new head by itself (as it re-checks after every push) …
    eventually(
        lambda: verify_state(gitea, repo, hazard_head, "reconciler/verify").get("status")
        == "failure",
        within(8), "the daemon's check of the new pull request", daemon,
    )  # fmt: skip
    # … and check-mr (e.g. from CI) runs the same gate.
    code, out = cli(capsys, "check-mr", str(hazard), "--repo", clone)
    assert code == 1 and "rule hazards" in out, out
    code, again = cli(capsys, "validate", "--mr", str(hazard), "--repo", clone)
    assert code == 1 and "rule hazards" in again, again
    status = verify_state(gitea, repo, hazard_head, "reconciler/verify")
    assert status["status"] == "failure" and "hazards" in status["description"]

    # 5. Merged anyway: refused, nothing moved, and the pull request says why.
    hazard_merge = gitea.merge(repo, hazard, "bob")
    eventually(lambda: bool(comment("**Refused**", hazard)), within(3), "the refused comment")
    refused = comment("**Refused**", hazard)
    assert "rule: `hazards`" in refused and "way out" in refused
    assert verify_state(gitea, repo, hazard_merge, "reconciler/apply")["status"] == "failure"
    assert desired_only(world.tags()) == expected_tags(world, **after)  # the registry untouched
    found = gitea.api("alice", "GET", f"/repos/{repo}/issues/{hazard}/comments")
    assert sum("**Refused**" in c["body"] for c in found) == 1  # once per transition

    # 6. The way out: rollback --open proposes the revert as a merge request of its own.
    code, out = cli(capsys, "rollback", "prod", "--open", "--json", "--repo", gitea.push_url(clone))
    assert code == 0, out
    revert = json.loads(out)
    assert (revert["from"], revert["to"]) == ("v1.0", "v1.2")
    assert revert["mergeRequest"]["status"]["state"] == "success"
    pr = gitea.api("alice", "GET", f"/repos/{repo}/pulls/{revert['mergeRequest']['number']}")
    assert {label["name"] for label in pr["labels"]} == {"reconciler", "rollback", "prod"}


DISCOVER = '\tdiscover: {tag: "^(v[0-9]+[.][0-9]+)$", items: {web: "web-", worker: "worker-"}}\n'


def test_discover_open_opens_a_merge_request_for_each_new_release(
    gitea: GiteaServer,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"state-{uuid.uuid4().hex[:8]}"
    repo = f"alice/{name}"
    clone = gitea.create_repo(name)
    world = build_world(
        plain_registry.host, tmp_path, extra_files={"forge.cue": forge_cue(gitea, repo)}
    )
    key = with_signers(world)
    catalog = (world.repo.path / CATALOG_FILE).read_text()
    world.repo.commit(
        {CATALOG_FILE: catalog.replace("\treleases: [", DISCOVER + "\treleases: [", 1)},
        "discover releases from tags",
    )
    world.repo.repo.remotes.create("origin", gitea.push_url(clone, "alice"))
    git("push", "origin", "main", cwd=world.repo.path)
    v13 = push_build(world, "v1.3", key, tag="{item}-{version}")
    monkeypatch.setenv(TOKEN_ENV, gitea.tokens["alice"])

    code, out = cli(capsys, "discover", "--open", "--json", "--repo", gitea.push_url(clone))
    assert code == 0, out
    [finding] = json.loads(out)["findings"]
    assert finding["status"] == "proposed" and finding["mergeRequest"]["action"] == "opened"
    pr = gitea.api("alice", "GET", f"/repos/{repo}/pulls/{finding['mergeRequest']['number']}")
    assert pr["head"]["ref"] == "release/example.org-acme-shop/v1.3"
    assert {label["name"] for label in pr["labels"]} == {
        "reconciler", "release", "example.org/acme/shop",
    }  # fmt: skip
    status = verify_state(gitea, repo, pr["head"]["sha"], "reconciler/verify")
    assert status["status"] == "success", status
    assert v13  # built and signed; release add verified each item before the branch


def test_the_daemons_follow_latest_proposal_is_a_merge_request(
    gitea: GiteaServer,
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    daemons: list[DaemonProcess],
) -> None:
    name = f"state-{uuid.uuid4().hex[:8]}"
    repo = f"alice/{name}"
    clone = gitea.create_repo(name)
    world = build_world(
        plain_registry.host, tmp_path, extra_files={"forge.cue": forge_cue(gitea, repo)}
    )
    world.repo.commit({"environments/dev.cue": world.env("dev", "v1.1", '\n\tfollow: "latest"')})
    world.repo.repo.remotes.create("origin", gitea.push_url(clone, "alice"))
    git("push", "origin", "main", cwd=world.repo.path)

    # The daemon pushes its proposals, so its URL carries alice's credentials (as a token).
    token = gitea.tokens["alice"]
    daemon_env = {TOKEN_ENV: token, "RECONCILER_CACHE_DIR": str(tmp_path / "dc")}
    daemon = DaemonProcess(
        tmp_path / "daemon.log", gitea.push_url(clone), "--discover-interval", "1", env=daemon_env
    )
    daemons.append(daemon)

    def proposal() -> dict[str, Any] | None:
        pulls = gitea.api("alice", "GET", f"/repos/{repo}/pulls?state=open", ok=False)
        if not isinstance(pulls, list):  # 404 while Gitea still takes the repository for empty
            return None
        return next((p for p in pulls if p["head"]["ref"] == "promote/dev/v1.2"), None)

    def labels() -> set[str]:
        found = proposal()
        return {label["name"] for label in found["labels"]} if found else set()

    # Opened, then labelled: the labels are its last step but one.
    eventually(lambda: labels() == {"reconciler", "promote", "dev"}, within(5), "the MR", daemon)
    pr = proposal()
    assert pr is not None
    assert world.digests["v1.2"]["web"] in pr["body"]
    eventually(
        lambda: verify_state(gitea, repo, pr["head"]["sha"], "reconciler/verify").get("status")
        == "success",
        within(2), "reconciler/verify on the daemon's proposal", daemon,
    )  # fmt: skip
    assert token not in daemon.log.read_text()  # never logged
