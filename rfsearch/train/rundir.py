"""Run directories: one per command, holding the resolved config, history, checkpoints and results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

from rfsearch.errors import RfsearchError
from rfsearch.io import read_jsonl, write_json, write_text
from rfsearch.space.schema import SpaceConfig

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.json"
REPORT = "report.json"


def new_run_dir(kind: str, name: str, out: str | Path | None) -> Path:
    """``out`` if given, else ``runs/<kind>-<name>-<timestamp>``. A finished run is never overwritten."""
    path = Path(out) if out is not None else Path("runs") / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (path / CHECKPOINT).exists():
        raise RfsearchError(f"{path} already holds a run; resume it with --resume {path} or choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_config(run_dir: Path, space: SpaceConfig) -> None:
    """The config as resolved (defaults and overrides applied): a run can be redone from it alone."""
    write_text(run_dir / CONFIG, yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))


def load_run_config(run_dir: Path, overrides: Iterable[str] = ()) -> SpaceConfig:
    """The config a run saved, with ``--set`` overrides applied on top (a retrain of a search run)."""
    from rfsearch.space.loader import load_space

    if not (run_dir / CONFIG).exists():
        raise RfsearchError(f"{run_dir} is not a run directory (no {CONFIG})")
    return load_space(run_dir / CONFIG, overrides)


def truncate_history(path: Path, last_step: int) -> None:
    """Drop history lines written after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]

    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def write_summary(run_dir: Path, summary: dict) -> None:
    write_json(run_dir / "summary.json", summary)
