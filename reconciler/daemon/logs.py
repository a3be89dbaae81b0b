"""The daemon's log lines: text, or one JSON object per line with its event fields."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("reconciler.daemon")  # not __name__: "__main__" under python -m


# --------------------------------------------------------------------------- logging


_EXTRA = ("event", "environment", "commit")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the daemon's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One line of JSON; the ``extra`` fields ``event``, ``environment`` and ``commit`` when
        the log call gave them, so log pipelines can select on transitions."""
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(log_format: str, verbose: bool = False) -> None:
    """The daemon's handler on stderr (``--log-format text|json``, ``--verbose``); only the
    entry point configures logging, never the library."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
    # It logs every run at INFO and every coalesced tick (a pass longer than the interval)
    # at WARNING: polls, not transitions.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
