"""Run directories: one per command, holding the resolved config, history, checkpoints and results."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from rfsearch.discretize import CHILD_KIND
from rfsearch.errors import RfsearchError, RunStopped
from rfsearch.io import load_checkpoint, read_jsonl, remove_orphans, write_json, write_text, writing
from rfsearch.space.schema import SpaceConfig

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.json"
REPORT = "report.json"  # a retrain writes it first: it marks a retrain run directory
ABLATION = "ablation.json"

RESUME_HINT = {"search": "rfsearch search --resume {dir}", "retrain": "rfsearch retrain --resume {dir}", "ablation": "rfsearch ablate --resume {dir}"}


def new_run_dir(kind: str, name: str, out: str | Path | None) -> Path:
    """``out`` if given, else ``runs/<kind>-<name>-<timestamp>``. A finished run is never overwritten."""
    path = Path(out) if out is not None else Path("runs") / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / CHECKPOINT).exists():
        raise RfsearchError(f"{path} already holds a run; resume it with --resume {path} or choose another --out")
    if path.exists() and not path.is_dir():
        raise RfsearchError(f"{path} is a file, not a run directory: choose another --out")
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    return path


def kind_of(run_dir: Path) -> str | None:
    """``search``, ``retrain`` or ``ablation`` by the files a run of that kind writes first; None
    when the directory holds none of them."""
    if (run_dir / ABLATION).is_file():
        return "ablation"
    if (run_dir / REPORT).is_file():
        return "retrain"
    if (run_dir / CONFIG).is_file():
        return "search"
    return None


def a_run_directory(kind: str) -> str:
    """``an ablation run directory``, ``a search run directory``: for messages."""
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} run directory"


def resume_run_dir(run_dir: str | Path, kind: str) -> Path:
    """The run directory to continue a ``kind`` run in, checked: it exists, holds a run of this kind
    with its config, and the temporary files of writes killed with the run are removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RfsearchError(f"{run_dir}: no such run directory" if not run_dir.exists() else f"{run_dir} is a file, not a run directory")
    found = kind_of(run_dir)
    if found is not None and found != kind:
        raise RfsearchError(f"{run_dir} is {a_run_directory(found)}, not a {kind} one: continue it with {RESUME_HINT[found].format(dir=run_dir)}")
    remove_orphans(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RfsearchError(f"{run_dir} holds no {CONFIG}: the {kind} stopped before it wrote its config; start it again with --out {run_dir}")
    return run_dir


def read_checkpoint(path: Path, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint a ``kind`` run resumes from; one written by the other kind of run is refused
    by name (a retrain's holds a child, a search's the supernet with its strategy)."""
    state = load_checkpoint(path, map_location)
    found = "retrain" if state.get("kind") == CHILD_KIND else "search" if "strategy" in state else None
    if found != kind:
        raise RfsearchError(f"{path}: not a {kind} checkpoint" + (f": it was written by a {found} run" if found else ""))
    if found == "search" and "arch_optimizer" in state:  # written before strategies kept their own optimizers
        state["strategy"] = {**state["strategy"], "arch_optimizer": state.pop("arch_optimizer")}
    return state


@contextlib.contextmanager
def keeping_last_checkpoint(checkpoint: Path) -> Iterator[None]:
    """A run that stops (a write refused, a loss not finite) says what survives it."""
    try:
        yield
    except RunStopped as err:
        kept = f"the last checkpoint {checkpoint} is kept" if checkpoint.is_file() else "no checkpoint had been written yet"
        raise type(err)(f"{err}; {kept}") from None


def save_config(run_dir: Path, space: SpaceConfig) -> None:
    """The config as resolved (defaults and overrides applied): a run can be redone from it alone."""
    write_text(run_dir / CONFIG, yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))


def load_run_config(run_dir: Path, overrides: Iterable[str] = ()) -> SpaceConfig:
    """The config a run saved, with ``--set`` overrides applied on top (a retrain of a search run)."""
    from rfsearch.loading import load_space

    if not (run_dir / CONFIG).exists():
        raise RfsearchError(f"{run_dir} is not a run directory (no {CONFIG})")
    return load_space(run_dir / CONFIG, overrides)


def truncate_history(path: Path, last_step: int, *, finished: bool = False) -> None:
    """Drop history lines written after the checkpoint a run (re)starts from, and a torn last line,
    so that every step is recorded once. The closing ``final`` record stays only if the checkpoint
    is of the finished run (else the run writes it again)."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step and (finished or not r.get("final"))]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if path.read_text(encoding="utf-8") != text:
        write_text(path, text)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(run_dir / "summary.json", summary)
