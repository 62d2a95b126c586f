"""The ``rfsearch`` command line (typer + rich). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from rfsearch.console import console
from rfsearch.errors import ConfigError, RfsearchError

if TYPE_CHECKING:  # the CLI imports torch-heavy modules lazily, inside the commands
    from rfsearch.space.schema import SpaceConfig

app = typer.Typer(
    name="rfsearch",
    help="Learnable receptive fields for lightweight CNNs (Progressive Meta-Pooling Learning).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: train.search.epochs=3")]
OutOption = Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory (default: runs/<kind>-<space>-<time>)")]


def _sets(overrides: list[str] | None, extra: dict[str, object] | None) -> list[str]:
    """``--set`` items plus the dedicated flags (``--seed`` …) that were given, as overrides."""
    return list(overrides or []) + [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]


def _load(space_file: Path, overrides: list[str] | None, extra: dict[str, object] | None = None):
    from rfsearch.space.loader import load_space

    return load_space(space_file, _sets(overrides, extra))


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


def _switch_strategy(space: SpaceConfig, name: str) -> SpaceConfig:
    """The space running strategy ``name``; options of the file's strategy that ``name`` does not
    take are dropped, with a note (the file stays as written)."""
    try:
        switched = space.strategy.switched_to(name)
    except (ValueError, ImportError) as err:
        raise ConfigError(str(err), path="--strategy") from None
    dropped = sorted(set(space.strategy.model_extra or {}) - set(switched.model_extra or {}))
    if dropped:
        console.print(f"[bold yellow]note:[/] --strategy {name}: the space's {space.strategy.name} options {', '.join(dropped)} do not apply and are left out")
    return space.model_copy(update={"strategy": switched})


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

    extra = {"train.seed": seed, "train.device": device}
    if resume is not None:
        space = load_run_config(resume)
        if any(v is not None for v in extra.values()) or overrides or strategy is not None:
            raise RfsearchError("--resume continues a run with its saved config; --set, --strategy, --seed and --device do not apply")
    elif space_file is None:
        raise RfsearchError("give a space file, or --resume RUN_DIR")
    else:
        space = _load(space_file, overrides, extra)
        if strategy is not None:
            space = _switch_strategy(space, strategy)
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


ArchSource = Annotated[Path, typer.Argument(help="run directory or arch.json")]


def _arch_config(source: Path, space_file: Path | None, overrides: list[str] | None, extra: dict[str, object]):
    """The data and train sections for an arch: ``--space`` if given, else the config.yaml of the
    run the arch comes from."""
    from rfsearch.train.rundir import CONFIG, load_run_config

    if space_file is not None:
        return _load(space_file, overrides, extra)
    run_dir = source if source.is_dir() else source.parent
    if not (run_dir / CONFIG).exists():
        raise RfsearchError(f"no {CONFIG} next to {source}: give --space SPACE.yaml for the data and train sections")
    return load_run_config(run_dir, _sets(overrides, extra))


@app.command()
def retrain(
    source: Annotated[Optional[Path], typer.Argument(help="search run directory or arch.json (optional with --resume)")] = None,
    space_file: Annotated[Optional[Path], typer.Option("--space", help="space YAML for data and training when SOURCE has no config.yaml")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="retrain epochs (train.retrain.epochs)")] = None,
    out: OutOption = None,
    overrides: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the interrupted retrain in this run directory")] = None,
    seed: Annotated[Optional[int], typer.Option(help="random seed (train.seed)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1 (train.device)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train the child of an architecture from scratch (train.retrain); writes best.pt, checkpoint.pt,
    metrics.json and report.json into the run directory."""
    from rfsearch.arch import Arch
    from rfsearch.train.retrain import run_retrain
    from rfsearch.train.rundir import load_run_config

    extra: dict[str, object] = {"train.retrain.epochs": epochs, "train.seed": seed, "train.device": device}
    if resume is not None:
        if source is not None or space_file is not None or overrides or any(v is not None for v in extra.values()):
            raise RfsearchError("--resume continues a run with its saved config and arch; SOURCE, --space, --set, --epochs, --seed and --device do not apply")
        space, arch = load_run_config(resume), Arch.load(resume)
    elif source is None:
        raise RfsearchError("give a search run directory or an arch.json, or --resume RUN_DIR")
    else:
        arch = Arch.load(source)
        space = _arch_config(source, space_file, overrides, extra)
    result = run_retrain(space, arch, out, resume=resume, show_progress=not quiet)
    _print_report(result.report)
    final, best = result.final, result.best
    console.print(
        f"[bold green]done[/] {len(result.history)} epochs in {result.wall_time_s:.1f}s: final top-1 {final.get('top1', 0):.2f}% top-5 {final.get('top5', 0):.2f}%, "
        f"best top-1 {best['top1'] or 0:.2f}% (epoch {best['epoch']}) → {result.run_dir}"
    )


@app.command()
def export(
    source: ArchSource,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript")] = "onnx",
    weights: Annotated[Optional[Path], typer.Option(help="child checkpoint (default: the run's best.pt)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output file (default: child.<format> next to the arch)")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="input resolution (default: the arch's)")] = None,
) -> None:
    """Write the child as ONNX or TorchScript, then run the file and compare it with PyTorch."""
    from rfsearch.export import child_for_export, default_path, export_child

    path = out or default_path(source if source.is_dir() else source.parent, fmt)
    arch, model, used = child_for_export(source, weights)
    if used is None:
        console.print(f"[bold yellow]warning:[/] no --weights and no trained child next to {source}: exporting a randomly initialised child")
    result = export_child(model, path, fmt, input_size=input_size or arch.backbone.input_size, in_channels=arch.backbone.in_channels)
    runner = "onnxruntime" if fmt == "onnx" else "torch.jit.load"
    console.print(f"[bold green]exported[/] {result.path} (weights: {used or 'random init'}); max |Δ| vs PyTorch in {runner}: {result.max_abs_diff:.2e}")


@app.command()
def report(
    source: ArchSource,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Params and MACs of the child against its backbone, and the op chosen at every point."""
    from rfsearch.arch import Arch
    from rfsearch.report import child_report

    facts = child_report(Arch.load(source))
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    _print_report(facts)


def _print_report(facts: dict) -> None:
    from rfsearch.report import human

    table = Table(title=f"child of {facts['space'] or 'the arch'} ({facts['strategy'] or 'fixed'}): {len(facts['points'])} points on {facts['backbone_name']}")
    for column in ("#", "module", "channels", "size", "choice", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("channels", "params", "MACs") else "left")
    for p in facts["points"]:
        table.add_row(str(p["index"]), p["path"], str(p["channels"]), f"{p['height']}×{p['width']}", " + ".join(p["choice"]), f"{p['params']:,}", human(p["macs"]))
    console.print(table)
    costs = Table(title=f"size and cost at {facts['input_size']}×{facts['input_size']} (classifier: {facts['num_classes'] or 'backbone default'})")
    for column in ("network", "params", "MACs"):
        costs.add_column(column, justify="right" if column != "network" else "left")
    for key in ("backbone", "child", "added"):
        sign = "+" if key == "added" else ""
        costs.add_row(key, f"{sign}{facts[key]['params']:,}", sign + human(facts[key]["macs"]))
    console.print(costs)


@app.command()
def ablate(
    space_file: Annotated[Optional[Path], typer.Argument(help="search space YAML (optional with --resume)")] = None,
    rows: Annotated[
        Optional[str],
        typer.Option(help="comma-separated rows: no, local, global, random, uniform, pmpl, se, cbam, coordatt [default: no,local,global,random,pmpl]"),
    ] = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="seeds per row: train.seed, train.seed+1, … [default: 2]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="ablation directory (default: runs/ablate-<space>-<time>)")] = None,
    overrides: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the interrupted ablation in this directory (finished rows are not redone)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """The paper's ablation: each row (fixed enhancer or search strategy) searched where needed and
    retrained with one recipe over several seeds; writes ablation.md, ablation.csv and PNG plots."""
    from rfsearch.ablate import DEFAULT_ROWS, DEFAULT_SEEDS, parse_rows, rich_table, run_ablation
    from rfsearch.io import read_json
    from rfsearch.train.rundir import load_run_config

    if resume is not None:
        if space_file is not None or overrides:
            raise RfsearchError("--resume continues an ablation with its saved config; SPACE_FILE and --set do not apply")
        manifest_path = resume / "ablation.json"
        if not manifest_path.exists():
            raise RfsearchError(f"{resume} is not an ablation directory (no ablation.json)")
        manifest = read_json(manifest_path)
        space = load_run_config(resume)
        row_names = parse_rows(rows) if rows is not None else manifest["rows"]
        seed_arg: int | list[int] = seeds if seeds is not None else manifest["seeds"]
        source = manifest.get("space_file")
    elif space_file is None:
        raise RfsearchError("give a space file, or --resume ABLATION_DIR")
    else:
        space = _load(space_file, overrides)
        row_names = parse_rows(rows) if rows is not None else list(DEFAULT_ROWS)
        seed_arg = seeds if seeds is not None else DEFAULT_SEEDS
        source = str(space_file)
    result = run_ablation(space, out, rows=row_names, seeds=seed_arg, resume=resume, space_file=source, show_progress=not quiet)
    console.print(rich_table(result))
    skipped = f", {len(result.skipped)} row×seed read back from earlier" if result.skipped else ""
    console.print(
        f"[bold green]done[/] in {result.wall_time_s:.0f}s (search + retrain time of all cells: {result.compute_s:.0f}s{skipped}) → "
        + ", ".join(str(p) for p in result.files.values())
    )


def main() -> None:
    """Entry point: user errors become one message and exit code 2, never a traceback."""
    try:
        app()
    except RfsearchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
