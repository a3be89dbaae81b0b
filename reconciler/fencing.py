"""Fencing: which lease a write happens under, and the check the engine makes before
each tag move and record write (the daemon's Lease election answers it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Term:
    """Under which lease a write happened: the Lease (its name and uid), its holder, and
    its ``leaseTransitions`` when this holder took it: the fencing token, which only
    grows for one Lease object (a Lease deleted and created again starts at 0 under a
    new uid)."""

    lease: str
    holder: str
    token: int
    uid: str = ""

    def to_json(self) -> dict[str, object]:
        """As carried by an apply record."""
        return {"lease": self.lease, "uid": self.uid, "holder": self.holder, "token": self.token}

    def follows(self, other: Term) -> bool:
        """Tokens compare only within one Lease object."""
        return (self.lease, self.uid) == (other.lease, other.uid)

    @classmethod
    def from_json(cls, doc: object) -> Term:
        """Raises: ValueError when a field is missing or of the wrong type."""
        if not isinstance(doc, dict):
            raise ValueError("record field 'term' is not an object")
        lease, holder, token = doc.get("lease"), doc.get("holder"), doc.get("token")
        uid = doc.get("uid", "")
        if not (isinstance(lease, str) and isinstance(holder, str) and isinstance(uid, str)):
            raise ValueError("record field 'term' needs lease, uid and holder strings")
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise ValueError("record field 'term.token' is not a non-negative integer")
        return cls(lease, holder, token, uid)


class Fence(Protocol):
    """Asked by the engine right before each tag move and record write, so that a replica
    that lost its lease stops before its next write. The daemon's Lease election is one;
    :data:`UNFENCED`, the default, is a lone reconciler that always may write."""

    def check(self, before: str) -> Term | None:
        """The term this write happens under (None: no election).

        Raises:
            LeaseLost: this replica does not hold the lease (``before`` names the write).
        """
        ...


class _Unfenced:
    """No election: every write may happen and carries no term."""

    def check(self, before: str) -> Term | None:
        """Always allowed."""
        return None


UNFENCED: Fence = _Unfenced()
