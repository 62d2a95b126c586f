"""Running an ablation: every row × seed searched where the row searches, then retrained; an
interrupted ablation continues where it stopped."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfsearch.ablate.render import write_outputs
from rfsearch.ablate.results import AblationResult, Cell, RowSummary, default_seeds, row_results
from rfsearch.ablate.rows import DEFAULT_ROWS, ROWS, fixed_row_arch, parse_rows, search_space, seed_space
from rfsearch.arch import Arch
from rfsearch.console import console
from rfsearch.errors import RfsearchError
from rfsearch.io import read_json, write_json
from rfsearch.space.schema import SpaceConfig
from rfsearch.stats import CONFIDENCE
from rfsearch.train import rundir

ABLATION_FORMAT = "rfsearch-ablation/1"
MANIFEST = "ablation.json"


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


def run_ablation(
    space: SpaceConfig,
    out: str | Path | None = None,
    *,
    rows: Sequence[str] = DEFAULT_ROWS,
    seeds: int | Sequence[int] | None = None,
    resume: str | Path | None = None,
    space_file: str | None = None,
    show_progress: bool = True,
    jobs: int = 1,
) -> AblationResult:
    """Run (or continue, with ``resume``) every row × seed; write the table and the plots.

    ``seeds``: a count (``train.seed``, ``train.seed + 1``, …) or the seeds themselves; None:
    :func:`default_seeds` of the space. ``jobs``: cells run at once, each in its own process with
    an equal share of the CPU cores as torch threads (two one-thread cells on two cores train
    ~1.4× as many images per second as one two-thread cell of a small CNN).
    """
    from rfsearch.train.setup import class_count

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
    fixed_archs = {name: fixed_row_arch(space, ROWS[name], num_classes) for name in names if not ROWS[name].searched}
    cells: dict[tuple[str, int], Cell] = {}
    todo: list[_CellJob] = []
    total = len(names) * len(seed_list)
    for r_i, name in enumerate(names):
        for s_i, seed in enumerate(seed_list):
            job = _CellJob(f"[{r_i * len(seed_list) + s_i + 1}/{total}] {name} seed {seed}", name, seed, root / name / f"seed{seed}", fixed_archs.get(name))
            done = _finished_cell(job)
            if done is not None:
                cells[(name, seed)] = done
            else:
                todo.append(job)

    def finished(cell: Cell) -> None:
        cells[(cell.row, cell.seed)] = cell
        manifest["compute_s"][f"{cell.row}/{cell.seed}"] = round(cell.search_s + cell.retrain_s, 1)
        write_json(root / MANIFEST, manifest)

    if jobs <= 1 or len(todo) <= 1:
        for job in todo:
            finished(_run_cell(space, job, show_progress))
    else:
        _run_in_parallel(space, todo, jobs, finished)
    summaries = [RowSummary(name, ROWS[name].label, [cells[(name, seed)] for seed in seed_list], ROWS[name].learns_pi) for name in names]

    result = AblationResult(root, summaries, seed_list)
    result.compute_s = sum(c.search_s + c.retrain_s for r in summaries for c in r.cells)
    result.files = write_outputs(result)
    result.wall_time_s = time.perf_counter() - started
    manifest["results"] = {
        "confidence": CONFIDENCE,
        "rows": [row_results(result, r) for r in summaries],
        "compute_s": round(result.compute_s, 1),
    }
    write_json(root / MANIFEST, manifest)
    return result


@dataclass(frozen=True)
class _CellJob:
    where: str  # "[3/30] pmpl seed 2": how progress lines name the cell
    row: str
    seed: int
    cell_dir: Path
    fixed_arch: Arch | None  # rows that search have none


def _finished_cell(job: _CellJob) -> Cell | None:
    """The cell as an earlier invocation left it, when its retrain finished."""
    retrain_dir = job.cell_dir / "retrain"
    metrics = _finished_metrics(retrain_dir)
    if metrics is None:
        return None
    summary = job.cell_dir / "search" / "summary.json"
    search_s = read_json(summary)["wall_time_s"] if summary.exists() else 0.0
    console.print(f"[bold]{job.where}[/]: finished earlier, top-1 {metrics['final']['top1']:.2f}% ({retrain_dir})")
    return _cell(job.row, job.seed, Arch.load(retrain_dir), metrics, search_s, skipped=True)


def _run_cell(space: SpaceConfig, job: _CellJob, show_progress: bool) -> Cell:
    """Search (rows that search; an interrupted search continues) and retrain one row × seed."""
    from rfsearch.search.loop import run_search
    from rfsearch.train.retrain import run_retrain

    row, where = ROWS[job.row], job.where
    sspace = seed_space(space, job.seed)
    search_s = 0.0
    if row.searched:
        search_dir = job.cell_dir / "search"
        if (search_dir / "summary.json").exists():
            arch = Arch.load(search_dir)
            search_s = read_json(search_dir / "summary.json")["wall_time_s"]
        else:
            resuming = (search_dir / rundir.CHECKPOINT).exists()
            console.print(f"[bold]{where}[/]: {'resuming the ' if resuming else ''}{row.strategy} search → {search_dir}")
            found = run_search(search_space(sspace, row), search_dir if resuming else _fresh(search_dir), resume=search_dir if resuming else None, show_progress=show_progress)
            arch, search_s = found.arch, found.wall_time_s
    else:
        assert job.fixed_arch is not None
        arch = job.fixed_arch
    retrain_dir = job.cell_dir / "retrain"
    resuming = (retrain_dir / rundir.CHECKPOINT).exists()
    console.print(f"[bold]{where}[/]: {'resuming the ' if resuming else ''}retrain → {retrain_dir}")
    trained = run_retrain(sspace, arch, retrain_dir if resuming else _fresh(retrain_dir), resume=retrain_dir if resuming else None, show_progress=show_progress)
    metrics = trained.metrics()
    console.print(f"[bold]{where}[/]: top-1 {metrics['final']['top1']:.2f}% in {trained.wall_time_s:.0f}s")
    return _cell(job.row, job.seed, trained.arch, metrics, search_s)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker_start(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_parallel(space: SpaceConfig, todo: Sequence[_CellJob], jobs: int, finished: Callable[[Cell], None]) -> None:
    """Cells in ``jobs`` spawned processes (no progress bars: their lines would interleave). The
    first failure cancels the cells not yet started; the running ones end or keep their checkpoints."""
    threads = max(1, _cores() // jobs)
    console.print(f"{len(todo)} cells, {jobs} at a time, {threads} torch thread{'s' if threads > 1 else ''} each")
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start, initargs=(threads,))
    try:
        futures = [pool.submit(_run_cell, space, job, False) for job in todo]
        for future in as_completed(futures):
            finished(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


