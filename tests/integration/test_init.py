"""`reconciler init` end to end, with the real CLI, git, cue and ssh-keygen: a new state
repository validates, refuses to apply its sample until it is signed, applies
dev/staging/prod on the OCI layout once a cosign-style key signs it, and a second init
into it is refused. With --allowed-signers the first commit is SSH-signed and a fresh
host that starts from the trust root applies it."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pygit2
import yaml

from reconciler.proposals.scaffold import ITEMS, RELEASE
from reconciler.registry import LayoutRegistry, parse_reference
from tests.support.signing import new_key, sign_legacy
from tests.support.sshsign import new_key as ssh_key
from tests.support.staterepo import ROOT

WHO = {
    "GIT_AUTHOR_NAME": "Dana Developer",
    "GIT_AUTHOR_EMAIL": "dana@example.org",
    "GIT_COMMITTER_NAME": "Dana Developer",
    "GIT_COMMITTER_EMAIL": "dana@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,  # the user's own git config plays no part
    "GIT_CONFIG_NOSYSTEM": "1",
}


def reconciler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **WHO, **(env or {})},
        check=False,
    )


def run_env(state: Path) -> dict[str, str]:
    """How a host runs the new repository: its record key and its trust root."""
    private = state / ".reconciler"
    return {
        "RECONCILER_RECORD_KEY": str(private / "records.key"),
        "RECONCILER_TRUST_ROOT": str(private / "trust-root.json"),
    }


def apply(state: Path, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
    proc = reconciler("apply", "--json", "--repo", str(state), env={**run_env(state), **env})
    result = json.loads(proc.stdout)
    return proc.returncode, {e["name"]: e for e in result["environments"]}


def sample(state: Path) -> tuple[LayoutRegistry, str, dict[str, str]]:
    """The layout init published, its repository and the sample's digests by item."""
    catalog = (state / "catalogs" / "app.cue").read_text()
    source = catalog.split('source: "')[1].split('"')[0]
    repo = parse_reference(source).repository
    store = LayoutRegistry(None)
    digests = {item: store.resolve(repo, f"{item}-{RELEASE}") for item in ITEMS}
    assert all(d and d in catalog for d in digests.values()), catalog
    return store, repo, {k: v for k, v in digests.items() if v}


def sign_sample(state: Path) -> dict[str, str]:
    """What a build pipeline does: sign each sample artifact with the builds' key."""
    store, repo, digests = sample(state)
    private, _ = KEYS
    for digest in digests.values():
        sign_legacy(store, repo, digest, private)
    return digests


KEYS = new_key()


def test_init_validates_applies_once_signed_and_refuses_a_second_init(
    tmp_path: Path, cue_bin: str
) -> None:
    signer = tmp_path / "cosign.pub"
    signer.write_text(KEYS[1])
    state = tmp_path / "state"

    made = reconciler("init", str(state), "--signer-key", str(signer))
    assert made.returncode == 0, made.stderr
    assert "next steps:" in made.stdout and "valid: 1 catalog, 3 environments" in made.stdout
    assert "PRIVATE KEY" not in made.stdout + made.stderr  # never print the key itself

    repo = pygit2.Repository(str(state))
    head = repo.references["refs/heads/main"].peel(pygit2.Commit)
    tracked = {e.path for e in repo.index}
    assert {
        "reconciler.cue",
        "catalogs/app.cue",
        "environments/dev.cue",
        "environments/staging.cue",
        "environments/prod.cue",
        "keys/records.pub",
        "keys/cosign.pub",
        ".pre-commit-config.yaml",
        ".gitignore",
    } <= tracked
    assert not any(p.startswith(".reconciler/") for p in tracked)
    assert repo.status() == {}  # everything init wrote is committed or ignored
    key = state / ".reconciler" / "records.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root = json.loads((state / ".reconciler" / "trust-root.json").read_text())
    assert root["recordKeys"] == [(state / "keys" / "records.pub").read_text()]
    assert root["allowedSigners"] is None

    valid = reconciler("validate", "--repo", str(state))
    assert valid.returncode == 0, valid.stderr
    assert "valid: 1 catalogs, 3 environments" in valid.stdout

    # Unsigned, the sample is refused: init's repository verifies what it applies.
    code, envs = apply(state)
    assert code == 1
    assert envs["dev"]["status"] == "refused" and envs["dev"]["error"]["rule"] == "signatures"
    store, layout, digests = sample(state)
    assert store.resolve(layout, "dev-web") is None

    sign_sample(state)
    code, envs = apply(state)
    assert code == 0, envs
    assert {name: e["status"] for name, e in envs.items()} == dict.fromkeys(
        ("dev", "staging", "prod"), "applied"
    )
    for env in ("dev", "staging", "prod"):
        for item, digest in digests.items():
            assert store.resolve(layout, f"{env}-{item}") == digest
        assert store.resolve(layout, f"reconciler-record.{env}") is not None

    again = reconciler("init", str(state), "--signer-key", str(signer))
    assert again.returncode == 1
    assert "is not empty" in again.stderr
    assert repo.references["refs/heads/main"].target == head.id
    assert pygit2.Repository(str(state)).status() == {}

    # The pre-commit hook is the one reconciler ships, and it catches a broken edit.
    (shipped,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (local,) = yaml.safe_load((state / ".pre-commit-config.yaml").read_text())["repos"]
    (hook,) = local["hooks"]
    for field in ("id", "entry", "files", "pass_filenames"):
        assert hook[field] == shipped[field], field
    assert re.search(hook["files"], "environments/prod.cue")
    path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    entry = shlex.split(hook["entry"])
    ran = subprocess.run(
        entry, cwd=state, capture_output=True, text=True, env={**os.environ, **path}
    )
    assert ran.returncode == 0 and ran.stdout == "", ran.stderr
    prod = state / "environments" / "prod.cue"
    prod.write_text(prod.read_text().replace(f'"{RELEASE}"', '"v9.9"'))
    ran = subprocess.run(
        entry, cwd=state, capture_output=True, text=True, env={**os.environ, **path}
    )
    assert ran.returncode == 1 and "has no release 'v9.9'" in ran.stderr


def test_init_with_allowed_signers_signs_the_first_commit_and_a_fresh_host_applies_it(
    tmp_path: Path, cue_bin: str
) -> None:
    alice = ssh_key(tmp_path / "ssh")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(alice.allowed("alice@example.org"))
    signer = tmp_path / "cosign.pub"
    signer.write_text(KEYS[1])
    state = tmp_path / "state"
    signing = {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "gpg.format",
        "GIT_CONFIG_VALUE_0": "ssh",
        "GIT_CONFIG_KEY_1": "user.signingkey",
        "GIT_CONFIG_VALUE_1": str(alice.private),
    }

    made = reconciler(
        "init", str(state), "--signer-key", str(signer), "--allowed-signers", str(allowed),
        env=signing,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "signed by   alice@example.org" in made.stdout
    root = json.loads((state / ".reconciler" / "trust-root.json").read_text())
    assert root["allowedSigners"] == allowed.read_text()
    assert 'allowedSigners: "keys/allowed_signers"' in (state / "reconciler.cue").read_text()

    sign_sample(state)
    code, envs = apply(state)
    assert code == 0, envs
    assert envs["prod"]["status"] == "applied"

    # The rule is in force from the first commit: an unsigned one on top is refused.
    dev = state / "environments" / "dev.cue"
    dev.write_text(dev.read_text().replace("dev runs", "dev (unsigned edit) runs"))
    subprocess.run(
        ["git", "-C", str(state), "commit", "-qam", "unsigned"],
        env={**os.environ, **WHO},
        check=True,
    )
    code, envs = apply(state, RECONCILER_CACHE_DIR=str(tmp_path / "fresh-host"))
    assert code == 1
    assert envs["dev"]["error"]["rule"] == "commit-signature"


def test_init_into_an_empty_git_repository_unverified_only_when_asked(
    tmp_path: Path, cue_bin: str
) -> None:
    state = tmp_path / "state"
    pygit2.init_repository(str(state), initial_head="master")

    refused = reconciler("init", str(state))
    assert refused.returncode == 1
    assert "needs the public key your builds are signed with" in refused.stderr
    assert sorted(p.name for p in state.iterdir()) == [".git"]

    made = reconciler("init", str(state), "--insecure-skip-signatures")
    assert made.returncode == 0, made.stderr
    assert "UNVERIFIED" in made.stderr
    assert "insecureSkipSignatures: true" in (state / "reconciler.cue").read_text()
    repo = pygit2.Repository(str(state))
    assert repo.head.name == "refs/heads/main"
    code, envs = apply(state)
    assert code == 0, envs
    assert envs["dev"]["status"] == "applied"
