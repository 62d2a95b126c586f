"""The ablation's statistics as the user reads them (table, Markdown, CSV, ablation.json, plot),
on hand-made results whose intervals are computed by hand; no training."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from rfsearch import load_space
from rfsearch.ablate import AblationResult, Cell, RowSummary, csv_text, default_seeds, markdown, reading, row_results, table_rows
from rfsearch.plots import plot_accuracy

SEEDS = [0, 1, 2, 3, 4]
PLAIN = [80.0, 82.0, 84.0, 86.0, 88.0]  # mean 84, std √10, half 2.7764 · √10 / √5 = 3.9265
OFFSETS = {
    "global": [2.0, 3.0, 2.0, 3.0, 2.5],  # Δ mean 2.5, std 0.5, half 0.6208: resolved, above
    "random": [5.0, -5.0, 3.0, -3.0, 0.0],  # Δ mean 0: within noise
    "pmpl": [-2.0, -3.0, -2.0, -3.0, -2.5],  # resolved, below
}


def _row(name: str, top1: list[float], seeds: list[int] = SEEDS) -> RowSummary:
    cells = [Cell(name, s, t, t, 1000, 2000, 0.0, 1.0, {"features.1": ["skip"]}) for s, t in zip(seeds, top1, strict=True)]
    return RowSummary(name, name, cells)


def _result(tmp_path: Path) -> AblationResult:
    rows = [_row("no", PLAIN)] + [_row(n, [p + o for p, o in zip(PLAIN, off, strict=True)]) for n, off in OFFSETS.items()]
    return AblationResult(tmp_path, rows, SEEDS)


def test_intervals_and_paired_differences_in_every_output(tmp_path: Path) -> None:
    result = _result(tmp_path)
    assert result.row("no").interval.half_width == pytest.approx(3.9265, abs=1e-3)
    d = result.delta("global")
    assert d is not None and d.mean == pytest.approx(2.5) and d.half_width == pytest.approx(0.62083, abs=1e-4)
    assert [reading(result, n) for n in ("no", "global", "random", "pmpl")] == ["-", "above no", "within noise", "below no"]

    cells = {line[0]: line for line in table_rows(result)}
    assert cells["no"][4:7] == ["84.00 ± 3.16", "[80.07, 87.93]", "-"]
    assert cells["global"][6] == "+2.50 [+1.88, +3.12]" and cells["global"][7] == "above no"

    md = markdown(result)
    assert "Resolved: `global` +2.50 [+1.88, +3.12]; `pmpl` -2.50 [-3.12, -1.88]." in md
    assert "Within noise (the interval holds 0): `random` +0.00 [" in md

    lines = {line["row"]: line for line in csv.DictReader(io.StringIO(csv_text(result)))}
    assert (lines["global"]["delta_ci95_low"], lines["global"]["delta_ci95_high"], lines["global"]["delta_resolved"]) == ("1.879", "3.121", "true")
    assert lines["random"]["delta_resolved"] == "false" and lines["no"]["delta_resolved"] == ""
    assert (lines["no"]["top1_ci95_low"], lines["no"]["top1_ci95_high"]) == ("80.074", "87.926")

    stored = row_results(result, result.row("pmpl"))
    assert stored["delta_vs_no"] == -2.5 and stored["delta_ci95"] == [-3.121, -1.879] and stored["delta_resolved"] is True
    # pmpl 78, 79, 82, 83, 85.5: mean 81.5, s = √9.25 = 3.0414, half = 2.7764 · 3.0414 / √5 = 3.7763
    assert stored["top1_ci95"] == [pytest.approx(77.724, abs=1e-3), pytest.approx(85.276, abs=1e-3)]

    png = plot_accuracy(result, tmp_path / "accuracy.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_differences_pair_by_seed_and_one_seed_has_no_interval(tmp_path: Path) -> None:
    # the no row ran seeds 0-2, global only 1-2: only the shared seeds are paired
    result = AblationResult(tmp_path, [_row("no", [50.0, 60.0, 70.0], [0, 1, 2]), _row("global", [61.0, 72.0], [1, 2])], [0, 1, 2])
    d = result.delta("global")
    assert d is not None and d.n == 2 and d.mean == pytest.approx(1.5)
    single = AblationResult(tmp_path, [_row("no", [50.0], [0]), _row("global", [61.0], [0])], [0])
    assert reading(single, "global") == "one seed" and table_rows(single)[1][5:7] == ["-", "+11.00"]
    assert "One seed: no interval, so no difference is resolved." in markdown(single)
    assert plot_accuracy(single, tmp_path / "one.png").is_file()


def test_default_seeds_five_on_real_data_two_on_the_embedded_task() -> None:
    space = load_space("spaces/mbv2_metapool.yaml")
    assert default_seeds(space) == 2
    assert default_seeds(load_space("spaces/mbv2_metapool.yaml", ["data.dataset=fashion_mnist"])) == 5


def test_the_baseline_is_data_not_a_row_name(tmp_path: Path) -> None:
    """The row compared with is the catalogue's ``baseline`` row; a result may name another."""
    from rfsearch.ablate import BASELINE, ROWS

    assert BASELINE == "no" and [r.name for r in ROWS.values() if r.baseline] == ["no"]
    rows = [_row("no", PLAIN)] + [_row(n, [p + o for p, o in zip(PLAIN, off, strict=True)]) for n, off in OFFSETS.items()]
    result = AblationResult(tmp_path, rows, SEEDS, baseline="global")
    assert reading(result, "no") == "below global" and reading(result, "global") == "-"
    assert markdown(result).startswith("| row | what | params | MACs | top-1 % | 95 % CI | Δ vs global |")
    assert table_rows(result)[1][6] == "-"  # the global row against itself
