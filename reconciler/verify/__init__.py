"""Verification: everything a change must pass before any tag moves.

The :class:`Gate` applies the rules in order (history, commits, hazards, requires,
artifacts) to values the pass gathered; every refusal is a :class:`Refused` naming its
:class:`Rule`, and :func:`disposition` says what happens next.
"""

from __future__ import annotations

from reconciler.verify.errors import Disposition, Refused, Rule, Waiting, disposition
from reconciler.verify.gate import Gate, Receipt
from reconciler.verify.integrity import check_integrity

__all__ = [
    "Disposition",
    "Gate",
    "Receipt",
    "Refused",
    "Rule",
    "Waiting",
    "check_integrity",
    "disposition",
]
