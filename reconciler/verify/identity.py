"""Identity policies for keyless signatures, composed from sigstore-python's policy classes.

One :class:`reconciler.model.Identity` becomes one ``AllOf`` of single checks, in the
order cosign applies its flags:

- the OIDC issuer, exactly or by an anchored regexp (``--certificate-oidc-issuer``,
  ``--certificate-oidc-issuer-regexp``): Fulcio's v2 extension (``.1.8``, a DER
  UTF8String), else the deprecated v1 one (``.1.1``), as cosign reads it;
- the subject (a SAN: URI, e-mail or Fulcio's other name), exactly or by an anchored
  regexp (``--certificate-identity``, ``--certificate-identity-regexp``);
- certificate claims, with sigstore-python's own classes: ``GitHubWorkflowRepository``,
  ``GitHubWorkflowRef``, ``GitHubWorkflowTrigger``, ``GitHubWorkflowSHA``,
  ``GitHubWorkflowName`` (cosign's ``--certificate-github-workflow-*``, the v1
  extensions ``.1.2``-``.1.6``) and ``OIDCBuildSignerURI`` (``.1.9``).

A policy's identities are alternatives (``AnyOf`` semantics): :func:`first_match` tries
each and names the one that held, for the receipt. Regexps here match the WHOLE value
(``re.fullmatch``); cosign's Go regexps match anywhere unless anchored.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryptography.x509 import (
    Certificate,
    ExtensionNotFound,
    ObjectIdentifier,
    OtherName,
    RFC822Name,
    SubjectAlternativeName,
    UniformResourceIdentifier,
    UnrecognizedExtension,
)
from sigstore.errors import VerificationError

if TYPE_CHECKING:  # importing sigstore.verify loads the whole verifier: only when used
    from sigstore.verify.policy import AllOf, VerificationPolicy

from reconciler.model import Identity

_SUBJECT_OTHERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")

# Identity field -> (the state file's field, cosign's flag, sigstore-python's class name
# in sigstore.verify.policy).
CLAIMS: dict[str, tuple[str, str, str]] = {
    "github_workflow_repository": (
        "githubWorkflowRepository",
        "--certificate-github-workflow-repository",
        "GitHubWorkflowRepository",
    ),
    "github_workflow_ref": (
        "githubWorkflowRef",
        "--certificate-github-workflow-ref",
        "GitHubWorkflowRef",
    ),
    "github_workflow_trigger": (
        "githubWorkflowTrigger",
        "--certificate-github-workflow-trigger",
        "GitHubWorkflowTrigger",
    ),
    "github_workflow_sha": (
        "githubWorkflowSha",
        "--certificate-github-workflow-sha",
        "GitHubWorkflowSHA",
    ),
    "github_workflow_name": (
        "githubWorkflowName",
        "--certificate-github-workflow-name",
        "GitHubWorkflowName",
    ),
    # cosign has no flag for it; Fulcio's extension 1.3.6.1.4.1.57264.1.9.
    "build_signer_uri": ("buildSignerURI", "", "OIDCBuildSignerURI"),
}


class _Value:
    """An exact value or an anchored regexp, as a policy names it."""

    def __init__(self, exact: str | None, pattern: str | None) -> None:
        self.exact = exact
        self.pattern = re.compile(pattern) if pattern is not None else None

    def matches(self, value: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value == self.exact

    def __str__(self) -> str:
        return f"~{self.pattern.pattern}" if self.pattern is not None else str(self.exact)


class Issuer:
    """The OIDC issuer Fulcio embedded, exactly or by anchored regexp."""

    def __init__(self, exact: str | None, pattern: str | None) -> None:
        self.value = _Value(exact, pattern)

    def verify(self, cert: Certificate) -> None:
        """Raises: VerificationError: the certificate names another issuer, or none."""
        issuer = issuer_of(cert)
        if issuer is None or not self.value.matches(issuer):
            raise VerificationError(f"issuer {issuer!r} is not {self.value}")


class Subject:
    """One of the certificate's SANs, exactly or by anchored regexp."""

    def __init__(self, exact: str | None, pattern: str | None) -> None:
        self.value = _Value(exact, pattern)

    def verify(self, cert: Certificate) -> None:
        """Raises: VerificationError: no SAN of the certificate matches."""
        sans = subjects_of(cert)
        if not any(self.value.matches(s) for s in sans):
            raise VerificationError(f"subject {sorted(sans)} does not match {self.value}")


class _Claim:
    """A sigstore-python claim policy whose refusal names the policy's field."""

    def __init__(self, name: str, policy: VerificationPolicy) -> None:
        self.name, self.policy = name, policy

    def verify(self, cert: Certificate) -> None:
        try:
            self.policy.verify(cert)
        except VerificationError as exc:
            raise VerificationError(f"{self.name}: {exc}") from None


def certificate_policy(identity: Identity) -> AllOf:
    """Every check one identity makes of a certificate, as one ``AllOf``."""
    checks: list[VerificationPolicy] = [
        Issuer(identity.issuer, identity.issuer_regexp),
        Subject(identity.subject, identity.subject_regexp),
    ]
    policies: Any = importlib.import_module("sigstore.verify.policy")
    for field, (name, _, policy) in CLAIMS.items():
        value = getattr(identity, field)
        if value is not None:
            checks.append(_Claim(name, getattr(policies, policy)(value)))
    all_of: AllOf = policies.AllOf(checks)
    return all_of


def describe(identity: Identity) -> str:
    """``identity <issuer> <subject>`` (``~regexp`` for a pattern), then any claims."""
    issuer = _Value(identity.issuer, identity.issuer_regexp)
    subject = _Value(identity.subject, identity.subject_regexp)
    claims = [
        f"{name}={getattr(identity, field)}"
        for field, (name, _, _) in CLAIMS.items()
        if getattr(identity, field) is not None
    ]
    return f"identity {issuer} {subject}" + (f" [{', '.join(claims)}]" if claims else "")


def first_match(identities: Sequence[Identity], cert: Certificate) -> Identity:
    """The first identity whose checks all hold (``AnyOf``); VerificationError naming each
    identity's reason otherwise."""
    if not identities:
        raise VerificationError("the policy names no identity")
    reasons = []
    for identity in identities:
        try:
            certificate_policy(identity).verify(cert)
        except VerificationError as exc:
            reasons.append(str(exc))
            continue
        return identity
    raise VerificationError("; ".join(reasons))


def issuer_of(cert: Certificate) -> str | None:
    """The OIDC issuer: the v2 extension (a DER UTF8String), else v1 (raw bytes)."""
    for oid, decode in ((_ISSUER_V2, _der_utf8), (_ISSUER_V1, _raw)):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except ExtensionNotFound:
            continue
        if isinstance(value, UnrecognizedExtension):
            return decode(value.value)
    return None


def _raw(data: bytes) -> str:
    return data.decode(errors="replace")


def _der_utf8(data: bytes) -> str | None:
    if len(data) < 2 or data[0] != 0x0C:
        return None
    length, offset = data[1], 2
    if length & 0x80:
        n = length & 0x7F
        length, offset = int.from_bytes(data[2 : 2 + n], "big"), 2 + n
    return data[offset : offset + length].decode(errors="replace")


def subjects_of(cert: Certificate) -> set[str]:
    """Every identity the certificate's SAN carries: email, URI and Fulcio's own
    ``OtherName`` (a username), so a policy may name any of them."""
    try:
        san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    except ExtensionNotFound:
        return set()
    values = set(san.get_values_for_type(RFC822Name))
    values.update(san.get_values_for_type(UniformResourceIdentifier))
    values.update(
        other.value.decode(errors="replace")
        for other in san.get_values_for_type(OtherName)
        if other.type_id == _SUBJECT_OTHERNAME
    )
    return values
