"""What an ablation measured: a cell per row × seed, a summary per row, and the statistics over
seeds (mean, 95 % interval, the paired difference to the baseline row)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfsearch.ablate.rows import BASELINE
from rfsearch.space.schema import SpaceConfig
from rfsearch.stats import Interval, mean_interval, paired_difference

@dataclass
class Cell:
    """One row × seed: where its runs are and what its retrain measured."""

    row: str
    seed: int
    top1: float
    best_top1: float | None
    params: int
    macs: int
    search_s: float
    retrain_s: float
    choices: dict[str, list[str]]
    skipped: bool = False  # finished in an earlier invocation and read back

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RowSummary:
    row: str
    label: str
    cells: list[Cell]
    learns_pi: bool = False  # the row's Row.learns_pi: its search learns π

    @property
    def top1(self) -> list[float]:
        return [c.top1 for c in self.cells]

    @property
    def by_seed(self) -> dict[int, float]:
        return {c.seed: c.top1 for c in self.cells}

    @property
    def interval(self) -> Interval:
        """Mean top-1 over seeds with the sample std and the 95 % Student-t interval (none for one seed)."""
        return mean_interval(self.top1)

    @property
    def mean(self) -> float:
        return self.interval.mean

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return self.interval.std

    @property
    def params(self) -> list[int]:
        return [c.params for c in self.cells]

    @property
    def macs(self) -> list[int]:
        return [c.macs for c in self.cells]


@dataclass
class AblationResult:
    out: Path
    rows: list[RowSummary]
    seeds: list[int]
    files: dict[str, Path] = field(default_factory=dict)
    wall_time_s: float = 0.0  # this invocation
    compute_s: float = 0.0  # search + retrain time of every cell, over all invocations
    baseline: str = BASELINE

    def row(self, name: str) -> RowSummary:
        return next(r for r in self.rows if r.row == name)

    def delta(self, name: str) -> Interval | None:
        """The row's top-1 minus the baseline row's on the same seed, over the seeds both ran: mean and
        95 % interval (None without a baseline row). Pairing removes what a seed does to both rows."""
        base = next((r for r in self.rows if r.row == self.baseline), None)
        return None if base is None else paired_difference(self.row(name).by_seed, base.by_seed)

    @property
    def skipped(self) -> list[tuple[str, int]]:
        return [(c.row, c.seed) for r in self.rows for c in r.cells if c.skipped]


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _bounds(ci: Interval | None) -> list[float] | None:
    return None if ci is None or ci.half_width is None else [round(ci.mean - ci.half_width, 3), round(ci.mean + ci.half_width, 3)]


def row_results(result: AblationResult, r: RowSummary) -> dict[str, Any]:
    """A row in ablation.json: top-1 mean, std and 95 % interval; the paired difference to the
    baseline with its interval (under the format's key ``delta_vs_no``)."""
    delta = result.delta(r.row)
    return {
        "row": r.row,
        "label": r.label,
        "top1_mean": round(r.mean, 3),
        "top1_std": round(r.std, 3),
        "top1_ci95": _bounds(r.interval),
        "delta_vs_no": None if delta is None else _round(delta.mean),
        "delta_ci95": _bounds(delta),
        "delta_resolved": None if delta is None or r.row == result.baseline else delta.resolved,
        "cells": [c.to_dict() for c in r.cells],
    }


EMBEDDED_SEEDS, REAL_DATA_SEEDS = 2, 5


def default_seeds(space: SpaceConfig) -> int:
    """Seeds per row when none are given. Real data: 5, so a 95 % interval spans ±1.24 std
    (t(0.975, 4) / √5) instead of ±9.0 with 2. The generated task keeps 2: its rows differ by
    tens of points and each of its retrains costs minutes of this project's 2 cores."""
    return EMBEDDED_SEEDS if space.data.dataset == "embedded" else REAL_DATA_SEEDS


