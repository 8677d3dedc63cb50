"""Progress of long work (training, model builds, evaluations, benchmarks) that a person waits on.

On a terminal it is a rich progress bar with the elapsed time and an ETA; anywhere else (CI, a
pipe, a log file) it is a plain line at the start, one every `every_s` seconds, and one at the end,
so a slow machine never looks hung and a log stays readable.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """`with Progress("training anomaly", total=120, unit="steps") as p: ... p.advance(note="loss 0.01")`."""

    def __init__(self, description: str, total: float, unit: str = "", stream: TextIO | None = None, every_s: float = 10.0,
                 bar: bool | None = None, clock=time.monotonic) -> None:
        self.description = description
        self.total = max(float(total), 1e-9)
        self.unit = unit
        self._unit = f" {unit}" if unit else ""
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.done = 0.0
        self.note = ""
        self.started = clock()
        self._last_line = self.started
        self._closed = False
        self._bar = None
        if bar if bar is not None else is_terminal(self.stream):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                     console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task(description, total=self.total, note="")
            self._bar.start()
        else:
            self._line(f"started ({self._amount(self.total)}{self._unit})")

    def _amount(self, value: float) -> str:
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.description}: {text}\n")
        self.stream.flush()

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None until something is done."""
        if self.done <= 0:
            return None
        elapsed = self.clock() - self.started
        return elapsed * (self.total - self.done) / self.done

    def update(self, done: float, note: str = "") -> None:
        self.done = min(float(done), self.total)
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, note=self.note)
            return
        now = self.clock()
        if now - self._last_line >= self.every_s and self.done < self.total:
            self._last_line = now
            eta = self.eta_s()
            left = f", about {_clock(eta)} left" if eta is not None else ""
            self._line(f"{self._amount(self.done)}/{self._amount(self.total)}{self._unit} ({100 * self.done / self.total:.0f}%), "
                       f"{_clock(now - self.started)} elapsed{left}" + (f", {self.note}" if self.note else ""))

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        self.update(self.done + amount, note)

    def close(self, note: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self.note = note or self.note
        if self._bar is not None:
            self._bar.update(self._task, note=self.note)
            self._bar.stop()
            return
        status = "done" if self.done >= self.total else f"stopped at {self._amount(self.done)}/{self._amount(self.total)}{self._unit}"
        self._line(f"{status} in {_clock(self.clock() - self.started)}" + (f", {self.note}" if self.note else ""))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()
