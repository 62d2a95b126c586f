"""Running an ablation: every row × seed searched where the row searches, then retrained; an
interrupted ablation continues where it stopped."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rfsearch.ablate.render import write_outputs
from rfsearch.ablate.results import AblationResult, Cell, RowSummary, default_seeds, row_results
from rfsearch.ablate.rows import DEFAULT_ROWS, ROWS, fixed_row_arch, parse_rows, search_space, seed_space
from rfsearch.arch import Arch
from rfsearch.console import console
from rfsearch.errors import RfsearchError
from rfsearch.io import read_json, write_json
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
        summaries.append(RowSummary(name, row.label, cells, row.learns_pi))

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


