"""Progress of a build, reported through one small object every executor drives.

:class:`BuildProgress` is the interface: ``start(total, done)``, ``cell_started(cell)``,
``cell_finished(result, done)``, ``message(text)``, ``close()``. Two reporters implement it:

* :class:`LineProgress` writes one line per event (a cell built or failed, a skip, a toolchain
  step): logs, CI, pipes. It is also what a plain ``progress=callable`` becomes.
* :class:`TerminalProgress` keeps one live bar at the bottom of a terminal (cells done / total,
  cells running, elapsed, ETA; redrawn twice a second and fitted to the terminal's width), with the
  same lines printed above it.

:func:`reporter` picks one for a stream (the bar only when it is a terminal).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import IO, Any, Callable

REDRAW_S = 0.5


class BuildProgress:
    """The events of a build (every method may be called from any build thread)."""

    def start(self, total: int, done: int) -> None:
        """``total`` cells selected, ``done`` of them settled already (skipped or up to date)."""

    def cell_started(self, cell: Any) -> None:
        """A cell was handed to a builder."""

    def cell_finished(self, result: Any, done: int) -> None:
        """A cell ended (``result.status`` built | failed); ``done`` cells are settled now."""

    def message(self, text: str) -> None:
        """Anything else worth a line (a skip, an up-to-date cell, a toolchain install)."""

    def close(self) -> None:
        """The build is over (also after an error or Ctrl-C)."""


def _label(cell: Any) -> str:
    return f"{cell.id[:12]} {cell.model} x {cell.target} [{','.join(cell.compute_capabilities)}] x {cell.toolchain}"


def cell_line(result: Any, done: int, total: int) -> str:
    """The line of a finished cell: ``[3/8] built <cell> in 1.2 s -> blobs/... (N bytes)``."""
    where = f" on {result.worker}" if getattr(result, "worker", None) else ""
    if result.status == "built" and result.artifact is not None:
        return (f"[{done}/{total}] built {_label(result.cell)} in {result.seconds:.1f} s -> {result.artifact.path} "
                f"({result.artifact.size} bytes){where}")
    return f"[{done}/{total}] FAILED {_label(result.cell)}{where}: {result.error}"


class LineProgress(BuildProgress):
    """One line per event through ``write`` (no terminal control characters)."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.total = 0

    def start(self, total: int, done: int) -> None:
        self.total = total

    def cell_finished(self, result: Any, done: int) -> None:
        self.write(cell_line(result, done, self.total))

    def message(self, text: str) -> None:
        self.write(text)


def _clock(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class TerminalProgress(BuildProgress):
    """A live bar on the last line of a terminal, lines above it (see the module doc)."""

    def __init__(self, stream: IO[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.total = self.done = self.settled_at_start = 0
        self.running = 0
        self.t0 = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._shown = False

    # -- events ------------------------------------------------------------------------------------
    def start(self, total: int, done: int) -> None:
        with self._lock:
            self.total, self.done, self.settled_at_start = total, done, done
            self.t0 = self.clock()
            self._draw()
        self._ticker = threading.Thread(target=self._tick, name="rtxpack-progress", daemon=True)
        self._ticker.start()

    def cell_started(self, cell: Any) -> None:
        with self._lock:
            self.running += 1
            self._draw()

    def cell_finished(self, result: Any, done: int) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            self.done = done
            if result.status == "built" and result.artifact is not None:   # short: one terminal line
                c = result.cell
                line = (f"[{done}/{self.total}] built {c.model} x {c.target} [{','.join(c.compute_capabilities)}] "
                        f"x {c.toolchain} in {result.seconds:.1f} s ({result.artifact.size} bytes)")
                self._print(line[: max(20, self._width() - 1)])
            else:                                                            # a failure is said in full
                self._print(cell_line(result, done, self.total))

    def message(self, text: str) -> None:
        with self._lock:
            self._print(text)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        with self._lock:
            if self._shown:
                self._write("\r\x1b[2K")
                self._shown = False

    # -- drawing -----------------------------------------------------------------------------------
    def bar(self, width: int) -> str:
        """The bar's text for a terminal ``width`` columns wide (never longer than ``width - 1``)."""
        elapsed = self.clock() - self.t0
        built = self.done - self.settled_at_start
        left = self.total - self.done
        if built > 0 and left > 0:
            eta = _clock(elapsed / built * left)
        else:
            eta = "--:--" if left else _clock(0)
        info = f" {self.done}/{self.total} cells, {self.running} running, {_clock(elapsed)} elapsed, ETA {eta}"
        room = width - 1 - len("building ") - len(info) - 2
        if room >= 10:
            filled = int(room * self.done / self.total) if self.total else room
            text = f"building [{'#' * filled}{'.' * (room - filled)}]{info}"
        elif len("building" + info) < width:
            text = "building" + info
        else:                     # a narrow terminal: the numbers matter more than the words
            text = f"{self.done}/{self.total} cells {self.running} running {_clock(elapsed)} ETA {eta}"
        return text[: max(0, width - 1)]

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return shutil.get_terminal_size().columns

    def _draw(self) -> None:
        self._write("\r\x1b[2K" + self.bar(self._width()))
        self._shown = True

    def _print(self, line: str) -> None:
        self._write("\r\x1b[2K" + line + "\n")
        self._draw()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):    # the terminal went away: progress is not worth a failed build
            self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW_S):
            with self._lock:
                self._draw()


def reporter(stream: IO[str] | None = None) -> BuildProgress:
    """A bar on a terminal, else one line per event (``stream`` defaults to stderr)."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        return TerminalProgress(stream)
    return LineProgress(lambda s: print(s, file=stream, flush=True))


def as_progress(progress: BuildProgress | Callable[[str], None] | None) -> BuildProgress:
    """What an executor drives: the given reporter, a callable wrapped in :class:`LineProgress`, or a no-op."""
    if isinstance(progress, BuildProgress):
        return progress
    if progress is None:
        return BuildProgress()
    return LineProgress(progress)
