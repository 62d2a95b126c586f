"""An ablation's result as a terminal table, Markdown, CSV and plots."""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from pathlib import Path

from rich.table import Table

from rfsearch.ablate.results import AblationResult
from rfsearch.ablate.rows import ROWS
from rfsearch.console import console
from rfsearch.io import write_text
from rfsearch.stats import CONFIDENCE, Interval
from rfsearch.train import rundir


def _human(n: float) -> str:
    from rfsearch.report import human

    return human(n)


def _size(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return _human(lo) if _human(lo) == _human(hi) else f"{_human(lo)}–{_human(hi)}"


def _interval(ci: Interval | None, sign: str = "") -> str:
    """``[lo, hi]`` of an interval; ``-`` without one (one seed, or no baseline row)."""
    return "-" if ci is None or ci.half_width is None else f"[{ci.low:{sign}.2f}, {ci.high:{sign}.2f}]"


def _delta(d: Interval | None) -> str:
    if d is None:
        return "-"
    return f"{d.mean:+.2f}" if d.half_width is None else f"{d.mean:+.2f} {_interval(d, '+')}"


def reading(result: AblationResult, name: str) -> str:
    """Whether the row's paired difference to the baseline is resolved (its interval excludes 0) or within noise."""
    d = result.delta(name)
    if d is None or name == result.baseline:
        return "-"
    if d.half_width is None:
        return "one seed"
    if not d.resolved:
        return "within noise"
    return f"{'above' if d.mean > 0 else 'below'} {result.baseline}"


def table_rows(result: AblationResult) -> list[list[str]]:
    """The table as text cells: row, what, params, MACs, top-1 mean ± std, its 95 % interval, Δ vs the
    baseline (paired by seed) with its interval, the reading of Δ, top-1 per seed."""
    lines = []
    for r in result.rows:
        lines.append(
            [
                r.row,
                r.label,
                _size(r.params),
                _size(r.macs),
                f"{r.mean:.2f} ± {r.std:.2f}",
                _interval(r.interval),
                "-" if r.row == result.baseline else _delta(result.delta(r.row)),
                reading(result, r.row),
                " ".join(f"{t:.1f}" for t in r.top1),
            ]
        )
    return lines


def header(result: AblationResult) -> list[str]:
    return ["row", "what", "params", "MACs", "top-1 %", "95 % CI", f"Δ vs {result.baseline}", "Δ reading", "top-1 per seed"]


def _right(column: str) -> bool:
    return column in ("params", "MACs") or column.startswith("Δ vs")


def rich_table(result: AblationResult) -> Table:
    """The terminal table: as the Markdown one, without the long row descriptions."""
    table = Table(title=f"ablation: {len(result.rows)} rows × seeds {', '.join(map(str, result.seeds))} (final top-1 on the validation split)")
    columns = header(result)
    for column in columns:
        if column != "what":
            table.add_column(column, justify="right" if _right(column) else "left", no_wrap=column != "top-1 per seed")
    for line in table_rows(result):
        table.add_row(*(cell for column, cell in zip(columns, line) if column != "what"))
    return table


def interval_notes(result: AblationResult) -> str:
    """The reading under the table: how the intervals are made, and which differences to the baseline are resolved."""
    percent, base = f"{CONFIDENCE * 100:g} %", result.baseline
    text = (
        f"top-1 %: mean ± sample std over the seeds; {percent} CI: Student-t interval of the mean. "
        f"Δ vs {base}: the row's top-1 minus the `{base}` row's on the same seed, mean and {percent} t-interval over the seeds; "
        "resolved when the interval excludes 0.\n"
    )
    if not any(r.row == base for r in result.rows):
        return text + f"\nNo `{base}` row: no differences to read.\n"
    verdicts = {r.row: reading(result, r.row) for r in result.rows if r.row != base}
    if not verdicts:
        return text
    if all(v == "one seed" for v in verdicts.values()):
        return text + "\nOne seed: no interval, so no difference is resolved.\n"
    resolved = [f"`{n}` {_delta(result.delta(n))}" for n, v in verdicts.items() if v in (f"above {base}", f"below {base}")]
    noise = [f"`{n}` {_delta(result.delta(n))}" for n, v in verdicts.items() if v == "within noise"]
    text += "\nResolved: " + ("; ".join(resolved) if resolved else "none") + ".\n"
    text += "Within noise (the interval holds 0): " + ("; ".join(noise) if noise else "none") + ".\n"
    return text


def markdown(result: AblationResult) -> str:
    columns = header(result)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if _right(h) else "---" for h in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    text = "\n".join(lines) + "\n\n" + interval_notes(result)
    searched = [r for r in result.rows if ROWS[r.row].searched]
    if searched:
        text += "\nChosen ops (points per op) of the searched rows:\n\n"
        for r in searched:
            for c in r.cells:
                counts = Counter(" + ".join(v) for v in c.choices.values())
                text += f"- {r.row}, seed {c.seed}: " + ", ".join(f"{op} ×{n}" for op, n in counts.most_common()) + "\n"
    return text


CSV_COLUMNS = [
    "row", "label", "seeds", "params", "params_min", "params_max", "macs", "macs_min", "macs_max",
    "top1_mean", "top1_std", "top1_ci95_low", "top1_ci95_high", "top1_min", "top1_max",
    "delta_vs_no", "delta_ci95_low", "delta_ci95_high", "delta_resolved", "top1_per_seed",
]  # fmt: skip


def _csv_number(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def csv_text(result: AblationResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in result.rows:
        delta = result.delta(r.row)
        ci = r.interval
        writer.writerow(
            [
                r.row,
                r.label,
                " ".join(str(c.seed) for c in r.cells),
                round(statistics.fmean(r.params)),
                min(r.params),
                max(r.params),
                round(statistics.fmean(r.macs)),
                min(r.macs),
                max(r.macs),
                f"{r.mean:.3f}",
                f"{r.std:.3f}",
                _csv_number(ci.low),
                _csv_number(ci.high),
                f"{min(r.top1):.3f}",
                f"{max(r.top1):.3f}",
                "" if delta is None else f"{delta.mean:.3f}",
                "" if delta is None else _csv_number(delta.low),
                "" if delta is None else _csv_number(delta.high),
                "" if delta is None or r.row == result.baseline or delta.half_width is None else str(delta.resolved).lower(),
                " ".join(f"{t:.3f}" for t in r.top1),
            ]
        )
    return buffer.getvalue()


def write_outputs(result: AblationResult) -> dict[str, Path]:
    """ablation.md, ablation.csv, and (with matplotlib) accuracy.png and pi-<row>-seed<s>.png."""
    root = result.out
    files = {"markdown": write_text(root / "ablation.md", markdown(result)), "csv": write_text(root / "ablation.csv", csv_text(result))}
    try:
        from rfsearch import plots
    except ImportError:  # pragma: no cover - the plot module itself imports nothing optional
        return files
    if not plots.available():
        console.print("[yellow]no plots: matplotlib is not installed (pip install 'rfsearch[plot]')[/]")
        return files
    files["accuracy"] = plots.plot_accuracy(result, root / "accuracy.png")
    for r in result.rows:
        if not r.learns_pi:
            continue
        for c in r.cells:
            search_dir = root / r.row / f"seed{c.seed}" / "search"
            if (search_dir / rundir.HISTORY).exists():
                files[f"pi-{r.row}-seed{c.seed}"] = plots.plot_pi(search_dir, root / f"pi-{r.row}-seed{c.seed}.png", title=f"{r.label}, seed {c.seed}")
    return files
