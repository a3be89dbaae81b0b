"""The trust root and the policy in force (issue 20): each attack of the review, as a
control that works and then the attack, refused with the rule named, the registry
unchanged, and no request reaching a host that only the attacker's commit names.

Real parts: commits SSH-signed with the real ssh-keygen, a real registry, the real cue,
the real CLI. Each test's cache directory is one host (its local anchors); a fresh host
is a new cache directory.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest

from reconciler.daemon.backoff import BackoffPolicy
from reconciler.daemon.service import Daemon
from reconciler.desired import Loader
from reconciler.engine.reconcile import Reconciler
from reconciler.evidence.signing import generate
from reconciler.git import GitSource
from reconciler.model import PublicKey
from reconciler.verify.root import TrustRoot, write_trust_root
from tests.support import recordkeys
from tests.support.attack import (
    ALICE,
    SIGNERS,
    SignedWorld,
    assert_refused,
    by_name,
    require_signed_commits,
    settings_cue,
)
from tests.support.registry_servers import RegistryServer
from tests.support.signing import new_key, sign_legacy
from tests.support.sshsign import new_key as ssh_key
from tests.support.world import World, build_world

COMMITS = "commit-signature"
BOB = "bob@example.org"
RECORDS = "records"


class Listener:
    """A host only an attacker's commit names: it counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}/hook"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def attacker() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def use_trust_root(
    monkeypatch: pytest.MonkeyPatch, path: Path, signers: str | None, keys: list[str]
) -> Path:
    """This test's hosts start from a trust root (and not on first use)."""
    root = TrustRoot(
        str(path),
        signers.encode() if signers else None,
        tuple(PublicKey("root", k) for k in keys),
    )
    write_trust_root(path, root)
    monkeypatch.delenv("RECONCILER_TRUST_ON_FIRST_USE")
    monkeypatch.setenv("RECONCILER_TRUST_ROOT", str(path))
    return path


def pin_alice(monkeypatch: pytest.MonkeyPatch, signed: SignedWorld, path: Path) -> None:
    """The hosts' trust root pins alice as commit signer and the session's record key."""
    use_trust_root(monkeypatch, path, signed.alice.allowed(ALICE), [recordkeys.session_key()[1]])


def fresh_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    """Another host: a new cache directory, so no local anchor (a CI job, a new replica)."""
    cache = tmp_path / name
    monkeypatch.setenv("RECONCILER_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def rooted(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> SignedWorld:
    """Every environment applied at v1.1 at a commit alice signed; the host starts from a
    trust root pinning alice as commit signer and the session's record key."""
    world = build_world(plain_registry.host, tmp_path)
    signed = require_signed_commits(world, tmp_path / "ssh")
    pin_alice(monkeypatch, signed, tmp_path / "trust-root.json")
    code, envs = signed.apply(capsys)
    assert code == 0, envs
    return signed


def refused_everywhere(envs: dict[str, dict[str, Any]], rule: str, *named: str) -> None:
    for env in envs.values():
        assert_refused(env, rule, *named)


# --------------------------------------------------------------------------- 1. evil merge


def test_merge_taking_files_from_an_old_parent_is_not_a_clean_merge(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 1: an unsigned merge of main with a commit from before the rule takes the
    old settings (no signers), deletes the signers file and promotes dev. Every path equals
    *a* parent's, but the tree is not the clean merge of its parents: refused; and an
    unsigned promotion after it is refused too."""
    world = rooted.world
    repo = rooted.repo
    initial = str(repo.revparse_single("main~1").id)  # "initial state", before the rule
    main = str(repo.revparse_single("main").id)
    old_settings = repo.revparse_single(f"{initial}:reconciler.cue").data.decode()
    before = world.tags()

    # Control: a clean merge of a branch alice signed applies (no signature on the merge).
    branch = rooted.signed_aside({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2")
    rooted.merge(branch, "Merge branch 'dev-v1.2'")
    code, envs = rooted.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]
    main = str(repo.revparse_single("main").id)
    before = world.tags()

    evil = rooted.unsigned(
        {
            "reconciler.cue": old_settings,
            SIGNERS: None,
            "environments/staging.cue": world.env("staging", "v1.2"),
        },
        "Merge branch 'old'",
    )
    # Give the unsigned commit the two parents of an evil merge: (main, initial).
    content = repo[evil].read_raw().decode()
    merged = content.replace(f"parent {main}\n", f"parent {main}\nparent {initial}\n", 1)
    oid = repo.odb.write(pygit2.enums.ObjectType.COMMIT, merged.encode())
    repo.references.create("refs/heads/main", oid, force=True)
    code, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, str(oid))
    assert world.tags() == before
    assert code == 1

    later = rooted.unsigned({"environments/prod.cue": world.env("prod", "v1.2")}, "prod v1.2")
    code, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, str(oid), later)
    assert world.tags() == before


# --------------------------------------------------------------------------- 2. new environment


ROGUE = """package reconciler

environments: rogue: {
\tcatalog: "example.org/acme/shop"
\trelease: "v1.2"
\ttarget: {repository: "%s/elsewhere/app", tag: "stable-{item}"}
\tverify: insecureSkipSignatures: true
}
"""


def test_a_new_environment_is_judged_from_the_policy_in_force(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 2a: an unsigned file adds an environment writing another repository's tag;
    alice then signs an unrelated commit on top. The new environment is judged from the
    policy in force, like every other: refused, and the other repository stays empty."""
    world = rooted.world
    before = world.tags()
    rogue = rooted.unsigned({"environments/zz.cue": ROGUE % world.host}, "add zz")
    code, envs = rooted.apply(capsys)
    assert_refused(envs["rogue"], COMMITS, rogue)
    assert world.tags() == before
    rooted.signed({"docs/README.md": "hello"}, "docs")
    code, envs = rooted.apply(capsys)
    assert_refused(envs["rogue"], COMMITS, rogue)
    assert code == 1
    assert world.tags() == before
    assert world.tags("elsewhere/app") == {}


def test_one_unsigned_commit_cannot_remove_the_rule_on_a_fresh_host(
    rooted: SignedWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Attack 2b: one unsigned commit adds ``rogue`` and removes allowedSigners. A host
    with no anchor starts from the trust root, not from the commit it judges."""
    world = rooted.world
    commit = rooted.unsigned(
        {
            "environments/zz.cue": ROGUE % world.host,
            "reconciler.cue": settings_cue(world.host, rooted.verify, signers=None),
            SIGNERS: None,
        },
        "add zz, no more signing",
    )
    fresh_host(monkeypatch, tmp_path, "fresh")
    before = world.tags()
    code, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, commit)
    assert world.tags() == before
    assert world.tags("elsewhere/app") == {}
    assert code == 1


def test_a_fresh_host_starts_from_the_newest_commit_the_trust_root_signed(
    rooted: SignedWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Control for first contact: main ends in an unsigned clean merge of a branch alice
    signed; a fresh host starts from alice's newest mainline commit and applies."""
    world = rooted.world
    branch = rooted.signed_aside({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2")
    rooted.merge(branch, "Merge branch 'dev-v1.2'")
    fresh_host(monkeypatch, tmp_path, "fresh")
    code, envs = rooted.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]
    assert code == 0
    assert envs["dev"]["receipt"]["trust"].startswith("trust root")


# --------------------------------------------------------------------------- rotation


def test_a_signed_rotation_takes_effect_where_it_lands(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Alice adds bob to the signers and bob promotes dev, both in one fetch: applied
    (each step is judged by the policy of the step before). Then alice rotates herself
    out; her next promotion is refused."""
    world = rooted.world
    bob = ssh_key(tmp_path / "ssh", "bob")
    rooted.signed({SIGNERS: rooted.alice.allowed(ALICE) + bob.allowed(BOB)}, "add bob")
    rooted.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2", by=bob)
    code, envs = rooted.apply(capsys)
    assert envs["dev"]["status"] == "applied", envs["dev"]
    assert code == 0

    rooted.signed({SIGNERS: bob.allowed(BOB)}, "alice hands over to bob")
    before = world.tags()
    late = rooted.signed({"environments/staging.cue": world.env("staging", "v1.2")}, "staging")
    code, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, late)
    assert world.tags() == before


# --------------------------------------------------------------------------- 3. rule turned on


def test_a_rule_turned_on_while_in_sync_is_in_force_at_once(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack 3: alice's signed commit adds allowedSigners while every environment is in
    sync (no record is written); the next unsigned promotion is refused all the same."""
    world = build_world(plain_registry.host, tmp_path)
    use_trust_root(monkeypatch, tmp_path / "root.json", None, [recordkeys.session_key()[1]])
    code, _ = world.cli(capsys, "apply")
    assert code == 0
    signed = require_signed_commits(world, tmp_path / "ssh")
    code, envs = signed.apply(capsys)
    assert code == 0 and all(e["status"] == "in-sync" for e in envs.values()), envs
    before = world.tags()
    promotion = signed.unsigned({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2")
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, promotion)
    assert world.tags() == before


# --------------------------------------------------------------------------- 4. registry settings


def test_hosts_and_settings_of_an_unjudged_commit_get_no_request(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str], attacker: Listener
) -> None:
    """Attack 4: an unsigned commit points dev at a host of its own over plain HTTP and
    flips the TLS settings of the real registry. Nothing reaches that host; the real
    registry is still read with the settings in force (drift is corrected there)."""
    world = rooted.world
    before = world.tags()
    cue = (
        "package reconciler\n\nsettings: {\n"
        f'\tregistries: "{world.host}": plainHTTP: false\n'
        f'\tregistries: "{attacker.host}": plainHTTP: true\n'
        f"\tverify: {rooted.verify}\n\t{recordkeys.SETTINGS}\n"
        f'\tgit: allowedSigners: "{SIGNERS}"\n}}\n'
    )
    dev = world.env("dev", "v1.2", f'\n\ttarget: repository: "{attacker.host}/shop"')
    commit = rooted.unsigned(
        {"reconciler.cue": cue, "environments/dev.cue": dev}, "mirror dev elsewhere"
    )
    _, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, commit)
    assert attacker.connections == 0
    assert world.tags() == before


@pytest.mark.parametrize("command", [["plan"], ["status"], ["audit"], ["apply", "--dry-run"]])
def test_no_command_sends_a_request_to_a_host_of_an_unjudged_commit(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str], attacker: Listener, command: list[str]
) -> None:
    """Read-only commands judge first too: the catalog source and target an unsigned
    commit names are never contacted."""
    world = rooted.world
    catalog = rooted.repo.revparse_single("main:catalogs/shop.cue").data.decode()
    rooted.unsigned(
        {
            "catalogs/shop.cue": catalog.replace(
                f"{world.host}/{world.source}", f"{attacker.host}/shop"
            ),
            "environments/dev.cue": world.env(
                "dev", "v1.2", f'\n\ttarget: repository: "{attacker.host}/x"'
            ),
        },
        "move the shop",
    )
    before = world.tags()
    world.cli(capsys, *command)
    assert attacker.connections == 0
    assert world.tags() == before


# --------------------------------------------------------------------------- 5. fresh host


def retag(world: World, digest: str, tag: str) -> None:
    """What anyone with push to the registry can do: point ``tag`` at ``digest``."""
    manifest = world.registry.get_manifest(world.source, digest)
    world.registry.put_manifest(world.source, tag, manifest.data, manifest.media_type)


def test_a_fresh_host_refuses_a_replayed_record_head(
    rooted: SignedWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Attack 5a: the dev head is re-tagged to an older, validly signed record. A host
    with a local anchor refuses the rewind; a fresh host finds the newer record that
    chains past it among the history tags and refuses the replay."""
    world = rooted.world
    old = world.registry.resolve(world.source, "reconciler-record.dev")
    assert old is not None
    rooted.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2")
    code, envs = rooted.apply(capsys)
    assert envs["dev"]["status"] == "applied"
    retag(world, old, "reconciler-record.dev")
    before = world.tags()

    code, envs = rooted.apply(capsys)  # this host has an anchor
    assert_refused(envs["dev"], RECORDS)
    assert world.tags() == before
    fresh_host(monkeypatch, tmp_path, "fresh")
    code, envs = rooted.apply(capsys)
    assert_refused(envs["dev"], RECORDS)
    assert "replay" in envs["dev"]["error"]["message"]
    assert code == 1
    assert world.tags() == before

    unsigned = rooted.unsigned({"environments/dev.cue": world.env("dev", "v1.1")}, "roll back")
    fresh_host(monkeypatch, tmp_path, "fresh2")
    code, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, unsigned)
    assert "replay" in envs["dev"]["transition"]  # and what is wrong at the commit in force
    assert world.tags() == before


def test_record_keys_come_from_the_trust_root_not_the_commit_judged(
    rooted: SignedWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Attack 5b: one unsigned commit adds the attacker's key to settings.records.keys and
    the dev head is a record the attacker signed: on a fresh host, refused."""
    world = rooted.world
    private, public = generate(tmp_path / "evil.key")
    cue = settings_cue(world.host, rooted.verify).replace(
        f'keys: ["{recordkeys.RECORDS_PUB}"]',
        f'keys: ["{recordkeys.RECORDS_PUB}", "keys/evil.pub"]',
    )
    commit = rooted.unsigned(
        {"reconciler.cue": cue, "keys/evil.pub": public.read_text()}, "another key"
    )
    fresh_host(monkeypatch, tmp_path, "fresh")
    monkeypatch.setenv("RECONCILER_RECORD_KEY", str(private))
    before = world.tags()
    _, envs = rooted.apply(capsys)
    refused_everywhere(envs, COMMITS, commit)
    assert world.tags() == before


# --------------------------------------------------------------------------- 6. notifications


def test_notification_receivers_come_from_the_policy_in_force(
    rooted: SignedWorld, tmp_path: Path, attacker: Listener
) -> None:
    """Attack 6: an unsigned commit names the attacker's receiver in settings.notify;
    the daemon keeps telling the receivers of the policy in force."""
    world = rooted.world
    team = "http://127.0.0.1:9/team"
    rooted.signed(
        {"reconciler.cue": settings_cue(world.host, rooted.verify) + _notify(team)}, "notify"
    )
    daemon = _daemon(world)
    assert daemon._load(0.0, True) is not None
    assert [t.url for t in daemon.notifier.targets] == [team]

    rooted.unsigned(
        {"reconciler.cue": settings_cue(world.host, rooted.verify) + _notify(attacker.url)},
        "notify me instead",
    )
    state = daemon._load(1.0, True)
    assert state is not None and state.commit != str(rooted.repo.revparse_single("main").id)
    assert [t.url for t in daemon.notifier.targets] == [team]


def _notify(url: str) -> str:
    return f'\nsettings: notify: [{{url: "{url}"}}]\n'


def _daemon(world: World) -> Daemon:
    reconciler = Reconciler(
        GitSource(str(world.repo.path), world.cache),
        Loader(world.cache),
        trust_root=TrustRoot.load(Path(os.environ["RECONCILER_TRUST_ROOT"])),
    )
    return Daemon(reconciler, BackoffPolicy())


# --------------------------------------------------------------------------- 7. planted file


def test_a_planted_file_cannot_become_policy_later(
    plain_registry: RegistryServer,
    tmp_path: Path,
    cue_bin: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack 7: unsigned U adds keys/ci.pub (the attacker's cosign key, an input of
    nothing). Alice later signs "verify.keys += keys/ci.pub" and promotes dev to a release
    only the attacker signed: U is in the trail, unsigned and not undone: refused."""
    team, team_pem = new_key()
    evil, evil_pem = new_key()
    world = build_world(
        plain_registry.host,
        tmp_path,
        extra_files={"keys/cosign.pub": team_pem},
        verify='keys: ["keys/cosign.pub"]',
    )
    for digest in world.digests["v1.1"].values():
        sign_legacy(world.registry, world.source, digest, team)
    for digest in world.digests["v1.2"].values():
        sign_legacy(world.registry, world.source, digest, evil)
    signed = require_signed_commits(world, tmp_path / "ssh", verify='keys: ["keys/cosign.pub"]')
    pin_alice(monkeypatch, signed, tmp_path / "root.json")
    code, envs = signed.apply(capsys)
    assert code == 0, envs
    before = world.tags()

    planted = signed.unsigned({"keys/ci.pub": evil_pem}, "add CI key (unused)")
    code, envs = signed.apply(capsys)
    refused_everywhere(envs, COMMITS, planted)
    policy = 'keys: ["keys/cosign.pub", "keys/ci.pub"]'
    signed.signed(
        {
            "reconciler.cue": settings_cue(world.host, policy),
            "environments/dev.cue": world.env("dev", "v1.2"),
        },
        "trust the CI key; dev v1.2",
    )
    code, envs = signed.apply(capsys)
    assert_refused(envs["dev"], COMMITS, planted)
    assert world.tags() == before


# --------------------------------------------------------------------------- 8. drift


def test_a_refused_commit_freezes_promotion_not_repair(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack 8: prod-web is re-tagged by hand to the hazardous v1.0 digest and an
    unsigned comment lands on main. Prod is refused, and prod-web is restored anyway."""
    world = rooted.world
    good = world.tags()["prod-web"]
    hazardous = world.digests["v1.0"]["web"]
    retag(world, hazardous, "prod-web")
    comment = rooted.unsigned(
        {"environments/prod.cue": world.env("prod", "v1.1") + "// a comment\n"}, "comment"
    )
    code, envs = rooted.apply(capsys)
    assert_refused(envs["prod"], COMMITS, comment)
    assert "drift corrected" in envs["prod"]["transition"]
    assert world.tags()["prod-web"] == good
    assert code == 1


# --------------------------------------------------------------------------- 11. read-only


@pytest.mark.parametrize("command", [["plan"], ["status"], ["apply", "--dry-run"]])
def test_read_only_commands_write_no_anchor(
    rooted: SignedWorld,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: list[str],
) -> None:
    """Attack 11: status, plan and apply --dry-run say they write nothing: no anchor
    either (a later apply must not trust what a dry run merely looked at)."""
    world = rooted.world
    rooted.signed({"environments/dev.cue": world.env("dev", "v1.2")}, "dev v1.2")
    cache = fresh_host(monkeypatch, tmp_path, "readonly")
    _, result = world.cli(capsys, *command)
    assert "environments" in result, result
    anchors = cache / "anchors"
    assert not anchors.exists() or not any(anchors.iterdir())


# --------------------------------------------------------------------------- the sweep


def _sweep_cases(
    world: World, signed: SignedWorld, attacker: Listener
) -> dict[str, dict[str, Any]]:
    """Every settings field and every kind of input file, changed by one unsigned commit."""
    host, verify = world.host, signed.verify

    def settings(extra: str = "", *, records: str = recordkeys.SETTINGS) -> str:
        return (
            "package reconciler\n\nsettings: {\n"
            f'\tregistries: "{host}": plainHTTP: true\n'
            f"\tverify: {verify}\n\t{records}\n"
            f'\tgit: allowedSigners: "{SIGNERS}"\n{extra}}}\n'
        )

    pem = recordkeys.session_key()[1]
    return {
        "registries: a new host": {
            "reconciler.cue": settings(f'\tregistries: "{attacker.host}": plainHTTP: true\n'),
            "environments/dev.cue": world.env(
                "dev", "v1.2", f'\n\ttarget: repository: "{attacker.host}/x"'
            ),
        },
        "registries: concurrency and attempts": {
            "reconciler.cue": settings(f'\tregistries: "{host}": {{concurrency: 1, attempts: 1}}\n')
        },
        "registries: caFile": {
            "reconciler.cue": settings(f'\tregistries: "{host}": caFile: "keys/ca.pem"\n'),
            "keys/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        },
        "verify: skip signatures": {
            "reconciler.cue": settings().replace(verify, "insecureSkipSignatures: true"),
        },
        "records: another key": {
            "reconciler.cue": settings(records='records: keys: ["keys/other.pub"]'),
            "keys/other.pub": pem,
        },
        "records: insecureUnsigned": {
            "reconciler.cue": settings(records="records: insecureUnsigned: true"),
        },
        "git: no rule": {
            "reconciler.cue": settings().replace(f'\tgit: allowedSigners: "{SIGNERS}"\n', "")
        },
        "git: unsignedPaths": {
            "reconciler.cue": settings('\tgit: unsignedPaths: ["docs/**"]\n'),
        },
        "git: the signers file": {SIGNERS: signed.mallory.allowed("mallory@example.org")},
        "notify: the attacker's receiver": {
            "reconciler.cue": settings(f'\tnotify: [{{url: "http://{attacker.host}/hook"}}]\n'),
        },
        "catalogs: another source": {
            "catalogs/shop.cue": signed.repo.revparse_single("main:catalogs/shop.cue")
            .data.decode()
            .replace(f"{host}/{world.source}", f"{attacker.host}/shop"),
        },
        "environments: a new one": {"environments/zz.cue": ROGUE % attacker.host},
        "environments: hazards allowed": {
            "environments/dev.cue": world.env("dev", "v1.0", "\n\tallowHazards: true"),
        },
        "keys: a record key replaced": {recordkeys.RECORDS_PUB: _other_pem()},
        "cue.mod: a module": {
            "cue.mod/module.cue": 'module: "x.example/evil@v0"\nlanguage: version: "v0.17.1"\n'
        },
        "docs: a file nothing reads": {"docs/README.md": "hello"},
    }


def _other_pem() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        _, public = generate(Path(tmp) / "k")
        return public.read_text()


SWEEP = [
    "registries: a new host",
    "registries: concurrency and attempts",
    "registries: caFile",
    "verify: skip signatures",
    "records: another key",
    "records: insecureUnsigned",
    "git: no rule",
    "git: unsignedPaths",
    "git: the signers file",
    "notify: the attacker's receiver",
    "catalogs: another source",
    "environments: a new one",
    "environments: hazards allowed",
    "keys: a record key replaced",
    "cue.mod: a module",
    "docs: a file nothing reads",
]


@pytest.mark.parametrize("case", SWEEP)
def test_an_unsigned_change_to_any_input_has_no_effect(
    rooted: SignedWorld, capsys: pytest.CaptureFixture[str], attacker: Listener, case: str
) -> None:
    """For every settings field and kind of file: one unsigned commit changing it moves
    nothing, sends nothing to a new host, and every environment says it is refused."""
    world = rooted.world
    files = _sweep_cases(world, rooted, attacker)[case]
    before = world.tags()
    commit = rooted.unsigned(files, f"unsigned: {case}")
    code, envs = rooted.apply(capsys)
    for name in ("dev", "staging", "prod"):
        assert_refused(envs[name], COMMITS, commit)
    assert attacker.connections == 0
    assert world.tags() == before
    assert code == 1
    assert json.dumps(by_name({"environments": list(envs.values())}))  # renders as JSON
