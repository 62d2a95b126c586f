"""The ``rfsearch`` command line (typer + rich). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from rfsearch.console import console
from rfsearch.errors import RfsearchError

app = typer.Typer(
    name="rfsearch",
    help="Learnable receptive fields for lightweight CNNs (Progressive Meta-Pooling Learning).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: train.search.epochs=3")]
OutOption = Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory (default: runs/<kind>-<space>-<time>)")]


def _load(space_file: Path, overrides: list[str] | None, extra: dict[str, object] | None = None):
    from rfsearch.space.loader import load_space

    sets = list(overrides or [])
    sets += [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]
    return load_space(space_file, sets)


@app.command()
def inspect(
    space_file: Annotated[Path, typer.Argument(help="search space YAML")],
    overrides: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the facts as JSON")] = False,
) -> None:
    """Show the insertion points, candidates, params and MACs a space builds."""
    from rfsearch.report import human
    from rfsearch.summary import describe_space

    space = _load(space_file, overrides)
    facts = describe_space(space)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    shared = {tuple(p["candidates"]) for p in facts["points"]}
    caption = f"candidates at every point: {', '.join(next(iter(shared)))}" if len(shared) == 1 else None
    table = Table(title=f"{facts['space']}: {len(facts['points'])} insertion points on {facts['backbone_name']} at {facts['input_size']}px", caption=caption)
    columns = ["#", "module", "type", "channels", "size", "post"] + (["candidates"] if caption is None else [])
    for column in columns:
        table.add_column(column, overflow="fold")
    for p in facts["points"]:
        row = [str(p["index"]), p["path"], p["module_type"], str(p["channels"]), f"{p['height']}×{p['width']}", ", ".join(p["post"]) or "-"]
        table.add_row(*row, *([", ".join(p["candidates"])] if caption is None else []))
    console.print(table)
    costs = Table(title=f"size and cost at {facts['input_size']}×{facts['input_size']} (classifier: {facts['num_classes']})")
    for column in ("network", "params", "MACs"):
        costs.add_column(column, justify="right" if column != "network" else "left")
    for key, label in (("backbone", "backbone"), ("supernet", "supernet (all candidates)"), ("smallest_child", "smallest child"), ("largest_child", "largest child")):
        costs.add_row(label, f"{facts[key]['params']:,}", human(facts[key]["macs"]))
    console.print(costs)


@app.command()
def search(
    space_file: Annotated[Optional[Path], typer.Argument(help="search space YAML (optional with --resume)")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="pmpl, random, uniform, or pkg.module:Class")] = None,
    out: OutOption = None,
    overrides: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the interrupted search in this run directory")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (train.seed)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1 (train.device)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Search the enhancer of every insertion point; writes arch.json into the run directory."""
    from rfsearch.search.loop import run_search
    from rfsearch.train.rundir import load_run_config

    extra = {"strategy.name": strategy, "train.seed": seed, "train.device": device}
    if resume is not None:
        space = load_run_config(resume)
        if any(v is not None for v in extra.values()) or overrides:
            raise RfsearchError("--resume continues a run with its saved config; --set, --strategy, --seed and --device do not apply")
    elif space_file is None:
        raise RfsearchError("give a space file, or --resume RUN_DIR")
    else:
        space = _load(space_file, overrides, extra)
    result = run_search(space, out, resume=resume, show_progress=not quiet)
    _print_arch(result.arch)
    state = "stopped early: every point fixed" if result.stopped_early else "budget spent"
    console.print(f"[bold green]done[/] {result.steps} steps in {result.wall_time_s:.1f}s ({state}) → {result.run_dir / 'arch.json'}")


def _print_arch(arch) -> None:
    table = Table(title=f"architecture ({arch.strategy})")
    for column in ("#", "module", "channels", "size", "choice", "π(choice)", "fixed at step"):
        table.add_column(column)
    for p in arch.points:
        names = p.choice_names
        pi = sum(p.probs.get(n, 0.0) for n in names) if p.probs else None
        table.add_row(
            str(p.index), p.path, str(p.channels), f"{p.height}×{p.width}", " + ".join(names) or "-", f"{pi:.3f}" if pi is not None else "-", "-" if p.fixed_step is None else str(p.fixed_step)
        )
    console.print(table)


def main() -> None:
    """Entry point: user errors become one message and exit code 2, never a traceback."""
    try:
        app()
    except RfsearchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
