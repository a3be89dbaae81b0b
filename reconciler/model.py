"""Frozen value types shared by every step of the pipeline.

Parsed once at the boundary (desired.py), never mutated afterwards. Defaults live
here, in one place: an environment's tag template, hazards, suspend and prune.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from reconciler.fencing import Term

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DEFAULT_TAG_TEMPLATE = "{env}-{item}"
TEMPLATE_FIELDS = ("env", "item", "release")


def frozen_map(items: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only copy, so frozen dataclasses stay frozen all the way down."""
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True)
class Identity:
    """A Sigstore keyless signer: the OIDC issuer and the subject, each exact or by an
    anchored regexp, and optionally certificate claims that must all hold.

    Each field is one of cosign's ``--certificate-*`` flags (README: Signatures).
    """

    issuer: str | None = None  # --certificate-oidc-issuer
    subject: str | None = None  # --certificate-identity
    subject_regexp: str | None = None  # --certificate-identity-regexp (anchored)
    issuer_regexp: str | None = None  # --certificate-oidc-issuer-regexp (anchored)
    github_workflow_repository: str | None = None  # --certificate-github-workflow-repository
    github_workflow_ref: str | None = None  # --certificate-github-workflow-ref
    github_workflow_trigger: str | None = None  # --certificate-github-workflow-trigger
    github_workflow_sha: str | None = None  # --certificate-github-workflow-sha
    github_workflow_name: str | None = None  # --certificate-github-workflow-name
    build_signer_uri: str | None = None  # Fulcio's Build Signer URI (1.3.6.1.4.1.57264.1.9)


@dataclass(frozen=True)
class AttestationRule:
    """An attestation the policy requires: an in-toto statement of ``predicate_type`` about
    the digest, signed under the policy's keys or identities. For SLSA provenance,
    ``builder_id`` and ``build_type`` must match exactly when set."""

    predicate_type: str
    builder_id: str | None = None
    build_type: str | None = None


@dataclass(frozen=True)
class PublicKey:
    """A cosign public key: where it was named (file path or 'inline') and its PEM."""

    source: str
    pem: str


@dataclass(frozen=True)
class Policy:
    """How signatures must be verified. Empty (no keys, identities or opt-out) = refused."""

    keys: tuple[PublicKey, ...] = ()
    identities: tuple[Identity, ...] = ()
    trusted_root: str | None = None
    trusted_root_json: str | None = None
    insecure_skip_signatures: bool = False
    # Key signatures without a transparency-log entry (cosign --insecure-ignore-tlog):
    # only meaningful with a trusted root, which otherwise makes the entry mandatory.
    insecure_ignore_tlog: bool = False
    signatures_repository: str | None = None  # signatures.repository (COSIGN_REPOSITORY)
    attestations: tuple[AttestationRule, ...] = ()

    @property
    def empty(self) -> bool:
        """Names no key, no identity and no opt-out: it could accept nothing, so validation
        refuses it and verification never treats it as satisfied."""
        return not (self.keys or self.identities or self.insecure_skip_signatures)

    def describe(self) -> str:
        """The policy in a few words (``1 key + 2 attestations``), for status and refusals."""
        if self.insecure_skip_signatures:
            return "UNVERIFIED (insecureSkipSignatures)"
        parts = []
        if self.keys:
            parts.append(f"{len(self.keys)} key{'s' if len(self.keys) != 1 else ''}")
        if self.identities:
            n = len(self.identities)
            parts.append(f"{n} identit{'ies' if n != 1 else 'y'}")
        if self.attestations:
            n = len(self.attestations)
            parts.append(f"{n} attestation{'s' if n != 1 else ''}")
        if self.insecure_ignore_tlog:
            parts.append("TLOG IGNORED (insecureIgnoreTlog)")
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class RegistryEntry:
    """One host's ``settings.registries`` entry as a commit states it; unset values take the
    registry layer's defaults (:func:`reconciler.engine.reconcile.registry_settings`)."""

    plain_http: bool = False
    ca_file: str | None = None  # a path in the state repository
    ca_data: bytes | None = field(default=None, repr=False)  # its content at the commit
    concurrency: int | None = None
    requests_per_second: float | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    attempts: int | None = None


class NotificationKind(StrEnum):
    """What a notification tells (``settings.notify[].events`` chooses among them)."""

    APPLIED = "applied"  # a change went live
    REFUSED = "refused"  # a rule said no: a person must act
    FAILED = "failed"  # an error, including the git source's
    DRIFT = "drift"  # tags found (or corrected) away from what was applied
    PROPOSED = "proposed"  # discovery or follow: latest opened a branch
    RECOVERED = "recovered"  # what failed or was refused works again


NOTIFY_EVENTS = tuple(kind.value for kind in NotificationKind)
NOTIFY_FORMATS = ("generic", "slack", "cloudevents")
# secretEnv / urlEnv may name only these variables: a commit must never be able to name
# the daemon's own secrets (RECONCILER_WEBHOOK_SECRET, registry credentials) as a
# notification's signing key or address.
NOTIFY_ENV_PREFIX = "RECONCILER_NOTIFY_"
NOTIFY_ENV_RE = re.compile(rf"^{NOTIFY_ENV_PREFIX}[A-Za-z0-9_]+$")
NOTIFY_ENV_HINT = (
    f"name a variable that starts with {NOTIFY_ENV_PREFIX} (e.g. {NOTIFY_ENV_PREFIX}SECRET) "
    "and set it in the reconciler's environment; other variables (the webhook secret, "
    "registry credentials) are never a notification's"
)


@dataclass(frozen=True)
class NotifyTarget:
    """One receiver of ``settings.notify``: where, which events, in which format.

    The URL (or, with ``url_env``, the variable holding it, for URLs that are secrets
    themselves) and ``secret_env`` name environment variables of the reconciler's
    process: no secret is ever read from the state repository.
    """

    url: str | None
    events: tuple[str, ...] = NOTIFY_EVENTS
    format: str = "generic"
    secret_env: str | None = None  # signs each body: HMAC-SHA256 with this variable's value
    url_env: str | None = None


FORGE_KINDS = ("gitea", "github", "gitlab")
FORGE_ENV_RE = re.compile(r"^RECONCILER_FORGE_[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class ForgeSettings:
    """``settings.forge``: where merge requests are opened, checked and reported on.

    ``token_env`` names a variable of the reconciler's own environment (it starts with
    ``RECONCILER_FORGE_``): the token is never read from git, and goes only to ``url``,
    which only a commit in force can name.
    """

    type: str  # gitea | github | gitlab
    url: str  # the API's origin, e.g. https://gitea.example.org or https://api.github.com
    repository: str  # owner/name (GitLab: the project's path)
    token_env: str


@dataclass(frozen=True)
class Settings:
    """A commit's ``settings``. Proposed by that commit; used only once the commit is in
    force (:class:`reconciler.verify.inforce.PolicyInForce`)."""

    registries: Mapping[str, RegistryEntry] = field(default_factory=lambda: MappingProxyType({}))
    verify: Policy | None = None
    allowed_signers: str | None = None  # path of an SSH allowed-signers file in the repo
    allowed_signers_data: bytes | None = None  # its content at the commit being applied
    record_keys: tuple[PublicKey, ...] = ()  # settings.records.keys: whose records count
    records_insecure_unsigned: bool = False  # settings.records.insecureUnsigned
    notify: tuple[NotifyTarget, ...] = ()  # settings.notify
    unsigned_paths: tuple[str, ...] = ()  # settings.git.unsignedPaths: may change unsigned
    freeze: tuple[FreezeWindow, ...] = ()  # settings.freeze: windows for every environment
    forge: ForgeSettings | None = None  # settings.forge: merge requests


@dataclass(frozen=True)
class ItemRef:
    """Where an item's ware lives: a repository (None = the catalog's source) and a digest."""

    digest: str
    repository: str | None = None

    @classmethod
    def parse(cls, text: str) -> ItemRef:
        """``[repository@]digest``, as the catalogs write an item."""
        repo, sep, digest = text.rpartition("@")
        return cls(digest=digest, repository=repo if sep else None)

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}" if self.repository else self.digest


@dataclass(frozen=True)
class Release:
    """One release of a catalog: a digest per item. ``hazards`` (name -> why) keep it out of
    environments that do not set ``allowHazards`` (unless VEX statements clear them)."""

    name: str
    items: Mapping[str, ItemRef]
    metadata: Mapping[str, str] = field(default_factory=frozen_map)
    hazards: Mapping[str, str] = field(default_factory=frozen_map)

    @property
    def hazardous(self) -> bool:
        """The release lists at least one hazard."""
        return bool(self.hazards)


@dataclass(frozen=True)
class Discovery:
    """A catalog's ``discover``: which tags make a new release.

    ``tag`` is a regexp with a version group (named ``version``, else the first group):
    the group's text is the release name. Each item names where its tags are: a
    repository (``host/repo``, optionally ``:prefix``) or a tag prefix in the source.
    """

    tag: str
    items: Mapping[str, str]

    def location(self, item: str, source: str) -> tuple[str, str]:
        """(repository, tag prefix) of ``item``'s tags: ``host/repo[:prefix]`` names a
        repository (``oci:/dir[:prefix]`` a layout); anything else is a prefix in
        ``source``."""
        where = self.items[item]
        if "/" not in where:
            return source, where
        slash, colon = where.rfind("/"), where.rfind(":")
        if colon > slash:
            return where[:colon], where[colon + 1 :]
        return where, ""


@dataclass(frozen=True)
class Catalog:
    """A project and a single authoring party: the unit of signing."""

    name: str
    source: str
    releases: tuple[Release, ...]
    signers: Policy | None = None
    file: str = ""  # the file that defines ``releases`` (primary)
    files: tuple[str, ...] = ()  # every file that defines a field of it (CUE positions)
    discover: Discovery | None = None

    def release(self, name: str) -> Release | None:
        """The release named ``name``, or None (those environments name exist: validated)."""
        return next((r for r in self.releases if r.name == name), None)


@dataclass(frozen=True)
class DesiredTag:
    """One tag an environment wants: ``repository:tag`` must point at ``digest``."""

    environment: str
    item: str
    repository: str
    tag: str
    digest: str
    source_repository: str

    @property
    def reference(self) -> str:
        """``repository:tag``: how the tag is named in messages and verification summaries."""
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class FreezeWindow:
    """A time when an environment's tags must not move (``freeze``): fixed (``start`` and
    ``until`` as aware datetimes) or recurring (``days`` of the week at ``from``-``until``
    wall-clock times in ``time_zone``; ``until`` at or before ``from`` ends the next day).
    Judged by :mod:`reconciler.verify.governance`."""

    reason: str
    start: str  # RFC 3339 (fixed) or "HH:MM" (recurring)
    until: str
    days: tuple[str, ...] = ()  # "mon" … "sun": recurring when non-empty
    time_zone: str = "UTC"
    allow_rollback: bool = True


@dataclass(frozen=True)
class Governance:
    """Who may change an environment and when (README: Governance). Read from the state
    in force for the environment, never from the change judged."""

    signers: str | None = None  # path of the environment's SSH allowed-signers file
    signers_data: bytes | None = field(default=None, repr=False)  # its content at the commit
    approvals: int = 1  # 2: the change's signer and an approver's differ (four eyes)
    freeze: tuple[FreezeWindow, ...] = ()  # the environment's own (settings.freeze: all)
    soak: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # env -> s
    override_freeze: str | None = None  # overrideFreeze: a four-eyes change ships anyway

    @property
    def governed(self) -> bool:
        """Any rule about who may change the environment applies."""
        return self.signers is not None or self.approvals > 1

    def to_json(self) -> dict[str, object]:
        """A stable form, for fingerprints and receipts (the signers file by its hash)."""
        data = self.signers_data
        return {
            "signers": self.signers,
            "signersSha256": hashlib.sha256(data).hexdigest() if data is not None else None,
            "approvals": self.approvals,
            "freeze": [repr(w) for w in self.freeze],
            "soak": dict(sorted(self.soak.items())),
            "overrideFreeze": self.override_freeze,
        }


@dataclass(frozen=True)
class Environment:
    """One environment as declared: which release of which catalog it runs, where its tags
    go, and the rules it opts into (``requires``, ``prune``, ``allowHazards``, ``suspend``)."""

    name: str
    catalog: str
    release: str
    items: tuple[str, ...] | None = None
    target_repository: str | None = None
    tag_template: str = DEFAULT_TAG_TEMPLATE
    requires: tuple[str, ...] = ()
    verify: Policy | None = None
    allow_hazards: bool = False
    suspend: bool = False
    prune: bool = False
    file: str = ""  # the file that defines ``release``: what promote edits
    files: tuple[str, ...] = ()  # every file that defines a field of it (CUE positions)
    follow: str | None = None  # "latest": the daemon proposes promotions to newer releases
    governance: Governance = field(default_factory=lambda: Governance())


@dataclass(frozen=True)
class DesiredState:
    """The validated content of one commit of the state repository."""

    commit: str
    tree: str
    # What this commit asks for. In force only once the commit is judged: read settings
    # through the policy in force (reconciler.verify.inforce), never from here.
    proposed_settings: Settings
    catalogs: Mapping[str, Catalog]
    environments: Mapping[str, Environment]
    tags: Mapping[str, tuple[DesiredTag, ...]]
    policies: Mapping[str, Policy]
    # Repository paths of every file the state was built from (read or looked up):
    # what an unsigned commit must not change when signed commits are required.
    inputs: frozenset[str] = frozenset()

    def policy_fingerprint(self, env: str) -> str:
        """Identifies the signature policies an environment's digests must satisfy, so a
        policy change re-verifies what is applied."""
        signers = self.catalogs[self.environments[env].catalog].signers
        text = json.dumps([repr(self.policies.get(env)), repr(signers)])
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def target_of(self, env: str) -> str:
        """The repository an environment's tags and apply records live in."""
        e = self.environments[env]
        return e.target_repository or self.catalogs[e.catalog].source

    def release_of(self, env: str) -> Release:
        """The release ``env`` runs (the cross-checks guarantee it exists)."""
        e = self.environments[env]
        release = self.catalogs[e.catalog].release(e.release)
        assert release is not None  # guaranteed by the cross-checks
        return release


_DURATION = re.compile(r"([0-9]+)([dhms])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in ``1d12h``, ``24h``, ``90m`` (the schema's ``#Duration``); ValueError else."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 24h, 90m or 1d12h")
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def matches_paths(path: str, patterns: Iterable[str]) -> bool:
    """``path`` (from the repository root) matches a glob of ``settings.git.unsignedPaths``:
    ``*`` and ``**`` match across ``/``, ``dir/**`` everything under ``dir``."""
    return any(
        fnmatch.fnmatchcase(path, p) or (p.endswith("/**") and path.startswith(p[:-2]))
        for p in patterns
    )


def expand_tag(template: str, env: str, item: str, release: str) -> str:
    """Expand ``{env}``, ``{item}`` and ``{release}``; any other placeholder is a ValueError."""
    values = {"env": env, "item": item, "release": release}

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"unknown placeholder {{{name}}}")
        return values[name]

    return _PLACEHOLDER.sub(one, template)


# --------------------------------------------------------------------------- actual state

RECORD_TAG_PREFIX = "reconciler-record."
RECORD_MEDIA_TYPE = "application/vnd.reconciler.record.v1+json"


def record_tag(env: str) -> str:
    """The tag of an environment's newest apply record, in its target repository."""
    return f"{RECORD_TAG_PREFIX}{env}"


@dataclass(frozen=True)
class Record:
    """An apply record: what one environment was converged to, and how it was verified.

    Records form a hash chain (``previous`` is the digest of the record before), so a
    rewritten history is detectable. ``owned`` is the inventory of tags the reconciler
    wrote and has not deleted: the only tags it will ever prune.
    """

    environment: str
    commit: str
    tree: str
    catalog: str
    release: str
    repository: str
    tags: Mapping[str, str]  # tag -> digest, as desired and confirmed
    owned: Mapping[str, str]  # tag -> digest last written, including no-longer-desired tags
    verified: Mapping[str, str]  # digest -> how it was verified
    time: str
    reconciler: str
    previous: str | None = None
    digest: str = ""  # this record's own manifest digest (set when read back)
    note: str = ""
    policy: str = ""  # DesiredState.policy_fingerprint at apply time
    # The gate's receipt (verify.gate.Receipt.to_json); None in records before schema 2.
    receipt: Mapping[str, object] | None = None
    # As read back: the signed statement and its DSSE signatures (keyid, signature), and
    # the id of the key in force that verified them (None: unsigned or not verified).
    statement: bytes = field(default=b"", repr=False)
    signatures: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    signer: str | None = None
    term: Term | None = None  # the writer's lease (None: written without election)

    def to_json(self) -> dict[str, object]:
        """The predicate as signed and stored: ``schema`` 2 when a receipt is carried, else 1.
        The digest and signatures are not part of it: they belong to the stored artifact."""
        doc: dict[str, object] = {
            "schema": 1,
            "environment": self.environment,
            "commit": self.commit,
            "tree": self.tree,
            "catalog": self.catalog,
            "release": self.release,
            "repository": self.repository,
            "tags": dict(sorted(self.tags.items())),
            "owned": dict(sorted(self.owned.items())),
            "verified": dict(sorted(self.verified.items())),
            "time": self.time,
            "reconciler": self.reconciler,
            "previous": self.previous,
            "note": self.note,
            "policy": self.policy,
        }
        if self.receipt is not None:
            doc["schema"], doc["receipt"] = 2, dict(self.receipt)
        if self.term is not None:
            doc["term"] = self.term.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, object], digest: str) -> Record:
        """A stored predicate, read back from the manifest at ``digest``.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """

        def text(key: str) -> str:
            value = doc.get(key)
            if not isinstance(value, str):
                raise ValueError(f"record field {key!r} is missing or not a string")
            return value

        def mapping(key: str) -> Mapping[str, str]:
            value = doc.get(key) or {}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError(f"record field {key!r} is not a string map")
            return frozen_map(value)

        receipt = doc.get("receipt")
        if receipt is not None and not isinstance(receipt, dict):
            raise ValueError("record field 'receipt' is not an object")
        previous = doc.get("previous")
        if previous is not None and not (isinstance(previous, str) and DIGEST_RE.match(previous)):
            raise ValueError("record field 'previous' is not a digest")
        return cls(
            environment=text("environment"),
            commit=text("commit"),
            tree=text("tree"),
            catalog=text("catalog"),
            release=text("release"),
            repository=text("repository"),
            tags=mapping("tags"),
            owned=mapping("owned"),
            verified=mapping("verified"),
            time=text("time"),
            reconciler=text("reconciler"),
            previous=previous,
            digest=digest,
            note=str(doc.get("note") or ""),
            policy=str(doc.get("policy") or ""),
            receipt=receipt,
            term=Term.from_json(doc["term"]) if doc.get("term") is not None else None,
        )


@dataclass(frozen=True)
class Observed:
    """What one environment's target repository holds now: ``tag -> digest`` (None = absent)."""

    environment: str
    tags: Mapping[str, str | None]
    record: Record | None


class Action(StrEnum):
    """What a change does to a tag: create it, move it, or delete it (prune only)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Drift(StrEnum):
    """Why a tag is not as desired; reported with each change."""

    MISSING = "missing"  # the tag does not exist
    STALE = "stale"  # it points at another digest of a catalog
    FOREIGN = "foreign"  # it points at a digest in no catalog: a tamper signal
    HAZARDOUS = "hazardous"  # it points at a digest of a release with hazards
    UNOWNED = "unowned"  # prune: an owned tag no longer desired


@dataclass(frozen=True)
class Change:
    """Move ``repository:tag`` from ``from_digest`` to ``to_digest`` (None: absent/delete)."""

    action: Action
    repository: str
    tag: str
    from_digest: str | None
    to_digest: str | None
    drift: Drift
    item: str | None = None
    source_repository: str | None = None


@dataclass(frozen=True)
class EnvPlan:
    """The changes one environment needs; empty ``changes`` and no ``record_due`` = in sync."""

    environment: str
    catalog: str
    release: str
    changes: tuple[Change, ...]
    record_due: bool  # a new apply record is needed (changes, or a new release/catalog)
    notes: tuple[str, ...] = ()
    suspended: bool = False

    @property
    def in_sync(self) -> bool:
        """Nothing to move and no new record due."""
        return not self.changes and not self.record_due
