"""Apply records: signed OCI artifacts in each environment's target repository.

A record is an OCI manifest (artifactType ``application/vnd.reconciler.record.v1+json``,
the empty config, one layer) whose layer is a DSSE envelope over an in-toto statement:
predicate type :data:`PREDICATE_TYPE`, the predicate the :class:`Record` fields, one
subject per tag it set. The newest is tagged ``reconciler-record.<env>`` (the head);
every record is also tagged ``reconciler-record.sha256-<hex>`` by its own digest, so a
registry's ``garbage-collect --delete-untagged`` keeps the whole chain. Each record
names the digest of the one before it: the history is a hash chain, so a trusted
(signed) head vouches for every record behind it.

Verification steps (:func:`establish`), numbered as the docs name them:
(1) the head parses as a record of this environment;
(2) with keys in force, its DSSE signature verifies with one of them, else it is not a
    record (rule ``records``);
(3) with a local anchor (the last record this host trusted), the head is the anchor or
    chains back to it, each newer record verifying too: a missing head, a rewind or a
    forged branch is refused;
(4) without one (a fresh host, a new replica, a lost volume), no record that counts
    names the head as the one before it: a head re-tagged to an older record is a replay;
(5) a record written under Lease election carries its writer's term (the Lease's
    ``leaseTransitions``, the fencing token): one whose token is older than the record
    it follows is a stale writer's, refused when written and when read as the head.

The keys in force are the repository's (:class:`~reconciler.verify.inforce.PolicyInForce`),
never a commit's that is being judged; :class:`RecordTrust` is the one place that decides
which records count, for apply, plan, status, audit and promote alike.
Records written before signing existed (a plain JSON layer) read as unsigned.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.errors import Stalled, Transient
from reconciler.evidence.anchor import Anchors
from reconciler.evidence.signing import (
    EnvelopeInvalid,
    SigningKey,
    envelope,
    open_envelope,
    signed_by,
    statement,
)
from reconciler.model import RECORD_MEDIA_TYPE, RECORD_TAG_PREFIX, PublicKey, Record, record_tag
from reconciler.registry import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    Manifest,
    NotFound,
    Registry,
    RegistryRefused,
    sha256_digest,
)
from reconciler.registry.oci import media_type_of
from reconciler.verify.errors import Refused, Rule

log = logging.getLogger(__name__)

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_TYPE = "https://reconciler.dev/apply-record/v1"
MAX_RECORD_BYTES = 4 << 20
RECOVERY = "see docs/trust.md, 'Records: recovery'"


class RecordCorrupt(Stalled):
    """A record that cannot be read or does not belong where it was found."""


class RecordConflict(Transient):
    """Another writer moved the record tag since this pass read it."""


def history_tag(digest: str) -> str:
    """The tag that keeps one record alive through garbage collection."""
    return f"{RECORD_TAG_PREFIX}{digest.replace(':', '-')}"


@dataclass(frozen=True)
class Trust:
    """Which records count: those signed by ``keys`` (empty: unsigned records are read
    as records, the insecure mode of a state without ``settings.records.keys``)."""

    keys: tuple[PublicKey, ...] = ()

    @property
    def signed(self) -> bool:
        """Record keys are in force: an unsigned record is not a record."""
        return bool(self.keys)


# --------------------------------------------------------------------------- encode


def encode(record: Record, key: SigningKey | None) -> tuple[bytes, bytes]:
    """(manifest bytes, envelope bytes): canonical JSON, so equal records hash equally."""
    subjects = {f"{record.repository}:{tag}": digest for tag, digest in record.tags.items()}
    payload = statement(subjects, PREDICATE_TYPE, record.to_json())
    body = json.dumps(envelope(payload, key), sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": RECORD_MEDIA_TYPE,
        "config": {
            "mediaType": OCI_EMPTY,
            "digest": sha256_digest(EMPTY_JSON),
            "size": len(EMPTY_JSON),
        },
        "layers": [
            {"mediaType": DSSE_MEDIA_TYPE, "digest": sha256_digest(body), "size": len(body)}
        ],
        "annotations": {
            "org.opencontainers.image.created": record.time,
            "dev.reconciler.environment": record.environment,
            "dev.reconciler.commit": record.commit,
            "dev.reconciler.release": record.release,
        },
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), body


# --------------------------------------------------------------------------- read


class RecordCache:
    """Records by digest in the cache directory. Content-addressed and checked again on
    every read, so it is never trusted: a no-op pass reads each head with one HEAD."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.directory = cache_dir / "records" if cache_dir else None

    def get(self, digest: str) -> tuple[bytes, bytes] | None:
        """(manifest, envelope) of ``digest``, or None when absent, unreadable or not matching
        the digest; the envelope is checked by the caller against the manifest's layer."""
        if self.directory is None:
            return None
        base = self.directory / digest.replace(":", "-")
        try:
            manifest, body = base.with_suffix(".manifest").read_bytes(), base.read_bytes()
        except OSError:
            return None
        return (manifest, body) if sha256_digest(manifest) == digest else None

    def put(self, digest: str, manifest: bytes, body: bytes) -> None:
        """Keep a record read from the registry; a failure to write is logged, never raised."""
        if self.directory is None:
            return
        base = self.directory / digest.replace(":", "-")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for path, data in ((base, body), (base.with_suffix(".manifest"), manifest)):
                fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
        except OSError as exc:  # a cache that cannot be written only costs requests
            log.debug("cannot cache record %s: %s", digest, exc)


def read_head(
    registry: Registry, repository: str, env: str, cache: RecordCache | None = None
) -> Record | None:
    """The newest record of ``env`` in ``repository`` as stored (not yet trusted)."""
    digest = registry.resolve(repository, record_tag(env))
    return None if digest is None else read_at(registry, repository, env, digest, cache)


def read_at(
    registry: Registry,
    repository: str,
    env: str | None,
    digest: str,
    cache: RecordCache | None = None,
) -> Record:
    """One record by digest; its signature is kept for :func:`verify`, not checked here."""
    cached = cache.get(digest) if cache else None
    if cached is not None:
        manifest = Manifest(cached[0], media_type_of(cached[0]))
    else:
        manifest = registry.get_manifest(repository, digest)  # verifies the digest
    doc = manifest.document()
    layers = doc.get("layers")
    if doc.get("artifactType") != RECORD_MEDIA_TYPE or not isinstance(layers, list) or not layers:
        tag = record_tag(env) if env else history_tag(digest)
        raise RecordCorrupt(
            f"{repository}@{digest} tagged {tag} is not an apply record",
            f"the tag {tag} is reserved for the reconciler; {RECOVERY}",
        )
    layer = manifest.blobs()[-1]
    if layer.size > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"apply record {digest} is {layer.size} bytes, too large")
    if cached is not None and sha256_digest(cached[1]) == layer.digest:
        body = cached[1]
    else:
        body = registry.read_blob(repository, layer.digest, MAX_RECORD_BYTES)  # capped, checked
        if cache is not None:
            cache.put(digest, manifest.data, body)
    try:
        if layer.media_type == DSSE_MEDIA_TYPE:
            payload, signatures = open_envelope(json.loads(body))
            predicate = json.loads(payload)
            if predicate.get("predicateType") != PREDICATE_TYPE:
                raise ValueError(f"predicate type is not {PREDICATE_TYPE}")
            record = Record.from_json(predicate["predicate"], digest)
            record = replace(record, statement=payload, signatures=signatures)
        else:  # a record from before records were signed: plain JSON
            record = Record.from_json(json.loads(body), digest)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordCorrupt(f"apply record {digest} is malformed: {exc}") from None
    if env is not None and record.environment != env:
        raise RecordCorrupt(
            f"apply record {digest} under {record_tag(env)} belongs to {record.environment!r}",
            "records are per environment; someone copied a record by hand",
        )
    return record


def verify(record: Record, trust: Trust) -> Record:
    """``record`` with ``signer`` set; Refused (rule records) when it does not count."""
    if not trust.signed:
        return record
    try:
        signer = signed_by(record.statement, record.signatures, trust.keys)
    except EnvelopeInvalid as exc:
        raise Refused(
            Rule.RECORDS,
            f"apply record {record.digest} of {record.environment} is not a record: {exc}",
            f"records count only when signed by a key of settings.records.keys; {RECOVERY}",
        ) from None
    return replace(record, signer=signer)


@dataclass(frozen=True)
class Chain:
    """Records newest first, and where the chain broke (a garbage-collected link)."""

    records: tuple[Record, ...]
    gap: str | None = None  # the digest that could not be read


def walk(
    registry: Registry,
    repository: str,
    head: Record | None,
    limit: int = 1000,
    cache: RecordCache | None = None,
) -> Chain:
    """Follow ``previous`` from ``head``; a missing link ends the chain as a visible gap."""
    found: list[Record] = []
    current = head
    while current is not None and len(found) < limit:
        found.append(current)
        if current.previous is None:
            break
        try:
            current = read_at(registry, repository, current.environment, current.previous, cache)
        except NotFound:
            log.warning(
                "%s: apply record %s is gone (garbage-collected?): the chain ends there",
                current.environment,
                current.previous,
            )
            return Chain(tuple(found), current.previous)
    return Chain(tuple(found))


def read_chain(registry: Registry, repository: str, env: str, limit: int = 1000) -> list[Record]:
    """Records newest first, following ``previous`` up to a gap."""
    return list(walk(registry, repository, read_head(registry, repository, env), limit).records)


def establish(
    registry: Registry,
    repository: str,
    env: str,
    head: Record | None,
    anchor: str | None,
    trust: Trust,
    limit: int = 1000,
    cache: RecordCache | None = None,
) -> Record | None:
    """The trusted head of ``env`` (steps 2 and 3 above), or Refused (rule records)."""
    if head is None:
        if anchor is not None:
            raise Refused(
                Rule.RECORDS,
                f"the apply record {record_tag(env)} of {env} is missing from {repository}; "
                f"the last record this reconciler trusted is {anchor}",
                f"restore the tag to that record, or {RECOVERY}",
            )
        return None
    if head.digest == anchor:
        try:
            return verify(head, trust)
        except Refused:  # verified when anchored; the keys rotated since (docs/trust.md)
            return head
    head = verify(head, trust)
    if anchor is None:
        return head
    current = head
    for _ in range(limit):
        if current.previous is None:
            break
        if current.previous == anchor:
            return head
        try:
            current = verify(read_at(registry, repository, env, current.previous, cache), trust)
        except NotFound:
            break
    raise Refused(
        Rule.RECORDS,
        f"the apply record {head.digest} of {env} does not chain back to {anchor}, the last "
        "record this reconciler trusted (a rewind, a deleted head or a forged record)",
        f"restore {record_tag(env)} to a record that descends from it, or {RECOVERY}",
    )


# --------------------------------------------------------------------------- write


def write(
    registry: Registry,
    repository: str,
    record: Record,
    expected_head: str | None,
    key: SigningKey | None = None,
    cache: RecordCache | None = None,
) -> str:
    """Store ``record`` (signed with ``key``) and move the head tag to it, if the head is
    still at ``expected_head``.

    Blobs first, then the manifest under its own history tag, then the head tag: an
    interruption leaves the previous head in place, never a half-written record.
    """
    manifest, body = encode(record, key)
    registry.put_blob(repository, sha256_digest(body), len(body), [body])  # new every time
    digest = sha256_digest(manifest)
    tag = record_tag(record.environment)
    current = registry.resolve(repository, tag)
    if current != expected_head:
        raise RecordConflict(
            f"{repository}:{tag} moved to {current} while this pass ran "
            f"(expected {expected_head}); another reconciler is writing",
            "run one active reconciler per environment; the next pass re-plans",
        )
    _put_history(registry, repository, history_tag(digest), manifest)
    registry.put_manifest(repository, tag, manifest, OCI_MANIFEST)
    if registry.resolve(repository, tag) != digest:
        raise RecordConflict(f"{repository}:{tag} did not take the new record {digest}")
    if cache is not None:
        cache.put(digest, manifest, body)
    log.info("recorded %s: %s at %s", record.environment, record.release, digest[:19])
    return digest


def _put_history(registry: Registry, repository: str, tag: str, manifest: bytes) -> None:
    """The record under its history tag. Its config is the empty JSON blob, uploaded only
    when the registry refuses the manifest for want of it: once per repository, not a
    ``HEAD`` per record. A refusal for any other reason is raised by the second try."""
    try:
        registry.put_manifest(repository, tag, manifest, OCI_MANIFEST)
    except RegistryRefused:
        registry.put_blob(repository, sha256_digest(EMPTY_JSON), len(EMPTY_JSON), [EMPTY_JSON])
        registry.put_manifest(repository, tag, manifest, OCI_MANIFEST)


class RecordTrust:
    """The one place that decides which records count (steps 1 to 5 above).

    ``trust``: the record keys of the policy in force; ``anchors``: this host's local
    anchors (read here, written only by the applying pass); ``once``: shares the
    replay scan of a repository between the environments of one pass.
    """

    def __init__(
        self,
        trust: Trust,
        anchors: Anchors,
        cache: RecordCache | None = None,
        once: Callable[[object, Callable[[], Successors]], Successors] | None = None,
    ) -> None:
        self.trust, self.anchors, self.cache = trust, anchors, cache
        self.once = once or (lambda _key, compute: compute())

    def head(
        self,
        registry: Registry,
        repository: str,
        env: str,
        present: frozenset[str] | None,
        anchored: str,
    ) -> Record | None:
        """The trusted head of ``env`` in ``repository`` (``present``: its tags;
        ``anchored``: the repository as the anchors name it).

        Raises:
            Refused: (rule records) the head does not count, or is a rewind or a replay.
        """
        stored = (
            read_head(registry, repository, env, self.cache)
            if present is None or record_tag(env) in present
            else None
        )
        try:
            anchor = self.anchors.get(anchored, env)
        except OSError as exc:
            raise Refused(Rule.RECORDS, str(exc), f"repair or remove it; {RECOVERY}") from None
        head = establish(
            registry,
            repository,
            env,
            stored,
            anchor.digest if anchor else None,
            self.trust,
            cache=self.cache,
        )
        if head is not None and head.term is not None and head.previous is not None:
            try:
                before = read_at(registry, repository, env, head.previous, self.cache)
            except NotFound:
                before = None  # garbage-collected: nothing to compare with
            if before is not None:
                self.admit(head, before)
        if head is not None and anchor is None and self.trust.signed:
            key = ("successors", registry.name, repository)
            tags = present if present is not None else frozenset(registry.list_tags(repository))
            later = self.once(key, lambda: self.successors(registry, repository, tags))
            newer = sorted(d for e, d in later.get(head.digest, ()) if e == env)
            if newer:
                raise Refused(
                    Rule.RECORDS,
                    f"the apply record {record_tag(env)} of {env} is {head.digest}, but the "
                    f"signed record {newer[0]} chains past it: the head was moved back "
                    "(a replay)",
                    f"restore {record_tag(env)} to the newest record, or {RECOVERY}",
                )
        return head

    def admit(self, record: Record, head: Record | None) -> None:
        """Refuse ``record`` as the successor of ``head`` when it was written under an
        older term of the same Lease than ``head`` (step 5 above): its writer lost the
        lease before writing and someone else has led since, a stale writer.

        Raises:
            Refused: (rule records) the record's fencing token is older than the head's.
        """
        mine, theirs = record.term, head.term if head is not None else None
        if mine is None or theirs is None or not mine.follows(theirs):
            return  # written without election, or under another Lease (a shard's, a new one)
        if mine.token < theirs.token:
            raise Refused(
                Rule.RECORDS,
                f"the apply record of {record.environment} by {mine.holder} was written under "
                f"term {mine.token} of Lease {mine.lease}, older than the term {theirs.token} "
                f"of {theirs.holder}, who wrote the record before it: a stale writer's",
                f"only the holder of the Lease writes records; {RECOVERY}",
            )

    def successors(
        self, registry: Registry, repository: str, present: frozenset[str]
    ) -> Successors:
        """previous digest -> (environment, digest) of every record that counts, read
        from the history tags (each record keeps one): who chains past whom."""
        found: dict[str, list[tuple[str, str]]] = {}
        prefix = history_tag("sha256:")
        for tag in sorted(t for t in present if t.startswith(prefix)):
            digest = "sha256:" + tag.removeprefix(prefix)
            try:
                record = verify(read_at(registry, repository, None, digest, self.cache), self.trust)
            except (Refused, RecordCorrupt, NotFound):
                continue  # not a record that counts: it vouches for nothing
            if record.previous:
                found.setdefault(record.previous, []).append((record.environment, digest))
        return {k: tuple(v) for k, v in found.items()}


Successors = dict[str, tuple[tuple[str, str], ...]]
