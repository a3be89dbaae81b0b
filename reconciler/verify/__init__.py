"""Verification: everything a change must pass before any tag moves.

Each check raises :class:`Refused` naming the rule that failed and how to fix it; a
check never returns False. Checks that need no I/O (hazards, promotion order, history)
take values; integrity and signatures read the registry through the Registry protocol.
"""

from __future__ import annotations

from reconciler.verify.errors import Refused
from reconciler.verify.integrity import check_integrity
from reconciler.verify.rules import check_hazards, check_history, check_order

__all__ = ["Refused", "check_hazards", "check_history", "check_integrity", "check_order"]
