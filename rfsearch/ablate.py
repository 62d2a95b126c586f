"""The paper's ablation in one run: every row (a fixed enhancer, or a strategy) over several seeds,
retrained with one recipe and budget, summarised as a table (Markdown, CSV) and plots.

Rows (the paper's Table 3, and Tables 2 and 4 for the attention baselines):

==========  ===================================================================================
``no``       no enhancer: the plain backbone (every point ``skip``, no post layers)
``local``    "local only": PMPL over the space's local candidates (skip, avg/max pools)
``global``   every point fixed to ``global`` (spatial separable pooling), no search
``random``   the ``random`` strategy: one candidate per point drawn from the seed
``uniform``  the ``uniform`` strategy (single-path sampling, then greedy choice)
``pmpl``     the ``pmpl`` strategy (the method)
``se``       every point fixed to ``se`` (Squeeze-and-Excitation)
``cbam``     every point fixed to ``cbam``
``coordatt`` every point fixed to ``coordatt`` (Coordinate Attention)
==========  ===================================================================================

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
from rfsearch.train import rundir

ABLATION_FORMAT = "rfsearch-ablation/1"
MANIFEST = "ablation.json"
LOCAL_OPS = frozenset({"skip", "avgpool", "maxpool"})


@dataclass(frozen=True)
class Row:
    """One row of the ablation: a fixed op at every point (``op``) or a search (``strategy``)."""

    name: str
    label: str
    op: str | None = None
    strategy: str | None = None
    local_only: bool = False

    @property
    def searched(self) -> bool:
        return self.strategy is not None


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("no", "no enhancer (backbone)", op="skip"),
        Row("local", "local only (PMPL, no global)", strategy="pmpl", local_only=True),
        Row("global", "global only", op="global"),
        Row("random", "random choice", strategy="random"),
        Row("uniform", "uniform sampling", strategy="uniform"),
        Row("pmpl", "PMPL", strategy="pmpl"),
        Row("se", "SE", op="se"),
        Row("cbam", "CBAM", op="cbam"),
        Row("coordatt", "CoordAttention", op="coordatt"),
    )
}
DEFAULT_ROWS: tuple[str, ...] = ("no", "local", "global", "random", "pmpl")
DEFAULT_SEEDS = 2


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


def search_space(space: SpaceConfig, row: Row) -> SpaceConfig:
    """The space a searched row runs: its strategy (keeping the options that strategy accepts) and,
    for ``local``, only the local candidates at every point."""
    assert row.strategy is not None
    strategy = space.strategy.switched_to(row.strategy).model_dump(mode="json")

    def edit(data: dict[str, Any]) -> None:
        data["strategy"] = strategy
        if row.local_only:
            data["candidates"] = _local(data["candidates"], "candidates")
            for i, rule in enumerate(data["insert"]):
                if rule.get("candidates") is not None:
                    rule["candidates"] = _local(rule["candidates"], f"insert[{i}].candidates")

    return _variant(space, edit)


def _local(groups: list[list[dict[str, Any]]], where: str) -> list[list[dict[str, Any]]]:
    kept = [[c for c in group if c["op"] in LOCAL_OPS] for group in groups]
    kept = [g for g in kept if g]
    if sum(len(g) for g in kept) < 2:
        raise RfsearchError(f"the 'local' row needs at least two local candidates (skip, avgpool, maxpool) in {where}; the space has {groups}")
    return kept


def fixed_row_arch(space: SpaceConfig, row: Row, num_classes: int | None) -> Arch:
    """The arch of a fixed row: ``row.op`` at every insertion point of ``space``, with the params of
    the space's own candidate of that op if it has one (else the registry's defaults). The ``no``
    row is the plain backbone: ``skip`` and no post layers."""
    from rfsearch.graph.backbone import build_backbone
    from rfsearch.graph.points import discover_points

    assert row.op is not None
    try:
        backbone = build_backbone(space.backbone, num_classes)
    except ValueError as err:
        raise space.error_at(("backbone",), str(err)) from None
    points = discover_points(backbone, space)
    default = expand_candidates(row.op)[0]
    fixed = []
    for p in points:
        own = next((c for c in p.candidates if c.op == row.op), None)
        cand = Candidate(default.name, row.op, dict(own.params)) if own is not None else default
        fixed.append(dataclasses.replace(p, candidates=(cand,), post=() if row.name == "no" else p.post))
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
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.top1) if len(self.cells) > 1 else 0.0

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

    def delta(self, name: str) -> float | None:
        """Mean top-1 of a row minus that of the ``no`` row (None without a ``no`` row)."""
        base = next((r for r in self.rows if r.row == "no"), None)
        return None if base is None else self.row(name).mean - base.mean

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
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    resume: str | Path | None = None,
    space_file: str | None = None,
    show_progress: bool = True,
) -> AblationResult:
    """Run (or continue, with ``resume``) every row × seed; write the table and the plots.

    ``seeds``: a count (``train.seed``, ``train.seed + 1``, …) or the seeds themselves.
    """
    from rfsearch.search.loop import resolved_num_classes, run_search
    from rfsearch.train.retrain import run_retrain

    started = time.perf_counter()
    names = parse_rows(rows)
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

    num_classes = resolved_num_classes(space)
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
        "rows": [
            {"row": r.row, "label": r.label, "top1_mean": round(r.mean, 3), "top1_std": round(r.std, 3), "delta_vs_no": _round(result.delta(r.row)), "cells": [c.to_dict() for c in r.cells]}
            for r in summaries
        ],
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


# ----------------------------------------------------------------------------- table and files


def _human(n: float) -> str:
    from rfsearch.report import human

    return human(n)


def _size(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return _human(lo) if _human(lo) == _human(hi) else f"{_human(lo)}–{_human(hi)}"


def _delta(d: float | None) -> str:
    return "-" if d is None else f"{d:+.2f}"


def table_rows(result: AblationResult) -> list[list[str]]:
    """The table as text cells: row, what, params, MACs, top-1 mean ± std, Δ vs no, per seed."""
    lines = []
    for r in result.rows:
        lines.append(
            [
                r.row,
                r.label,
                _size(r.params),
                _size(r.macs),
                f"{r.mean:.2f} ± {r.std:.2f}",
                "-" if r.row == "no" else _delta(result.delta(r.row)),
                " ".join(f"{t:.1f}" for t in r.top1),
            ]
        )
    return lines


HEADER = ["row", "what", "params", "MACs", "top-1 %", "Δ vs no", "top-1 per seed"]


def rich_table(result: AblationResult) -> Table:
    """The terminal table: as the Markdown one, without the long row descriptions."""
    table = Table(title=f"ablation: {len(result.rows)} rows × seeds {', '.join(map(str, result.seeds))} (final top-1 on the validation split)")
    for column in HEADER:
        if column != "what":
            table.add_column(column, justify="right" if column in ("params", "MACs", "Δ vs no") else "left", no_wrap=column != "top-1 per seed")
    for line in table_rows(result):
        table.add_row(*(cell for column, cell in zip(HEADER, line) if column != "what"))
    return table


def markdown(result: AblationResult) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---:" if h in ("params", "MACs", "Δ vs no") else "---" for h in HEADER) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    text = "\n".join(lines) + "\n"
    searched = [r for r in result.rows if ROWS[r.row].searched]
    if searched:
        text += "\nChosen ops (points per op) of the searched rows:\n\n"
        for r in searched:
            for c in r.cells:
                counts = Counter(" + ".join(v) for v in c.choices.values())
                text += f"- {r.row}, seed {c.seed}: " + ", ".join(f"{op} ×{n}" for op, n in counts.most_common()) + "\n"
    return text


CSV_COLUMNS = ["row", "label", "seeds", "params", "params_min", "params_max", "macs", "macs_min", "macs_max", "top1_mean", "top1_std", "top1_min", "top1_max", "delta_vs_no", "top1_per_seed"]


def csv_text(result: AblationResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in result.rows:
        delta = result.delta(r.row)
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
                f"{min(r.top1):.3f}",
                f"{max(r.top1):.3f}",
                "" if delta is None else f"{delta:.3f}",
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
