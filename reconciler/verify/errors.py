"""The refusal error: a leaf module so every check can raise it without import cycles."""

from __future__ import annotations

from reconciler.errors import Stalled


class Refused(Stalled):
    """Verification refused a change; ``rule`` names which rule, for humans and metrics."""

    def __init__(self, rule: str, message: str, hint: str = "") -> None:
        super().__init__(f"refused ({rule}): {message}", hint)
        self.rule = rule
