"""Progress of long work on stderr, for people watching a terminal.

The work itself does not know about progress: it logs what it does at INFO (a tag
moved, an artifact copied, a record written) or, where a daemon would repeat it every
run, at DEBUG in a module named in ``STEPS`` (a tag resolved, a signature accepted),
and :class:`Progress` listens to those records under the ``reconciler`` logger for as
long as a task runs. ``auto`` shows one status line, redrawn in place, only when
stderr is a terminal; ``plain`` prints each step on a line of its own (for CI logs);
``none`` shows nothing. stdout (the result, ``--json``) is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

MODES = ("auto", "plain", "none")
STEPS = ("reconciler.proposals.releases",)  # loggers whose DEBUG records are steps too
_COUNTED = {"moved ": "moved", "copied ": "copied", "recorded ": "recorded", "pruned ": "pruned"}
_SPIN = "|/-\\"


class _Listener(logging.Handler):
    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        step = record.levelno == logging.DEBUG and record.name in STEPS
        if record.levelno != logging.INFO and not step:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad log call must not break the work
            return
        self.progress.step(message)


class Progress:
    """``task(title)`` shows what happens until the block ends."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = mode == "auto" and tty
        self.plain = mode == "plain"
        self.counts: dict[str, int] = {}
        self.last = ""
        self.title = ""
        self._started = 0.0
        self._lock = threading.Lock()
        self._width = 0

    @property
    def enabled(self) -> bool:
        """Anything is shown: a live line (a terminal) or plain lines."""
        return self.live or self.plain

    @contextlib.contextmanager
    def task(self, title: str) -> Iterator[Progress]:
        """Show the work under ``title`` until the block ends, by listening to the package's
        log records; loggers' levels are restored afterwards."""
        if not self.enabled:
            yield self
            return
        self.title, self.counts, self.last = title, {}, ""
        self._started = time.monotonic()
        logger = logging.getLogger("reconciler")
        listener = _Listener(self)
        levels = {name: logging.getLogger(name).level for name in ("reconciler", *STEPS)}
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # the user's own handler keeps its level
        for name in STEPS:
            logging.getLogger(name).setLevel(logging.DEBUG)
        logger.addHandler(listener)
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True, name="progress")
        if self.live:
            ticker.start()
        try:
            yield self
        finally:
            stop.set()
            if self.live:
                ticker.join(timeout=1.0)
            logger.removeHandler(listener)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            self._finish()

    def step(self, message: str) -> None:
        """One step of the work (a log message): counted when it moved, copied, recorded or
        pruned something, and shown."""
        with self._lock:
            for prefix, name in _COUNTED.items():
                if message.startswith(prefix):
                    self.counts[name] = self.counts.get(name, 0) + 1
            self.last = message
            if self.plain:
                print(f"  … {message}", file=self.stream, flush=True)
            else:
                self._draw()

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            with self._lock:
                self._draw()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        spin = _SPIN[int(elapsed * 5) % len(_SPIN)]
        counts = " · ".join(f"{n} {name}" for name, n in self.counts.items())
        parts = [f"{spin} {self.title} {elapsed:.0f}s", counts, self.last]
        return " · ".join(p for p in parts if p)

    def _draw(self) -> None:
        if not self.live:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = self._line()[:width]
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def _finish(self) -> None:
        with self._lock:
            if self.live and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0
            elif self.plain:
                elapsed = time.monotonic() - self._started
                counts = ", ".join(f"{n} {name}" for name, n in self.counts.items())
                done = f"  … {self.title}: done in {elapsed:.1f}s"
                print(done + (f" ({counts})" if counts else ""), file=self.stream, flush=True)
