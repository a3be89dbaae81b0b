"""Integrity: the manifest exists in the source and its bytes hash to the digest."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.registry import Manifest, RegistryError
from reconciler.verify.errors import Refused, Rule


def check_integrity(fetch: Callable[[str], Manifest], digest: str, where: str) -> int:
    """Fetch the manifest (and, for an index, every child) and check each hash.

    ``fetch`` reads a manifest of the source repository by digest; the registry client
    verifies the sha256 of every manifest it reads. Returns how many manifests were
    checked; any failure is a refusal, never a skipped check.
    """
    seen: set[str] = set()
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            children = fetch(current).children()
        except RegistryError as exc:
            what = "" if current == digest else f" (a child of {digest[:19]})"
            raise Refused(
                Rule.INTEGRITY,
                f"{where}@{current}{what} cannot be verified: {exc.message}",
                "push the artifact to the catalog's source, or fix the digest in the catalog",
            ) from exc
        pending.extend(child.digest for child in children)
    return len(seen)
