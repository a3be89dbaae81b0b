"""An environment's governance and freeze windows as a commit states them (README:
Governance). Parsed here, judged in verify/governance.py under the rules in force."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.desired.files import ENVIRONMENTS, StateReader
from reconciler.model import FreezeWindow, Governance, parse_duration

Problems = Callable[..., None]  # Builder.problem(path, message, hint)


def governance(snap: StateReader, name: str, raw: dict[str, Any], problem: Problems) -> Governance:
    """The environment's governance as this commit states it (README: Governance);
    the signers file is read here, so it is an input of the state."""
    path = (ENVIRONMENTS, name)
    signers, data = raw.get("signers"), None
    if signers and not snap.exists(signers):
        problem(
            (*path, "signers"),
            f"{signers!r} is not a file in the repository",
            "commit the SSH allowed-signers file or fix the path",
        )
    elif signers:
        data = snap.read(signers)
    approvals = int(raw.get("approvals", 1))
    if approvals > 1 and not signers:
        problem(
            (*path, "approvals"),
            "approvals: 2 needs the environment's signers",
            "add signers: an SSH allowed-signers file of the repository",
        )
    soak: dict[str, int] = {}
    for i, r in enumerate(raw.get("requires") or ()):
        if isinstance(r, dict) and r.get("soak"):
            try:
                soak[r["environment"]] = parse_duration(r["soak"])
            except ValueError as exc:
                problem((*path, "requires", i, "soak"), str(exc), "write e.g. 24h")
    return Governance(
        signers=signers,
        signers_data=data,
        approvals=approvals,
        freeze=tuple(freeze_windows((*path, "freeze"), raw.get("freeze") or (), problem)),
        soak=MappingProxyType(soak),
        override_freeze=raw.get("overrideFreeze"),
    )


def freeze_windows(path: tuple[Any, ...], raw: Any, problem: Problems) -> list[FreezeWindow]:
    """Freeze windows as written; a recurring one needs a known time zone, a fixed one
    must end after it starts."""
    windows = []
    for i, w in enumerate(raw):
        window = FreezeWindow(
            reason=w["reason"],
            start=w["from"],
            until=w["until"],
            days=tuple(w.get("days") or ()),
            time_zone=w.get("timeZone", "UTC"),
            allow_rollback=bool(w.get("allowRollback", True)),
        )
        if window.days:
            try:
                ZoneInfo(window.time_zone)
            except (ValueError, KeyError, ZoneInfoNotFoundError):
                problem(
                    (*path, i, "timeZone"),
                    f"unknown time zone {window.time_zone!r}",
                    "name an IANA time zone, e.g. Europe/Berlin or UTC",
                )
        elif datetime.fromisoformat(window.start) >= datetime.fromisoformat(window.until):
            problem(
                (*path, i, "until"),
                "the window ends before it starts",
                "make until later than from",
            )
        windows.append(window)
    return windows
