"""promote / rollback / audit on real bare remotes, a real registry and the real cue."""

from __future__ import annotations

import json
from pathlib import Path

import pygit2
import pytest

from reconciler.cli.main import main
from tests.support import recordkeys
from tests.support.publish import Origin as Remote
from tests.support.registry_servers import RegistryServer
from tests.support.world import build_world, desired_only, expected_tags


@pytest.fixture
def remote(plain_registry: RegistryServer, tmp_path: Path, cue_bin: str) -> Remote:
    world = build_world(plain_registry.host, tmp_path)
    return Remote(world, tmp_path / "origin.git")


def test_promote_merge_apply_rollback_merge_apply(
    remote: Remote, capsys: pytest.CaptureFixture[str]
) -> None:
    world = remote.world
    assert remote.run(capsys, "apply")[0] == 0
    for env in ("dev", "staging"):
        code, proposal = remote.run(capsys, "promote", env, "v1.2", "--push")
        assert code == 0, proposal
        assert proposal["branch"] == f"promote/{env}/v1.2" and proposal["pushed"] is True
        assert proposal["from"] == "v1.1" and proposal["to"] == "v1.2"
        message = remote.repo[proposal["commit"]].message
        assert f"Promote-Environment: {env}\nPromote-Release: v1.2\nPromote-From: v1.1" in message
        remote.merge(proposal["branch"])
        code, applied = remote.run(capsys, "apply")
        assert code == 0, applied
        env_result = next(e for e in applied["environments"] if e["name"] == env)
        assert env_result["transition"] == f"{env} promoted from v1.1 to v1.2"
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.2", staging="v1.2", prod="v1.1"
    )

    code, proposal = remote.run(capsys, "rollback", "staging", "--push")
    assert code == 0, proposal
    assert proposal["from"] == "v1.2" and proposal["to"] == "v1.1"
    reverted = remote.repo.revparse_single("main~0").peel(pygit2.Commit)
    assert f"This reverts commit {reverted.id}" in remote.repo[proposal["commit"]].message
    remote.merge(proposal["branch"])
    code, applied = remote.run(capsys, "apply")
    assert code == 0, applied
    staging = next(e for e in applied["environments"] if e["name"] == "staging")
    assert staging["transition"] == (
        f"staging rolled back from v1.2 to v1.1, reverting {str(reverted.id)[:12]}"
    )
    assert desired_only(world.tags()) == expected_tags(
        world, dev="v1.2", staging="v1.1", prod="v1.1"
    )
    from reconciler.evidence import records

    head = records.read_head(world.registry, world.source, "staging")
    assert head is not None and head.note.startswith("staging rolled back from v1.2 to v1.1")


@pytest.mark.parametrize(
    ("env", "release", "fragment"),
    [
        ("dev", "v9.9", "has no release 'v9.9'"),
        ("dev", "v1.0", "refused (hazards)"),
        ("prod", "v1.2", "staging runs v1.1 and never ran"),
        ("qa", "v1.2", "unknown environment 'qa'"),
        ("dev", "v1.1", "dev already runs v1.1"),
    ],
)
def test_promote_refusals_leave_no_branch_and_registry_untouched(
    remote: Remote, capsys: pytest.CaptureFixture[str], env: str, release: str, fragment: str
) -> None:
    assert remote.run(capsys, "apply")[0] == 0
    before_tags, before_branches = remote.world.tags(), remote.branches()
    code = main(["promote", env, release, "--push", "--repo", remote.url])
    err = capsys.readouterr().err
    assert code == 1
    assert fragment in err and "Traceback" not in err
    assert remote.branches() == before_branches
    assert remote.world.tags() == before_tags


def test_promote_keeps_every_other_byte_of_cue_and_json_files(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    staging_cue = (
        "package reconciler\n\n"
        "// staging: the release candidate line.   Odd   spacing stays.\n"
        "environments: staging: {\n"
        '\tcatalog: "example.org/acme/shop" // which catalog\n'
        '\t// release: "v0.0" is what we ran in 2019\n'
        '\trelease:    "v1.1"   // the one to bump\n'
        '\trequires: ["dev"]\n'
        "}\n"
    )
    prod_json = (
        '{\n    "catalog":   "example.org/acme/shop",\n'
        '    "release": "v1.1",\n    "requires": [ "staging" ]\n}\n'
    )
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={
            "environments/staging.cue": staging_cue,
            "environments/prod.cue": None,  # type: ignore[dict-item]
            "environments/prod.json": prod_json,
        },
    )
    assert main(["apply", "--repo", str(world.repo.path)]) == 0
    world.promote(dev="v1.2")
    assert main(["apply", "--repo", str(world.repo.path)]) == 0
    capsys.readouterr()
    for env, path, text in (
        ("staging", "environments/staging.cue", staging_cue),
        ("prod", "environments/prod.json", prod_json),
    ):
        code = main(["promote", env, "v1.2", "--repo", str(world.repo.path), "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        proposal = json.loads(out)
        commit = world.repo.repo[proposal["commit"]]
        edited = commit.tree[path].data.decode()
        assert edited == text.replace('"v1.1"', '"v1.2"', 1)
        diff = world.repo.repo.diff(commit.parents[0], commit)
        assert [p.delta.new_file.path for p in diff] == [path]
        if env == "staging":  # merge it so prod may follow
            world.repo.repo.references["refs/heads/main"].set_target(commit.id)
            world.repo.repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
            assert main(["apply", "--repo", str(world.repo.path)]) == 0
            capsys.readouterr()


def test_promote_on_a_url_needs_push(remote: Remote, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["promote", "dev", "v1.2", "--repo", remote.url])
    assert code == 1 and "pass --push" in capsys.readouterr().err


def test_audit_joins_history_with_apply_records(
    remote: Remote, capsys: pytest.CaptureFixture[str]
) -> None:
    world = remote.world
    assert remote.run(capsys, "apply")[0] == 0
    # a promotion merged with a merge-request reference
    code, p = remote.run(
        capsys, "promote", "dev", "v1.2", "--push", "--message", "Promote dev to v1.2 (#42)"
    )
    assert code == 0
    remote.merge(p["branch"])
    assert remote.run(capsys, "apply")[0] == 0
    # a rollback
    code, r = remote.run(capsys, "rollback", "dev", "--push")
    assert code == 0
    remote.merge(r["branch"])
    assert remote.run(capsys, "apply")[0] == 0
    # an unrelated commit and a change that is refused (a hazardous release)
    _commit_on_main(remote, {"README.md": "state of acme\n"}, "Document the state repo")
    text = remote.file("environments/dev.cue").replace('"v1.1"', '"v1.0"')
    refused = _commit_on_main(remote, {"environments/dev.cue": text}, "Try v1.0 on dev")
    assert remote.run(capsys, "apply")[0] == 1

    code, audit = remote.run(capsys, "audit", "--env", "dev")
    assert code == 0
    entries = audit["entries"]
    summary = [(e["kind"], e["from"], e["to"], e["status"]) for e in entries]
    assert summary == [
        ("promotion", "v1.1", "v1.0", "refused"),
        ("rollback", "v1.2", "v1.1", "applied"),
        ("promotion", "v1.1", "v1.2", "applied"),
        ("promotion", None, "v1.1", "applied"),
    ]
    assert entries[0]["commit"] == refused and "hazards" in entries[0]["reason"]
    assert entries[2]["mergeRequest"] == "#42"
    assert entries[1]["appliedBy"].startswith("reconciler/")
    assert all("UNVERIFIED" in how for how in entries[1]["verified"].values())
    assert entries[3]["author"] == "Test Author <author@example.org>"

    code = main(["audit", "--env", "dev", "--repo", remote.url])
    out = capsys.readouterr().out
    assert code == 0
    assert "rollback  v1.2 -> v1.1" in out and "refused" in out and "#42" in out
    assert world.tags()["dev-web"] == world.digests["v1.1"]["web"]


def _commit_on_main(remote: Remote, files: dict[str, str], message: str) -> str:
    repo = remote.repo
    head = repo.revparse_single("main").peel(pygit2.Commit)
    tree = head.tree
    for path, text in files.items():
        builder = pygit2.IndexEntry(
            path, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB
        )
        index = pygit2.Index()
        index.read_tree(tree)
        index.add(builder)
        tree = repo[index.write_tree(repo)]
    who = pygit2.Signature("Other Person", "other@example.org")
    return str(repo.create_commit("refs/heads/main", who, who, message, tree.id, [head.id]))


# --------------------------------------------------------------------------- signed commits


def test_allowed_signers_apply_signed_commits_and_refuse_unsigned_ones(
    plain_registry: RegistryServer, tmp_path: Path, cue_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.sshsign import commit_ssh_signed, commit_unsigned, new_key

    alice = new_key(tmp_path / "keys", "alice")
    mallory = new_key(tmp_path / "keys", "mallory")
    world = build_world(plain_registry.host, tmp_path)
    repo = world.repo.repo
    settings = (
        "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{world.host}": plainHTTP: true\n'
        f"\tverify: insecureSkipSignatures: true\n\t{recordkeys.SETTINGS}\n"
        '\tgit: allowedSigners: "keys/allowed_signers"\n}\n'
    )
    commit_ssh_signed(
        repo,
        alice,
        {"reconciler.cue": settings, "keys/allowed_signers": alice.allowed("alice@example.org")},
        "Require signed commits",
    )
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert all(
        "commits signed by alice@example.org" in how
        for e in result["environments"]
        for how in e["verified"].values()
    )

    # An unsigned promotion: refused, nothing moves.
    unsigned = commit_unsigned(
        repo, {"environments/dev.cue": world.env("dev", "v1.2")}, "Promote dev to v1.2"
    )
    before = world.tags()
    code, result = world.cli(capsys, "apply")
    dev = result["environments"][0]
    assert code == 1 and dev["error"]["rule"] == "commit-signature"
    assert unsigned[:10] in dev["error"]["message"]
    assert world.tags() == before

    # Signed by a key that is not allowed: refused too.
    commit_ssh_signed(repo, mallory, {"environments/staging.cue": world.env("staging", "v1.2")})
    assert world.cli(capsys, "apply")[0] == 1
    assert world.tags() == before

    # A signed revert of both by an allowed signer clears the way; a signed promotion applies.
    head = repo.revparse_single("main").peel(pygit2.Commit)
    commit_ssh_signed(
        repo,
        alice,
        {"environments/staging.cue": world.env("staging", "v1.1")},
        f"Revert staging\n\nThis reverts commit {head.id}.\n",
    )
    commit_ssh_signed(
        repo,
        alice,
        {"environments/dev.cue": world.env("dev", "v1.1")},
        f"Revert dev\n\nThis reverts commit {unsigned}.\n",
    )
    commit_ssh_signed(
        repo,
        alice,
        {"environments/dev.cue": world.env("dev", "v1.2")},
        "Promote dev to v1.2, signed",
    )
    code, result = world.cli(capsys, "apply")
    assert code == 0, result
    assert world.tags()["dev-web"] == world.digests["v1.2"]["web"]
    assert world.tags()["staging-web"] == world.digests["v1.1"]["web"]
