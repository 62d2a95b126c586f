"""One rich console for all output, so progress and tables never interleave.

Rich never wraps text (soft wrap): a path or a message stays one line at any width. On a terminal
tables fold their cells to the width and progress is a live bar; anywhere else (a log file, a
pipe) tables grow to their natural width and progress is plain lines, one per epoch and at least
one a minute, because a live bar writes nothing there until it ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)

PLAIN_INTERVAL_S = 60.0  # the longest a log file waits for a progress line


def print_table(table: Table) -> None:
    """Print ``table`` with no cell truncated: folded to a terminal's width, whole elsewhere."""
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    with _width(max(console.width, natural)):
        console.print(table)


@contextlib.contextmanager
def _width(width: int) -> Iterator[None]:
    previous = console.width
    console.width = width
    try:
        yield
    finally:
        console.width = previous


def duration(seconds: float) -> str:
    """``75`` → ``1m15s``: short enough for a progress line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TrainingProgress:
    """Progress of a training loop over ``total`` steps, with the loop's numbers as ``stats``.

    A rich bar on a terminal; elsewhere a plain line (step/total, stats, elapsed, ETA) at every
    :meth:`epoch_done` and at least every ``interval`` seconds. Disabled (quiet runs, ranks > 0),
    it prints nothing. Entering it names the run directory, so a log says where the run writes.
    """

    def __init__(self, name: str, total: int, run_dir: Path, *, completed: int = 0, enabled: bool = True, interval: float = PLAIN_INTERVAL_S) -> None:
        self.name, self.total, self.run_dir, self.enabled, self.interval = name, total, run_dir, enabled, interval
        self.done = self._start_step = completed
        self.stats = ""
        self.live = enabled and console.is_terminal
        self._bar = Progress(
            TextColumn(f"[bold]{name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
        )
        self._task = self._bar.add_task(name, total=total, completed=completed, stats="")
        self._started = self._last_line = time.monotonic()

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            console.print(f"[bold]{self.name}[/] → {self.run_dir}")
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, advance: int = 0, stats: str | None = None) -> None:
        """``advance`` steps done; ``stats`` the loop's numbers now ("epoch 2/8 · loss 0.41 …")."""
        self.done += advance
        if stats is not None:
            self.stats = stats
        self._bar.update(self._task, advance=advance, stats=self.stats)
        if self.enabled and not self.live and time.monotonic() - self._last_line >= self.interval:
            self.line()

    def epoch_done(self, stats: str | None = None, summary: str | None = None) -> None:
        """End of an epoch: a plain progress line (off a terminal), and ``summary`` above the bar."""
        self.update(stats=stats)
        if self.enabled and not self.live:
            self.line()
        if self.enabled and summary:
            console.print(summary)

    def line(self) -> None:
        """One plain progress line: step/total, stats, elapsed and the time left at this rate."""
        now = time.monotonic()
        elapsed, ran = now - self._started, self.done - self._start_step
        eta = duration(elapsed / ran * (self.total - self.done)) if ran > 0 else "?"
        stats = f" · {self.stats}" if self.stats else ""
        console.print(f"{self.name} step {self.done}/{self.total}{stats} · elapsed {duration(elapsed)} · ETA {eta}", markup=False)
        self._last_line = now

