"""The paper's ablation in one run: every row (a fixed enhancer, or a strategy) over several seeds,
retrained with one recipe and budget, summarised as a table (Markdown, CSV) and plots.

Rows. The first five are the paper's Table 3, under its names and with its meanings; ``pmpl3``
is PMPL over Random's three enhancers (its like-for-like partner); the rest are this project's.

==============  ==============================================================================
``no``          No: ``skip`` at every point and no post layers (the plain backbone)
``local``       Local: ``avgpool3`` at every point, no search
``global``      Global: ``global`` (spatial separable pooling) at every point, no search
``random``      Random: per point one of skip / avgpool3 / global, drawn from the seed
``pmpl``        PMPL over the space's candidates (the method)
``pmpl3``       PMPL over skip / avgpool3 / global
``random8``     one of the space's candidates per point, drawn from the seed
``pmpl-local``  PMPL over the space's local candidates (skip, avg and max pools)
``uniform``     single-path uniform sampling over the space's candidates, then greedy choice
``se``          SE (Hu et al.) at every point; ``se-mnv3`` MobileNetV3's SE block
``cbam``        CBAM (Woo et al.) at every point
``coordatt``    Coordinate Attention at every point
==============  ==============================================================================

A searched row runs :func:`rfsearch.search.loop.run_search` with ``strategy.name`` set; every row
then runs :func:`rfsearch.train.retrain.run_retrain` with the space's ``train.retrain``. Seed ``s``
sets ``train.seed = s`` for both; the data (``data.embedded.seed``) stays the same for all.

Layout of an ablation directory::

    ablation.json            rows, seeds, space file, and the results once known
    config.yaml              the space as resolved (defaults and --set applied)
    <row>/seed<s>/search/    a search run (searched rows only)
    <row>/seed<s>/retrain/   a retrain run: metrics.json with "finished": true marks the cell done
    ablation.md, ablation.csv, accuracy.png, pi-<row>-seed<s>.png

An interrupted ablation continues with ``resume``: finished cells are read back, an unfinished
search or retrain continues from its own checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from rfsearch.arch import Arch, fixed_arch
from rfsearch.console import console
from rfsearch.errors import RfsearchError
from rfsearch.io import read_json, write_json, write_text
from rfsearch.ops.registry import Candidate, expand_candidates
from rfsearch.space.schema import SpaceConfig
from rfsearch.strategies import switched_to
from rfsearch.stats import CONFIDENCE, Interval, mean_interval, paired_difference
from rfsearch.train import rundir

ABLATION_FORMAT = "rfsearch-ablation/1"
MANIFEST = "ablation.json"
THREE_ENHANCERS: tuple[Any, ...] = ("skip", {"avgpool": {"k": 3}}, "global")
"""Table 3's three enhancers: no, local (average pooling, k = 3), global."""


@dataclass(frozen=True)
class Row:
    """One row of the ablation, as data: which candidates every point gets and who chooses.

    ``candidates``: entries in the space's own candidate syntax (a candidate the space also has,
    by name, keeps the space's parameters); ``kinds``: the space's candidates of these ops; neither:
    the space's candidates. One candidate and no ``strategy`` is a fixed row (no search).
    ``plain``: no post layers either, so the row is the backbone itself.
    """

    name: str
    label: str
    candidates: tuple[Any, ...] | None = None
    kinds: tuple[str, ...] | None = None
    strategy: str | None = None
    plain: bool = False

    @property
    def searched(self) -> bool:
        return self.strategy is not None


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("no", "No (skip everywhere: the backbone)", candidates=("skip",), plain=True),
        Row("local", "Local (avgpool3 everywhere)", candidates=({"avgpool": {"k": 3}},)),
        Row("global", "Global (spatial separable pooling everywhere)", candidates=("global",)),
        Row("random", "Random (skip / avgpool3 / global per point)", candidates=THREE_ENHANCERS, strategy="random"),
        Row("pmpl", "PMPL", strategy="pmpl"),
        Row("pmpl3", "PMPL over skip / avgpool3 / global", candidates=THREE_ENHANCERS, strategy="pmpl"),
        Row("random8", "random choice among the space's candidates", strategy="random"),
        Row("pmpl-local", "PMPL over the local candidates", kinds=("skip", "avgpool", "maxpool"), strategy="pmpl"),
        Row("uniform", "uniform sampling", strategy="uniform"),
        Row("se", "SE (r = 16)", candidates=("se",)),
        Row("se-mnv3", "MobileNetV3's SE block", candidates=("se_mnv3",)),
        Row("cbam", "CBAM", candidates=("cbam",)),
        Row("coordatt", "CoordAttention", candidates=("coordatt",)),
    )
}
DEFAULT_ROWS: tuple[str, ...] = ("no", "local", "global", "random", "pmpl3", "pmpl")


def parse_rows(text: str | Iterable[str]) -> list[str]:
    """``"no,random,pmpl"`` → the row names, checked, in the order given, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise RfsearchError(f"unknown ablation row(s) {unknown}; known: {', '.join(ROWS)}")
    if not names:
        raise RfsearchError(f"no ablation rows given; known: {', '.join(ROWS)}")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- spaces and archs


def _variant(space: SpaceConfig, edit: Callable[[dict[str, Any]], None]) -> SpaceConfig:
    """A re-validated copy of ``space`` after ``edit`` changed its plain-data form."""
    data = space.model_dump(mode="json")
    edit(data)
    return SpaceConfig.model_validate(data)


def seed_space(space: SpaceConfig, seed: int) -> SpaceConfig:
    """The space with ``train.seed = seed`` (search and retrain); the data's own seed is untouched."""
    return _variant(space, lambda d: d["train"].__setitem__("seed", seed))


def row_candidates(space: SpaceConfig, row: Row, own: list[Candidate]) -> list[Candidate]:
    """The candidates ``row`` puts where the space has ``own`` (the space's list or a rule's)."""
    if row.kinds is not None:
        kept = [c for c in own if c.op in row.kinds]
        if len(kept) < 2:
            raise RfsearchError(f"row '{row.name}' needs at least two candidates of {list(row.kinds)}; the space has {[c.name for c in own]}")
        return kept
    if row.candidates is None:
        return own
    known = {c.name: c for group in space.candidates for c in group} | {c.name: c for c in own}
    return [known.get(c.name, c) for entry in row.candidates for c in expand_candidates(entry)]


def search_space(space: SpaceConfig, row: Row) -> SpaceConfig:
    """The space a searched row runs: its strategy (keeping the options that strategy accepts) and
    the row's candidates at every point."""
    assert row.strategy is not None
    strategy = switched_to(space.strategy, row.strategy).model_dump(mode="json")

    def group(own: list[Candidate]) -> list[list[dict[str, Any]]]:
        return [[c.to_dict() for c in row_candidates(space, row, own)]]

    def edit(data: dict[str, Any]) -> None:
        data["strategy"] = strategy
        data["candidates"] = group([c for g in space.candidates for c in g])
        for rule, original in zip(data["insert"], space.insert):
            if original.candidates is not None:
                rule["candidates"] = group([c for g in original.candidates for c in g])

    return _variant(space, edit)


def fixed_row_arch(space: SpaceConfig, row: Row, num_classes: int | None) -> Arch:
    """The arch of a fixed row: its one candidate at every insertion point of ``space``."""
    from rfsearch.graph.backbone import build_space_backbone
    from rfsearch.graph.points import discover_points

    assert not row.searched
    backbone = build_space_backbone(space, num_classes)
    points = discover_points(backbone, space)
    fixed = []
    for p in points:
        (cand,) = row_candidates(space, row, list(p.candidates))
        fixed.append(dataclasses.replace(p, candidates=(cand,), post=() if row.plain else p.post))
    return fixed_arch(fixed, lambda p: [p.candidates[0].name], backbone=space.backbone, num_classes=num_classes, space=space.name, strategy=row.name)


# ----------------------------------------------------------------------------- results


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

    def row(self, name: str) -> RowSummary:
        return next(r for r in self.rows if r.row == name)

    def delta(self, name: str) -> Interval | None:
        """The row's top-1 minus the ``no`` row's on the same seed, over the seeds both ran: mean and
        95 % interval (None without a ``no`` row). Pairing removes what a seed does to both rows."""
        base = next((r for r in self.rows if r.row == "no"), None)
        return None if base is None else paired_difference(self.row(name).by_seed, base.by_seed)

    @property
    def skipped(self) -> list[tuple[str, int]]:
        return [(c.row, c.seed) for r in self.rows for c in r.cells if c.skipped]


def _finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / rundir.METRICS
    if not path.exists():
        return None
    try:
        metrics = read_json(path)
    except ValueError:
        return None
    return metrics if metrics.get("finished") else None


def _fresh(run_dir: Path) -> Path:
    """A run directory to start anew: leftovers of an attempt killed before its first checkpoint go."""
    if run_dir.exists() and not (run_dir / rundir.CHECKPOINT).exists():
        shutil.rmtree(run_dir)
    return run_dir


# ----------------------------------------------------------------------------- the run


def run_ablation(
    space: SpaceConfig,
    out: str | Path | None = None,
    *,
    rows: Sequence[str] = DEFAULT_ROWS,
    seeds: int | Sequence[int] | None = None,
    resume: str | Path | None = None,
    space_file: str | None = None,
    show_progress: bool = True,
) -> AblationResult:
    """Run (or continue, with ``resume``) every row × seed; write the table and the plots.

    ``seeds``: a count (``train.seed``, ``train.seed + 1``, …) or the seeds themselves; None:
    :func:`default_seeds` of the space.
    """
    from rfsearch.search.loop import run_search
    from rfsearch.train.setup import class_count
    from rfsearch.train.retrain import run_retrain

    started = time.perf_counter()
    names = parse_rows(rows)
    seeds = default_seeds(space) if seeds is None else seeds
    seed_list = list(range(space.train.seed, space.train.seed + seeds)) if isinstance(seeds, int) else list(dict.fromkeys(seeds))
    if not seed_list:
        raise RfsearchError("an ablation needs at least one seed")
    if resume is not None:
        root = Path(resume)
        if not (root / MANIFEST).exists():
            raise RfsearchError(f"{root} is not an ablation directory (no {MANIFEST})")
        manifest = read_json(root / MANIFEST)
    else:
        root = Path(out) if out is not None else Path("runs") / f"ablate-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (root / MANIFEST).exists():
            raise RfsearchError(f"{root} already holds an ablation; continue it with --resume {root} or choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        rundir.save_config(root, space)
        manifest = {"format": ABLATION_FORMAT, "space": space.name, "space_file": space_file, "compute_s": {}}
    manifest.update(rows=names, seeds=seed_list)
    write_json(root / MANIFEST, manifest)

    num_classes = class_count(space.backbone, space.data)
    fixed_archs: dict[str, Arch] = {}
    summaries: list[RowSummary] = []
    total = len(names) * len(seed_list)
    for r_i, name in enumerate(names):
        row = ROWS[name]
        cells = []
        for s_i, seed in enumerate(seed_list):
            where = f"[{r_i * len(seed_list) + s_i + 1}/{total}] {name} seed {seed}"
            cell_dir = root / name / f"seed{seed}"
            retrain_dir = cell_dir / "retrain"
            metrics = _finished_metrics(retrain_dir)
            search_s = 0.0
            if metrics is not None:
                arch = Arch.load(retrain_dir)
                summary = cell_dir / "search" / "summary.json"
                search_s = read_json(summary)["wall_time_s"] if summary.exists() else 0.0
                console.print(f"[bold]{where}[/]: finished earlier, top-1 {metrics['final']['top1']:.2f}% ({retrain_dir})")
                cells.append(_cell(name, seed, arch, metrics, search_s, skipped=True))
                continue
            sspace = seed_space(space, seed)
            if row.searched:
                search_dir = cell_dir / "search"
                rspace = search_space(sspace, row)
                if (search_dir / "summary.json").exists():
                    arch = Arch.load(search_dir)
                    search_s = read_json(search_dir / "summary.json")["wall_time_s"]
                else:
                    resuming = (search_dir / rundir.CHECKPOINT).exists()
                    console.print(f"[bold]{where}[/]: {'resuming the ' if resuming else ''}{row.strategy} search → {search_dir}")
                    found = run_search(rspace, search_dir if resuming else _fresh(search_dir), resume=search_dir if resuming else None, show_progress=show_progress)
                    arch, search_s = found.arch, found.wall_time_s
            else:
                if name not in fixed_archs:
                    fixed_archs[name] = fixed_row_arch(space, row, num_classes)
                arch = fixed_archs[name]
            resuming = (retrain_dir / rundir.CHECKPOINT).exists()
            console.print(f"[bold]{where}[/]: {'resuming the ' if resuming else ''}retrain → {retrain_dir}")
            trained = run_retrain(sspace, arch, retrain_dir if resuming else _fresh(retrain_dir), resume=retrain_dir if resuming else None, show_progress=show_progress)
            metrics = trained.metrics()
            console.print(f"[bold]{where}[/]: top-1 {metrics['final']['top1']:.2f}% in {trained.wall_time_s:.0f}s")
            cell = _cell(name, seed, trained.arch, metrics, search_s)
            cells.append(cell)
            manifest["compute_s"][f"{name}/{seed}"] = round(cell.search_s + cell.retrain_s, 1)
            write_json(root / MANIFEST, manifest)
        summaries.append(RowSummary(name, row.label, cells))

    result = AblationResult(root, summaries, seed_list)
    result.compute_s = sum(c.search_s + c.retrain_s for r in summaries for c in r.cells)
    result.files = write_outputs(result)
    result.wall_time_s = time.perf_counter() - started
    manifest["results"] = {
        "confidence": CONFIDENCE,
        "rows": [_row_results(result, r) for r in summaries],
        "compute_s": round(result.compute_s, 1),
    }
    write_json(root / MANIFEST, manifest)
    return result


def _cell(row: str, seed: int, arch: Arch, metrics: dict[str, Any], search_s: float, skipped: bool = False) -> Cell:
    return Cell(
        row=row,
        seed=seed,
        top1=float(metrics["final"]["top1"]),
        best_top1=metrics["best"]["top1"],
        params=int(metrics["params"]),
        macs=int(metrics["macs"]),
        search_s=round(float(search_s), 1),
        retrain_s=round(float(metrics["wall_time_s"]), 1),
        choices=arch.choices(),
        skipped=skipped,
    )


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _bounds(ci: Interval | None) -> list[float] | None:
    return None if ci is None or ci.half_width is None else [round(ci.mean - ci.half_width, 3), round(ci.mean + ci.half_width, 3)]


def _row_results(result: AblationResult, r: RowSummary) -> dict[str, Any]:
    """A row in ablation.json: top-1 mean, std and 95 % interval; the paired difference to ``no`` with its interval."""
    delta = result.delta(r.row)
    return {
        "row": r.row,
        "label": r.label,
        "top1_mean": round(r.mean, 3),
        "top1_std": round(r.std, 3),
        "top1_ci95": _bounds(r.interval),
        "delta_vs_no": None if delta is None else _round(delta.mean),
        "delta_ci95": _bounds(delta),
        "delta_resolved": None if delta is None or r.row == "no" else delta.resolved,
        "cells": [c.to_dict() for c in r.cells],
    }


EMBEDDED_SEEDS, REAL_DATA_SEEDS = 2, 5


def default_seeds(space: SpaceConfig) -> int:
    """Seeds per row when none are given. Real data: 5, so a 95 % interval spans ±1.24 std
    (t(0.975, 4) / √5) instead of ±9.0 with 2. The generated task keeps 2: its rows differ by
    tens of points and each of its retrains costs minutes of this project's 2 cores."""
    return EMBEDDED_SEEDS if space.data.dataset == "embedded" else REAL_DATA_SEEDS


# ----------------------------------------------------------------------------- table and files


def _human(n: float) -> str:
    from rfsearch.report import human

    return human(n)


def _size(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return _human(lo) if _human(lo) == _human(hi) else f"{_human(lo)}–{_human(hi)}"


def _interval(ci: Interval | None, sign: str = "") -> str:
    """``[lo, hi]`` of an interval; ``-`` without one (one seed, or no ``no`` row)."""
    return "-" if ci is None or ci.half_width is None else f"[{ci.low:{sign}.2f}, {ci.high:{sign}.2f}]"


def _delta(d: Interval | None) -> str:
    if d is None:
        return "-"
    return f"{d.mean:+.2f}" if d.half_width is None else f"{d.mean:+.2f} {_interval(d, '+')}"


def reading(result: AblationResult, name: str) -> str:
    """Whether the row's paired difference to ``no`` is resolved (its interval excludes 0) or within noise."""
    d = result.delta(name)
    if d is None or name == "no":
        return "-"
    if d.half_width is None:
        return "one seed"
    if not d.resolved:
        return "within noise"
    return "above no" if d.mean > 0 else "below no"


def table_rows(result: AblationResult) -> list[list[str]]:
    """The table as text cells: row, what, params, MACs, top-1 mean ± std, its 95 % interval, Δ vs no
    (paired by seed) with its interval, the reading of Δ, top-1 per seed."""
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
                "-" if r.row == "no" else _delta(result.delta(r.row)),
                reading(result, r.row),
                " ".join(f"{t:.1f}" for t in r.top1),
            ]
        )
    return lines


HEADER = ["row", "what", "params", "MACs", "top-1 %", "95 % CI", "Δ vs no", "Δ reading", "top-1 per seed"]
_RIGHT = ("params", "MACs", "Δ vs no")


def rich_table(result: AblationResult) -> Table:
    """The terminal table: as the Markdown one, without the long row descriptions."""
    table = Table(title=f"ablation: {len(result.rows)} rows × seeds {', '.join(map(str, result.seeds))} (final top-1 on the validation split)")
    for column in HEADER:
        if column != "what":
            table.add_column(column, justify="right" if column in _RIGHT else "left", no_wrap=column != "top-1 per seed")
    for line in table_rows(result):
        table.add_row(*(cell for column, cell in zip(HEADER, line) if column != "what"))
    return table


def interval_notes(result: AblationResult) -> str:
    """The reading under the table: how the intervals are made, and which differences to ``no`` are resolved."""
    percent = f"{CONFIDENCE * 100:g} %"
    text = (
        f"top-1 %: mean ± sample std over the seeds; {percent} CI: Student-t interval of the mean. "
        f"Δ vs no: the row's top-1 minus the `no` row's on the same seed, mean and {percent} t-interval over the seeds; "
        "resolved when the interval excludes 0.\n"
    )
    if not any(r.row == "no" for r in result.rows):
        return text + "\nNo `no` row: no differences to read.\n"
    verdicts = {r.row: reading(result, r.row) for r in result.rows if r.row != "no"}
    if not verdicts:
        return text
    if all(v == "one seed" for v in verdicts.values()):
        return text + "\nOne seed: no interval, so no difference is resolved.\n"
    resolved = [f"`{n}` {_delta(result.delta(n))}" for n, v in verdicts.items() if v in ("above no", "below no")]
    noise = [f"`{n}` {_delta(result.delta(n))}" for n, v in verdicts.items() if v == "within noise"]
    text += "\nResolved: " + ("; ".join(resolved) if resolved else "none") + ".\n"
    text += "Within noise (the interval holds 0): " + ("; ".join(noise) if noise else "none") + ".\n"
    return text


def markdown(result: AblationResult) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" if h in _RIGHT else "---" for h in HEADER) + "|"]
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
                "" if delta is None or r.row == "no" or delta.half_width is None else str(delta.resolved).lower(),
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
        row = ROWS[r.row]
        if row.strategy != "pmpl":
            continue
        for c in r.cells:
            search_dir = root / r.row / f"seed{c.seed}" / "search"
            if (search_dir / rundir.HISTORY).exists():
                files[f"pi-{r.row}-seed{c.seed}"] = plots.plot_pi(search_dir, root / f"pi-{r.row}-seed{c.seed}.png", title=f"{row.label}, seed {c.seed}")
    return files
