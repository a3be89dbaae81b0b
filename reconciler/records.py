"""Apply records: small OCI artifacts in each environment's target repository.

A record is an OCI manifest (artifactType ``application/vnd.reconciler.record.v1+json``,
the empty config, one JSON layer) tagged ``reconciler-record.<env>``. Because every
replica and every restart reads the same registry, they all see the same inventory.
Each record names the digest of the one before it, so the history is a hash chain:
content addressing makes every link tamper-evident, and :func:`read_chain` checks it.
"""

from __future__ import annotations

import json
import logging

from reconciler.errors import Stalled, Transient
from reconciler.model import RECORD_MEDIA_TYPE, Record, record_tag
from reconciler.registry import OCI_MANIFEST, Registry, sha256_digest

log = logging.getLogger(__name__)

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
MAX_RECORD_BYTES = 4 << 20


class RecordCorrupt(Stalled):
    """A record that cannot be read or does not belong where it was found."""


class RecordConflict(Transient):
    """Another writer moved the record tag since this pass read it."""


def encode(record: Record) -> tuple[bytes, bytes]:
    """(manifest bytes, record JSON bytes): canonical, so equal records hash equally."""
    body = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": RECORD_MEDIA_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": sha256_digest(EMPTY_CONFIG),
            "size": len(EMPTY_CONFIG),
        },
        "layers": [
            {"mediaType": RECORD_MEDIA_TYPE, "digest": sha256_digest(body), "size": len(body)}
        ],
        "annotations": {
            "org.opencontainers.image.created": record.time,
            "dev.reconciler.environment": record.environment,
            "dev.reconciler.commit": record.commit,
            "dev.reconciler.release": record.release,
        },
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), body


def read_head(registry: Registry, repository: str, env: str) -> Record | None:
    """The newest record of ``env`` in ``repository``; None when it has none."""
    digest = registry.resolve(repository, record_tag(env))
    return None if digest is None else read_at(registry, repository, env, digest)


def read_at(registry: Registry, repository: str, env: str, digest: str) -> Record:
    manifest = registry.get_manifest(repository, digest)  # verifies the digest
    doc = manifest.document()
    layers = doc.get("layers")
    if doc.get("artifactType") != RECORD_MEDIA_TYPE or not isinstance(layers, list) or not layers:
        raise RecordCorrupt(
            f"{repository}@{digest} tagged {record_tag(env)} is not an apply record",
            f"the tag {record_tag(env)} is reserved for the reconciler; restore or delete it",
        )
    layer = manifest.blobs()[-1]
    if layer.size > MAX_RECORD_BYTES:
        raise RecordCorrupt(f"apply record {digest} is {layer.size} bytes, too large")
    with registry.open_blob(repository, layer.digest) as chunks:
        body = b"".join(chunks)
    if sha256_digest(body) != layer.digest:
        raise RecordCorrupt(f"apply record {digest}: its content does not hash to its digest")
    try:
        record = Record.from_json(json.loads(body), digest)
    except ValueError as exc:
        raise RecordCorrupt(f"apply record {digest} is malformed: {exc}") from None
    if record.environment != env:
        raise RecordCorrupt(
            f"apply record {digest} under {record_tag(env)} belongs to {record.environment!r}",
            "records are per environment; someone copied a record by hand",
        )
    return record


def write(registry: Registry, repository: str, record: Record, expected_head: str | None) -> str:
    """Store ``record`` and move the record tag to it, if the tag is still at ``expected_head``.

    Blobs first, then the manifest under the tag (one PUT stores and tags it): an
    interruption leaves the previous record in place, never a half-written one.
    """
    manifest, body = encode(record)
    if not registry.blob_exists(repository, sha256_digest(EMPTY_CONFIG)):
        registry.put_blob(
            repository, sha256_digest(EMPTY_CONFIG), len(EMPTY_CONFIG), [EMPTY_CONFIG]
        )
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
    registry.put_manifest(repository, tag, manifest, OCI_MANIFEST)
    if registry.resolve(repository, tag) != digest:
        raise RecordConflict(f"{repository}:{tag} did not take the new record {digest}")
    log.info("recorded %s: %s at %s", record.environment, record.release, digest[:19])
    return digest


def read_chain(registry: Registry, repository: str, env: str, limit: int = 1000) -> list[Record]:
    """Records newest first, following ``previous``; RecordCorrupt if a link is broken."""
    chain: list[Record] = []
    head = read_head(registry, repository, env)
    while head is not None and len(chain) < limit:
        chain.append(head)
        if head.previous is None:
            break
        head = read_at(registry, repository, env, head.previous)
    return chain
