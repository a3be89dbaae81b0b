"""What attestation rules ask of a verified in-toto statement: pure functions.

- SLSA provenance (v1, and v0.2): ``builderId`` and ``buildType`` match exactly.
- OpenVEX (``https://openvex.dev/ns…``): statements about the artifact, per
  vulnerability the newest one wins (an ``affected`` one on a tie); ``affected``
  becomes a hazard, ``not_affected`` / ``fixed`` clear a catalog hazard of that id
  (or one of its aliases) when they hold for every digest the environment applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.model import AttestationRule

SLSA_V1 = "https://slsa.dev/provenance/v1"
SLSA_V02 = "https://slsa.dev/provenance/v0.2"
AFFECTED, NOT_AFFECTED, FIXED = "affected", "not_affected", "fixed"


def is_openvex(predicate_type: str) -> bool:
    """Any version of OpenVEX: cosign attests ``…/ns``, documents name ``…/ns/v0.2.0``."""
    return predicate_type.startswith("https://openvex.dev/ns")


def provenance_mismatch(rule: AttestationRule, statement: Mapping[str, Any]) -> str | None:
    """Why a provenance statement does not satisfy ``rule`` (None: it does)."""
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        predicate = {}
    if rule.predicate_type == SLSA_V02:
        builder = _get(predicate, "builder", "id")
        build_type = predicate.get("buildType")
    else:
        builder = _get(predicate, "runDetails", "builder", "id")
        build_type = _get(predicate, "buildDefinition", "buildType")
    if rule.builder_id is not None and builder != rule.builder_id:
        return f"builder id {builder!r} is not {rule.builder_id!r}"
    if rule.build_type is not None and build_type != rule.build_type:
        return f"build type {build_type!r} is not {rule.build_type!r}"
    return None


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


# --------------------------------------------------------------------------- OpenVEX


@dataclass(frozen=True)
class VexStatement:
    """One OpenVEX statement about the artifact, and who signed the document."""

    names: tuple[str, ...]  # the vulnerability's name, then its aliases
    status: str
    time: datetime
    detail: str
    signer: str

    def describe(self) -> str:
        """For receipts and refusals: the status, who signed it and why."""
        why = f": {self.detail}" if self.detail else ""
        return f"{self.status} per VEX signed by {self.signer}{why}"


_EPOCH = datetime.min.replace(tzinfo=UTC)


def vex_statements(predicate: object, digest: str, signer: str) -> list[VexStatement]:
    """The statements of an OpenVEX document that are about ``digest``: those naming no
    product (the attestation's subject is the artifact), or a product whose id, hashes
    or identifiers carry the digest."""
    if not isinstance(predicate, dict):
        return []
    doc_time = _time(predicate.get("timestamp"))
    out = []
    for raw in predicate.get("statements") or []:
        if not isinstance(raw, dict) or not _about(raw.get("products"), digest):
            continue
        names = _names(raw.get("vulnerability"))
        status = raw.get("status")
        if not names or not isinstance(status, str):
            continue
        detail = next(
            (
                str(raw[k])
                for k in ("action_statement", "impact_statement", "justification", "status_notes")
                if raw.get(k)
            ),
            "",
        )
        when = _time(raw.get("timestamp")) or doc_time or _EPOCH
        out.append(VexStatement(names, status, when, detail, signer))
    return out


def _names(vulnerability: object) -> tuple[str, ...]:
    if isinstance(vulnerability, str):
        return (vulnerability,)
    if not isinstance(vulnerability, dict):
        return ()
    names = [vulnerability.get("name"), vulnerability.get("@id")]
    names += list(vulnerability.get("aliases") or [])
    return tuple(n for n in names if isinstance(n, str) and n)


def _about(products: object, digest: str) -> bool:
    if not products:
        return True
    hex_digest = digest.removeprefix("sha256:")
    for product in products if isinstance(products, list) else []:
        if not isinstance(product, dict):
            continue
        texts = [str(product.get("@id", ""))]
        texts += [str(v) for v in (product.get("identifiers") or {}).values()]
        texts += [str(v) for v in (product.get("hashes") or {}).values()]
        if any(hex_digest in t for t in texts):
            return True
    return False


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def latest(statements: Iterable[VexStatement]) -> dict[str, VexStatement]:
    """Per vulnerability name or alias, the statement in force: the newest, and on a tie
    an ``affected`` one (fail closed)."""
    verdict: dict[str, VexStatement] = {}
    for statement in statements:
        for name in statement.names:
            current = verdict.get(name)
            if current is None or _newer(statement, current):
                verdict[name] = statement
    return verdict


def _newer(candidate: VexStatement, current: VexStatement) -> bool:
    if candidate.time != current.time:
        return candidate.time > current.time
    return candidate.status == AFFECTED and current.status != AFFECTED


@dataclass(frozen=True)
class VexVerdict:
    """What the VEX statements change about a release's hazards: the vulnerabilities they
    add, and the catalog's hazards they clear for every digest."""

    hazards: dict[str, str]  # vulnerability -> why (affected per VEX)
    cleared: dict[str, str]  # catalog hazard -> why it no longer counts


def judge_vex(
    per_digest: Mapping[str, Sequence[VexStatement]], catalog_hazards: Mapping[str, str]
) -> VexVerdict:
    """``per_digest``: digest -> the VEX statements verified for it (every digest the
    environment applies, each with a list, possibly empty)."""
    hazards: dict[str, str] = {}
    verdicts = {digest: latest(statements) for digest, statements in per_digest.items()}
    for digest, verdict in sorted(verdicts.items()):
        for name, statement in sorted(verdict.items()):
            if statement.status == AFFECTED and statement.names[0] == name:
                hazards.setdefault(name, f"{digest[:19]} {statement.describe()}")
    cleared = {}
    for hazard in catalog_hazards:
        states = [verdict.get(hazard) for verdict in verdicts.values()]
        if verdicts and all(s is not None and s.status in (NOT_AFFECTED, FIXED) for s in states):
            first = states[0]
            assert first is not None
            cleared[hazard] = first.describe()
    return VexVerdict(hazards, cleared)
