"""``reconciler init``: a state repository that works from its first commit.

A newcomer should not copy ``examples/quickstart`` by hand and guess which parts are
the example's. :func:`init` writes the smallest repository that shows every moving part
(settings, one catalog, dev -> staging -> prod, keys, a trust root, a pre-commit hook),
commits it on ``main`` and validates that commit the way ``reconciler validate`` does.

What must never be committed stays out of git: the record-signing private key and the
trust root go to ``.reconciler/`` (gitignored) unless flags put them elsewhere. The
default catalog source is an OCI layout under ``.reconciler/oci/`` holding one small
sample artifact, so the sample release names digests that exist: sign them with the
builds' key and ``apply`` works with no registry at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives import serialization

from reconciler.desired import Loader, cue_command
from reconciler.engine.reconcile import Reconciler
from reconciler.errors import Stalled
from reconciler.evidence.signing import generate
from reconciler.git import GitSource, default_cache_dir
from reconciler.model import DesiredState, PublicKey
from reconciler.registry import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    LayoutRegistry,
    parse_reference,
    sha256_digest,
)
from reconciler.verify.commits import verify_commit
from reconciler.verify.root import ROOT_ENV, TrustRoot, write_trust_root

PRIVATE = ".reconciler"  # gitignored: the record key, the trust root, the sample layout
CATALOG = "example.org/team/app"
RELEASE = "v0.1.0"
ITEMS = ("web", "worker")
SAMPLE_TYPE = "application/vnd.reconciler.sample.v1"
PLACEHOLDER = "sha256:" + "0" * 64
MAX_KEY_BYTES = 64 << 10
# The hook the project ships in .pre-commit-hooks.yaml, as a local hook: it runs the
# reconciler already installed, so it works offline and before any release is tagged.
PRE_COMMIT = """\
# Validate the desired state before every commit: pip install pre-commit && pre-commit install
# (the hook reconciler ships in .pre-commit-hooks.yaml, run with the installed reconciler;
# or use it as a remote hook: repo: <reconciler's git URL>, rev: <a tag>).
repos:
  - repo: local
    hooks:
      - id: reconciler-validate
        name: reconciler validate
        entry: reconciler validate --worktree --quiet
        language: system
        pass_filenames: false
        files: '{files}'
""".format(
    files=r"(^|/)(reconciler\.(cue|json)|(catalogs|environments)/.+\.(cue|json)"
    r"|keys/.+|cue\.mod/.+)$"
)


UNVERIFIED = (
    "--insecure-skip-signatures: this repository applies artifacts nobody signed "
    "(insecureSkipSignatures, shown as UNVERIFIED); add your builds' key to verify.keys "
    "and the catalog's signers before it runs anything that matters"
)


class InitRefused(Stalled):
    """``init`` will not write here, or with these inputs; nothing was written."""


@dataclass(frozen=True)
class InitOptions:
    """What ``reconciler init`` was asked for; ``None`` paths take the defaults under
    ``DIR/.reconciler/``."""

    directory: Path
    source: str | None = None  # None: an OCI layout with sample artifacts in .reconciler/
    signer_key: Path | None = None  # the builds' cosign public key
    insecure_skip_signatures: bool = False
    record_key: Path | None = None
    trust_root: Path | None = None
    allowed_signers: Path | None = None


@dataclass(frozen=True)
class Created:
    """What :func:`init` made: enough for the next-steps message and for tests."""

    directory: Path
    commit: str
    source: str
    sample: dict[str, str]  # item -> digest: the sample release's items
    record_key: Path
    trust_root: Path
    signed_by: str | None  # the allowed signer of the initial commit, with --allowed-signers
    state: DesiredState


def init(options: InitOptions) -> Created:
    """Write, commit and validate a state repository in ``options.directory``.

    Every input is checked before anything is written, so a refusal leaves the
    directory as it was.

    Raises:
        InitRefused: the directory is not empty, a key file is unusable, an output
            exists, or ``cue``/``git`` is missing.
        Stalled: git could not commit (no identity, signing failed), or the commit does
            not validate (then the directory is left for inspection).
    """
    directory = options.directory.resolve()
    existing_repo = _check_directory(directory)
    private = directory / PRIVATE
    record_key = (options.record_key or private / "records.key").resolve()
    trust_root = (options.trust_root or private / "trust-root.json").resolve()
    for path, what in ((record_key, "--record-key"), (trust_root, "--write-trust-root")):
        _check_outside_git(path, directory, what)
    for path in (record_key, record_key.with_name(record_key.name + ".pub"), trust_root):
        if path.exists():
            raise InitRefused(f"{path} exists", "init never overwrites a key or a trust root")
    signer = _read_public_key(options.signer_key) if options.signer_key else None
    if signer is not None and options.insecure_skip_signatures:
        raise InitRefused("--signer-key and --insecure-skip-signatures contradict each other")
    if signer is None and not options.insecure_skip_signatures:
        raise InitRefused(
            "init needs the public key your builds are signed with",
            "pass --signer-key cosign.pub (cosign generate-key-pair makes a pair), or "
            "--insecure-skip-signatures to accept unsigned artifacts knowingly",
        )
    signers = _read_allowed_signers(options.allowed_signers) if options.allowed_signers else None
    for tool, hint in (
        (cue_command(), "run `make setup` (it builds cue), or set RECONCILER_CUE"),
        ("git", "install git"),
    ):
        if shutil.which(tool) is None:
            raise InitRefused(f"{tool} not found on PATH", hint)
    source = options.source or f"oci:{private / 'oci' / 'app'}"
    try:
        parse_reference(source)
    except Stalled as exc:
        raise InitRefused(f"--source {source}: {exc.message}", exc.hint) from None

    # Inputs are good: write.
    private.mkdir(parents=True, exist_ok=True)
    record_key.parent.mkdir(parents=True, exist_ok=True)
    trust_root.parent.mkdir(parents=True, exist_ok=True)
    _, record_pub = generate(record_key)
    pub_pem = record_pub.read_text(encoding="utf-8")
    write_trust_root(trust_root, TrustRoot(str(trust_root), signers, (PublicKey("", pub_pem),)))
    sample = (
        _publish_sample(source) if options.source is None else dict.fromkeys(ITEMS, PLACEHOLDER)
    )
    files = _files(source, sample, pub_pem, signer, signers, options.source is None)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    commit = _commit(directory, existing_repo, sign=signers is not None)

    # Validate the commit as `reconciler validate` does, and its signature as apply will.
    cache = default_cache_dir()
    reconciler = Reconciler(GitSource(str(directory), cache_dir=cache), Loader(cache))
    try:
        state = reconciler.load()
        signed_by = (
            verify_commit(reconciler.history, commit, signers) if signers is not None else None
        )
    except Stalled as exc:
        raise Stalled(
            f"init wrote {directory} (commit {commit[:12]}), but it does not validate: "
            f"{exc.message}",
            exc.hint or "fix what is named and commit; or remove the directory and init again",
        ) from None
    return Created(directory, commit, source, sample, record_key, trust_root, signed_by, state)


def next_steps(created: Created) -> str:
    """What to do after ``init``, with the paths it chose; names no secret's content."""
    repo = created.directory
    sample = PLACEHOLDER not in created.sample.values()  # real artifacts in a local layout
    lines = [
        f"created a state repository in {repo} (main at {created.commit[:12]}, valid: "
        f"{len(created.state.catalogs)} catalog, {len(created.state.environments)} environments)",
        f"  record key  {created.record_key} (private; never commit it)",
        f"  trust root  {created.trust_root} (give it to every host that runs the reconciler)",
    ]
    if created.signed_by:
        lines.append(f"  signed by   {created.signed_by} (settings.git.allowedSigners is on)")
    lines += [
        "",
        "next steps:",
        f"  export RECONCILER_RECORD_KEY={created.record_key} {ROOT_ENV}={created.trust_root}",
        f"  cd {repo} && reconciler validate && reconciler plan",
    ]
    if sample:
        lines.append(
            f"  the sample artifacts ({', '.join(created.sample)}) in {created.source} are "
            "unsigned: apply refuses them until your builds' key signs them"
        )
    lines += [
        "  point catalogs/app.cue's source at your registry, then add a release from signed "
        f"tags: reconciler release add {CATALOG} v0.2.0 "
        + " ".join(f"{item}=TAG" for item in created.sample),
        "  promote by merge request: reconciler promote dev v0.2.0 (then staging, then prod)",
        "  keep the repository valid on every commit: pre-commit install "
        "(.pre-commit-config.yaml runs reconciler validate)",
        "  push it to your forge and point `reconciler run --repo URL` at it (docs/daemon.md)",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def _check_directory(directory: Path) -> bool:
    """Refuse a non-empty directory, except an empty git repository (no commits):
    ``True`` when it is one."""
    if not directory.exists():
        return False
    if not directory.is_dir():
        raise InitRefused(f"{directory} is not a directory")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return False
    if entries == [".git"]:
        try:
            empty = pygit2.Repository(str(directory)).is_empty
        except pygit2.GitError:
            empty = False
        if empty:
            return True
    shown = ", ".join(entries[:5]) + (" …" if len(entries) > 5 else "")
    raise InitRefused(
        f"{directory} is not empty ({shown})",
        "init writes a new state repository: name a new or empty directory "
        "(an empty git repository, with no commits, is fine)",
    )


def _check_outside_git(path: Path, directory: Path, flag: str) -> None:
    """A secret or a trust root inside the repository must be where .gitignore keeps it."""
    if path.is_relative_to(directory) and not path.is_relative_to(directory / PRIVATE):
        raise InitRefused(
            f"{flag} {path} is inside the repository, where it would be committed",
            f"put it outside {directory}, or under {directory / PRIVATE} (gitignored)",
        )


def _read_public_key(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise InitRefused(f"{path}: too large for a public key")
        pem = path.read_text(encoding="utf-8")
        serialization.load_pem_public_key(pem.encode())
    except OSError as exc:
        raise InitRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise InitRefused(
            f"{path} is not a PEM public key",
            "pass the public half (cosign.pub), never the private key",
        ) from None
    return pem


def _read_allowed_signers(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InitRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    if not any(line.strip() and not line.startswith(b"#") for line in data.splitlines()):
        raise InitRefused(
            f"{path} lists no signers",
            'write lines like `alice@example.org namespaces="git" ssh-ed25519 AAAA...`',
        )
    return data


# --------------------------------------------------------------------------- writing


def _publish_sample(source: str) -> dict[str, str]:
    """One tiny artifact per item in the layout: real digests for the sample release."""
    repo = parse_reference(source).repository
    store = LayoutRegistry(None)
    store.put_blob(repo, sha256_digest(EMPTY_JSON), len(EMPTY_JSON), [EMPTY_JSON])
    digests = {}
    for item in ITEMS:
        layer = f"sample {item} {RELEASE} from reconciler init: replace with your build\n"
        data = layer.encode()
        store.put_blob(repo, sha256_digest(data), len(data), [data])
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SAMPLE_TYPE,
            "config": {
                "mediaType": OCI_EMPTY,
                "digest": sha256_digest(EMPTY_JSON),
                "size": len(EMPTY_JSON),
            },
            "layers": [
                {"mediaType": "text/plain", "digest": sha256_digest(data), "size": len(data)}
            ],
            "annotations": {"org.opencontainers.image.title": item},
        }
        body = json.dumps(manifest, indent=2).encode()
        digests[item] = store.put_manifest(repo, f"{item}-{RELEASE}", body, OCI_MANIFEST)
    return digests


def _files(
    source: str,
    sample: dict[str, str],
    record_pub: str,
    signer: str | None,
    signers: bytes | None,
    local: bool,
) -> dict[str, str]:
    """The repository's files, by path."""
    verify = (
        'verify: keys: ["keys/cosign.pub"]'
        if signer
        else "// UNVERIFIED: no signer key was given to init; add verify.keys and remove this\n"
        "\tverify: insecureSkipSignatures: true"
    )
    git = (
        "\t// Every commit must be SSH-signed by one of these (see docs/trust.md).\n"
        '\tgit: allowedSigners: "keys/allowed_signers"\n'
        if signers
        else ""
    )
    files = {
        ".gitignore": f"# The record key, the trust root and the sample layout: never committed.\n"
        f"/{PRIVATE}/\n",
        "reconciler.cue": "package reconciler\n\n"
        "// Settings for every environment. Credentials never live here: they come from\n"
        "// Docker's config.json ($DOCKER_CONFIG) on the machine that runs the reconciler.\n"
        "settings: {\n"
        f"\t{verify}\n"
        "\t// Apply records count only when signed by one of these keys (requires and prune\n"
        "\t// trust them). The private key is outside git: RECONCILER_RECORD_KEY.\n"
        '\trecords: keys: ["keys/records.pub"]\n'
        f"{git}"
        "}\n",
        "catalogs/app.cue": _catalog(source, sample, signer is not None, local),
        "environments/dev.cue": _environment(
            "dev", "dev runs a release as soon as its merge request lands."
        ),
        "environments/staging.cue": _environment(
            "staging", "staging takes only what dev already runs.", requires="dev"
        ),
        "environments/prod.cue": _environment(
            "prod",
            "prod takes only what staging already runs; roll back with `git revert`.",
            requires="staging",
        ),
        "keys/records.pub": record_pub,
        ".pre-commit-config.yaml": PRE_COMMIT,
    }
    if signer:
        files["keys/cosign.pub"] = signer
    if signers:
        files["keys/allowed_signers"] = signers.decode("utf-8", "replace")
    return files


def _catalog(source: str, sample: dict[str, str], signed: bool, local: bool) -> str:
    items = "\n".join(f'\t\t\t\t{item}:{" " * (7 - len(item))}"{d}"' for item, d in sample.items())
    why = (
        "// The sample release names the sample artifacts init put in the local OCI layout\n"
        "// (.reconciler/, not committed); add your own with `reconciler release add`."
        if local
        else "// PLACEHOLDER digests: replace this release with `reconciler release add` from\n"
        "// your signed builds before the first apply."
    )
    signers = (
        'signers: keys: ["keys/cosign.pub"]'
        if signed
        else "signers: insecureSkipSignatures: true // UNVERIFIED"
    )
    return (
        "package reconciler\n\n"
        "// One catalog: the releases of one authoring party, in one source repository.\n"
        f"{why}\n"
        f'catalogs: "{CATALOG}": {{\n'
        f'\tsource: "{source}"\n'
        f"\t{signers}\n"
        "\treleases: [\n"
        "\t\t{\n"
        f'\t\t\tname: "{RELEASE}"\n'
        "\t\t\titems: {\n"
        f"{items}\n"
        "\t\t\t}\n"
        "\t\t},\n"
        "\t]\n"
        "}\n"
    )


def _environment(name: str, why: str, requires: str | None = None) -> str:
    lines = [
        f'\tcatalog:  "{CATALOG}"',
        f'\trelease:  "{RELEASE}"',
    ]
    if requires:
        lines.append(f'\trequires: ["{requires}"]')
    return (
        f"package reconciler\n\n// {why}\nenvironments: {name}: {{\n" + "\n".join(lines) + "\n}\n"
    )


def _commit(directory: Path, existing: bool, sign: bool) -> str:
    """The initial commit on ``main`` with the git CLI, so the user's identity and signing
    configuration apply (``-S`` when commits must be signed)."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(directory), *args], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-3:]
            raise Stalled(
                f"git {args[0]} failed in {directory}: {' '.join(detail)}",
                "configure git (user.name, user.email; to sign: gpg.format ssh and "
                "user.signingkey) and remove the directory, then init again",
            )
        return proc.stdout.strip()

    if existing:
        git("symbolic-ref", "HEAD", "refs/heads/main")
    else:
        git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", *(["-S"] if sign else []), "-m", "Start the state repository")
    return git("rev-parse", "HEAD")


__all__ = ["Created", "InitOptions", "InitRefused", "init", "next_steps"]
