"""The trust root: what the deployment, not the repository, says to trust.

Like TUF's pinned root metadata (and Flux's commit-verification keys kept in a cluster
Secret), the trust root lives outside the state repository it judges: a JSON file the
operator gives every host (``--trust-root FILE`` or ``RECONCILER_TRUST_ROOT``; the
Kubernetes example mounts it from a Secret; ``reconciler keygen --write-trust-root``
writes one)::

    {"schema": 1,
     "allowedSigners": "alice@example.org namespaces=\\"git\\" ssh-ed25519 AAAA...\\n",
     "recordKeys": ["-----BEGIN PUBLIC KEY-----\\n..."]}

``allowedSigners`` (an ``ssh-keygen -Y`` allowed-signers text, or null) says who may sign
commits of the state repository; ``recordKeys`` whose apply records count. A host that
has judged nothing yet starts from these; the repository may rotate them later only
through commits signed under the policy in force (:mod:`reconciler.verify.inforce`).

Without a trust root, first contact must be asked for (``--trust-on-first-use``): the
host then trusts the newest commit's own settings, says so loudly, and judges every
later commit from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import Stalled
from reconciler.model import PublicKey

ROOT_ENV = "RECONCILER_TRUST_ROOT"
TOFU_ENV = "RECONCILER_TRUST_ON_FIRST_USE"
MAX_ROOT_BYTES = 1 << 20
SCHEMA = 1
_HINT = (
    "give the reconciler a trust root (--trust-root FILE or RECONCILER_TRUST_ROOT; "
    "reconciler keygen --write-trust-root FILE makes one), or accept the repository as it is "
    "now with --trust-on-first-use (see docs/trust.md, 'First contact')"
)


class TrustRootProblem(Stalled):
    """The trust root is missing, unreadable or malformed: nothing can be judged."""


@dataclass(frozen=True)
class TrustRoot:
    """The deployment's pins; ``first_use``: none were given and first contact was asked
    for (the newest commit's own settings are taken as they are)."""

    origin: str  # the file it came from, or "trust on first use"
    allowed_signers: bytes | None = None
    record_keys: tuple[PublicKey, ...] = ()
    first_use: bool = False

    @classmethod
    def on_first_use(cls) -> TrustRoot:
        """No pins: the newest commit's own settings are taken, said loudly."""
        return cls("trust on first use", first_use=True)

    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        """Raises: TrustRootProblem naming the file, the field and the fix."""
        try:
            if path.stat().st_size > MAX_ROOT_BYTES:
                raise TrustRootProblem(f"trust root {path}: over {MAX_ROOT_BYTES} bytes")
            doc = json.loads(path.read_bytes())
        except OSError as exc:
            raise TrustRootProblem(
                f"cannot read the trust root {path}: {exc.strerror or exc}", _HINT
            ) from None
        except ValueError as exc:
            raise TrustRootProblem(f"trust root {path} is not JSON: {exc}", _HINT) from None
        return cls.parse(doc, str(path))

    @classmethod
    def parse(cls, doc: object, origin: str) -> TrustRoot:
        """The trust root's JSON, strictly: an unknown field is refused, not ignored.

        Raises:
            TrustRootProblem: naming ``origin``, the field and the expected format.
        """

        def bad(field: str, why: str) -> TrustRootProblem:
            return TrustRootProblem(
                f"trust root {origin}: {field}: {why}",
                'expected {"schema": 1, "allowedSigners": "<allowed-signers text>" or null, '
                '"recordKeys": ["<PEM public key>", ...]}',
            )

        if not isinstance(doc, dict):
            raise bad("(top level)", "not an object")
        if doc.get("schema") != SCHEMA:
            raise bad("schema", f"must be {SCHEMA}")
        unknown = sorted(set(doc) - {"schema", "allowedSigners", "recordKeys"})
        if unknown:
            raise bad(unknown[0], "unknown field")
        signers = doc.get("allowedSigners")
        if signers is not None and (not isinstance(signers, str) or not signers.strip()):
            raise bad("allowedSigners", "must be a non-empty allowed-signers text or null")
        keys = doc.get("recordKeys", [])
        if not isinstance(keys, list) or not all(
            isinstance(k, str) and "PUBLIC KEY" in k for k in keys
        ):
            raise bad("recordKeys", "must be a list of PEM public keys")
        return cls(
            origin,
            signers.encode() if signers else None,
            tuple(PublicKey(f"{origin}#recordKeys[{i}]", k) for i, k in enumerate(keys)),
        )

    def to_json(self) -> dict[str, object]:
        """The file format :meth:`parse` reads."""
        return {
            "schema": SCHEMA,
            "allowedSigners": self.allowed_signers.decode() if self.allowed_signers else None,
            "recordKeys": [k.pem for k in self.record_keys],
        }


def trust_root_from(path: Path | None, first_use: bool = False) -> TrustRoot | None:
    """The trust root given by flag or environment; ``None`` when there is none and first
    use was not asked for (a host with a local anchor does not need one).

    Raises:
        TrustRootProblem: the file cannot be used.
    """
    path = path or (Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else None)
    if path is not None:
        return TrustRoot.load(path)
    if first_use or os.environ.get(TOFU_ENV, "").lower() in ("1", "true", "yes"):
        return TrustRoot.on_first_use()
    return None


def no_trust_root(repository: str) -> TrustRootProblem:
    """The error for a host that has judged nothing of ``repository`` and has nothing to
    start from, with the ways out."""
    return TrustRootProblem(
        f"this host has judged nothing of {repository} yet and has no trust root to start from",
        _HINT,
    )


def write_trust_root(path: Path, root: TrustRoot) -> None:
    """Write ``root`` in the format :meth:`TrustRoot.load` reads (``keygen --write-trust-root``)."""
    path.write_text(json.dumps(root.to_json(), indent=2) + "\n", encoding="utf-8")
