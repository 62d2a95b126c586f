"""The ``rfsearch`` command line (typer + rich). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from typer.exceptions import TyperException

from rfsearch.console import console, print_table
from rfsearch.errors import ConfigError, RfsearchError, RfsearchWarning

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
LogOption = Annotated[Optional[list[str]], typer.Option("--log", help="also write the history to: csv (history.csv), tensorboard (tensorboard/); repeatable")]


def _sets(overrides: list[str] | None, extra: dict[str, object] | None) -> list[str]:
    """``--set`` items plus the dedicated flags (``--seed`` …) that were given, as overrides."""
    return list(overrides or []) + [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]


def _load(space_file: Path, overrides: list[str] | None, extra: dict[str, object] | None = None):
    from rfsearch.loading import load_space

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
        table.add_column(column)
    for p in facts["points"]:
        row = [str(p["index"]), p["path"], p["module_type"], str(p["channels"]), f"{p['height']}×{p['width']}", ", ".join(p["post"]) or "-"]
        table.add_row(*row, *([", ".join(p["candidates"])] if caption is None else []))
    print_table(table)
    costs = Table(title=f"size and cost at {facts['input_size']}×{facts['input_size']} (classifier: {facts['num_classes']})")
    for column in ("network", "params", "MACs"):
        costs.add_column(column, justify="right" if column != "network" else "left")
    for key, label in (("backbone", "backbone"), ("supernet", "supernet (all candidates)"), ("smallest_child", "smallest child"), ("largest_child", "largest child")):
        costs.add_row(label, f"{facts[key]['params']:,}", human(facts[key]["macs"]))
    print_table(costs)


def _switch_strategy(space: SpaceConfig, name: str) -> SpaceConfig:
    """The space running strategy ``name``; options of the file's strategy that ``name`` does not
    take are dropped, with a note (the file stays as written)."""
    from rfsearch.strategies import switched_to

    try:
        switched = switched_to(space.strategy, name)
    except (ValueError, ImportError) as err:
        raise ConfigError(str(err), path="--strategy") from None
    dropped = sorted(set(space.strategy.options) - set(switched.options))
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
    log: LogOption = None,
) -> None:
    """Search the enhancer of every insertion point; writes arch.json into the run directory."""
    from rfsearch.search.loop import run_search
    from rfsearch.train.loggers import check_sinks
    from rfsearch.train.rundir import load_run_config, resume_run_dir

    sinks = check_sinks(log or [])  # before any work: a missing package is one line, not a half run
    extra = {"train.seed": seed, "train.device": device}
    if resume is not None:
        space = load_run_config(resume_run_dir(resume, "search"))
        if any(v is not None for v in extra.values()) or overrides or strategy is not None:
            raise RfsearchError("--resume continues a run with its saved config; --set, --strategy, --seed and --device do not apply")
    elif space_file is None:
        raise RfsearchError("give a space file, or --resume RUN_DIR")
    else:
        space = _load(space_file, overrides, extra)
        if strategy is not None:
            space = _switch_strategy(space, strategy)
    result = run_search(space, out, resume=resume, show_progress=not quiet, log=sinks)
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
    print_table(table)


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
    log: LogOption = None,
) -> None:
    """Train the child of an architecture from scratch (train.retrain); writes best.pt, checkpoint.pt,
    metrics.json and report.json into the run directory."""
    from rfsearch.arch import Arch
    from rfsearch.train.loggers import check_sinks
    from rfsearch.train.retrain import run_retrain
    from rfsearch.train.rundir import a_run_directory, kind_of, load_run_config, resume_run_dir

    sinks = check_sinks(log or [])  # before any work: a missing package is one line, not a half run
    extra: dict[str, object] = {"train.retrain.epochs": epochs, "train.seed": seed, "train.device": device}
    if resume is not None:
        if source is not None or space_file is not None or overrides or any(v is not None for v in extra.values()):
            raise RfsearchError("--resume continues a run with its saved config and arch; SOURCE, --space, --set, --epochs, --seed and --device do not apply")
        space = load_run_config(resume_run_dir(resume, "retrain"))
        arch = Arch.load(resume, complete=True)
    elif source is None:
        raise RfsearchError("give a search run directory or an arch.json, or --resume RUN_DIR")
    else:
        found = kind_of(source) if source.is_dir() else None
        if found not in (None, "search"):
            raise RfsearchError(f"{source} is {a_run_directory(found)}: retrain takes a search run directory or an arch.json (continue a retrain with --resume {source})")
        arch = Arch.load(source, complete=True)
        space = _arch_config(source, space_file, overrides, extra)
    result = run_retrain(space, arch, out, resume=resume, show_progress=not quiet, log=sinks)
    _print_report(result.report)
    final, best = result.final, result.best
    top5 = f" top-5 {final['top5']:.2f}%" if final.get("top5") is not None else ""
    console.print(
        f"[bold green]done[/] {len(result.history)} epochs in {result.wall_time_s:.1f}s: final top-1 {final.get('top1', 0):.2f}%{top5}, "
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
    if result.fallback:
        console.print(f"[bold yellow]note:[/] torch's current ONNX exporter (dynamo) failed, the legacy one wrote the file: {result.fallback}")
    runner = "onnxruntime" if fmt == "onnx" else "torch.jit.load"
    console.print(f"[bold green]exported[/] {result.path} (weights: {used or 'random init'}); max |Δ| vs PyTorch in {runner}: {result.max_abs_diff:.2e}")


@app.command()
def report(
    source: ArchSource,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Params and MACs of the child against its backbone, and the op chosen at every point."""
    from rfsearch.arch import Arch
    from rfsearch.erf import read_erf
    from rfsearch.report import child_report

    arch = Arch.load(source, complete=True)
    facts = child_report(arch)
    erf = read_erf(source, arch)  # the numbers of an earlier `rfsearch erf` of this run
    if erf is not None:
        facts["erf"] = erf
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    _print_report(facts)
    if erf is not None:
        _print_erf(erf)


def _print_report(facts: dict) -> None:
    from rfsearch.report import human

    table = Table(title=f"child of {facts['space'] or 'the arch'} ({facts['strategy'] or 'fixed'}): {len(facts['points'])} points on {facts['backbone_name']}")
    for column in ("#", "module", "channels", "size", "choice", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("channels", "params", "MACs") else "left")
    for p in facts["points"]:
        table.add_row(str(p["index"]), p["path"], str(p["channels"]), f"{p['height']}×{p['width']}", " + ".join(p["choice"]), f"{p['params']:,}", human(p["macs"]))
    print_table(table)
    costs = Table(title=f"size and cost at {facts['input_size']}×{facts['input_size']} (classifier: {facts['num_classes'] or 'backbone default'})")
    for column in ("network", "params", "MACs"):
        costs.add_column(column, justify="right" if column != "network" else "left")
    for key in ("backbone", "child", "added"):
        sign = "+" if key == "added" else ""
        costs.add_row(key, f"{sign}{facts[key]['params']:,}", sign + human(facts[key]["macs"]))
    print_table(costs)


@app.command()
def ablate(
    space_file: Annotated[Optional[Path], typer.Argument(help="search space YAML (optional with --resume)")] = None,
    rows: Annotated[
        Optional[str],
        typer.Option(help="comma-separated rows: no, local, global, random, pmpl (the paper's Table 3), pmpl3, random8, pmpl-local, uniform, se, se-mnv3, cbam, coordatt [default: no,local,global,random,pmpl3,pmpl]"),
    ] = None,
    seeds: Annotated[Optional[int], typer.Option(min=1, help="seeds per row: train.seed, train.seed+1, … [default: 5 on real data, 2 on the embedded task]")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="ablation directory (default: runs/ablate-<space>-<time>)")] = None,
    overrides: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the interrupted ablation in this directory (finished rows are not redone)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="cells run at once, each in its own process with an equal share of the CPU cores (no progress bars)")] = 1,
) -> None:
    """The paper's ablation: each row (fixed enhancer or search strategy) searched where needed and
    retrained with one recipe over several seeds; writes ablation.md, ablation.csv and PNG plots."""
    from rfsearch.ablate import DEFAULT_ROWS, parse_rows, rich_table, run_ablation
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
        seed_arg: int | list[int] | None = seeds if seeds is not None else manifest["seeds"]
        source = manifest.get("space_file")
    elif space_file is None:
        raise RfsearchError("give a space file, or --resume ABLATION_DIR")
    else:
        space = _load(space_file, overrides)
        row_names = parse_rows(rows) if rows is not None else list(DEFAULT_ROWS)
        seed_arg = seeds  # None: ablate.default_seeds(space)
        source = str(space_file)
    result = run_ablation(space, out, rows=row_names, seeds=seed_arg, resume=resume, space_file=source, show_progress=not quiet, jobs=jobs)
    print_table(rich_table(result))
    skipped = f", {len(result.skipped)} row×seed read back from earlier" if result.skipped else ""
    console.print(
        f"[bold green]done[/] in {result.wall_time_s:.0f}s (search + retrain time of all cells: {result.compute_s:.0f}s{skipped}) → "
        + ", ".join(str(p) for p in result.files.values())
    )


@app.command()
def erf(
    source: Annotated[Path, typer.Argument(help="run directory, arch.json, or space YAML")],
    op: Annotated[Optional[str], typer.Option(help="for a space file: the candidate at every point [default: avgpool3]")] = None,
    points: Annotated[Optional[list[str]], typer.Option("--point", help="an insertion point's path (repeatable) [default: the last point of every resolution]")] = None,
    images: Annotated[int, typer.Option(min=1, help="validation images the gradients are averaged over")] = 32,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (default: the run's; for a space runs/erf-<space>-<time>)")] = None,
    overrides: SetOption = None,
) -> None:
    """Effective receptive field (Luo et al. 2016) of the child and of its backbone on the same weights,
    at initialisation and with the run's trained weights (a retrain run's best.pt); writes erf.json and erf.png."""
    from rfsearch.erf import resolve_source, run_erf
    from rfsearch.train.rundir import new_run_dir

    resolved = resolve_source(source, op, _sets(overrides, None))
    out_dir = out or resolved.out_dir or new_run_dir("erf", resolved.space.name, None)
    result = run_erf(resolved.arch, resolved.space, out_dir, trained=resolved.trained, paths=points, images=images)
    _print_erf(result.study.to_json())
    if result.png_path is None:
        console.print("[bold yellow]note:[/] no erf.png: matplotlib is missing (pip install 'rfsearch[plot]')")
    written = ", ".join(str(p) for p in (result.json_path, result.png_path) if p is not None)
    console.print(f"[bold green]done[/] weights: {', '.join(result.study.weights_from)} → {written}")


def _print_erf(facts: dict) -> None:
    weights = [w for w in ("init", "trained") if w in facts["points"][0]]
    table = Table(title=f"effective receptive field, radius (px) holding 50 % / 90 % of the gradient mass ({facts['images']} images at {facts['input_size']} px)")
    for column in ("#", "module", "size", "choice", *(f"{w} {n}" for w in weights for n in ("child", "backbone"))):
        table.add_column(column, justify="right" if column in ("#", "size") else "left")
    for p in facts["points"]:
        radii = [f"{p[w][n]['r50']} / {p[w][n]['r90']}" for w in weights for n in ("child", "backbone")]
        table.add_row(str(p["index"]), p["path"], f"{p['height']}×{p['width']}", " + ".join(p["choice"]), *radii)
    print_table(table)


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="ops, strategies or backbones")],
    pattern: Annotated[str, typer.Argument(help="shell-style filter on the names: 'avg*', '*mobilenet*'")] = "*",
) -> None:
    """What a space can name: the ops (candidates), the strategies, the torchvision backbones;
    each with its options and their defaults."""
    from rfsearch.catalogue import KINDS, entries

    if kind not in KINDS:
        raise RfsearchError(f"rfsearch list: '{kind}' is not one of {', '.join(KINDS)}")
    found = entries(kind, pattern)  # type: ignore[arg-type]
    if not found:
        raise RfsearchError(f"rfsearch list {kind}: no name matches '{pattern}'")
    table = Table(title=f"{len(found)} {kind}" + (f" matching '{pattern}'" if pattern != "*" else ""))
    for column in ("name", "options", "about"):
        table.add_column(column)
    for entry in found:
        table.add_row(entry.name, escape(entry.options), escape(entry.about))
    print_table(table)


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="search or retrain run directory")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (default: the run directory)")] = None,
) -> None:
    """PNG plots of a run: a search's π per point with its fixings, losses and accuracies per step;
    a retrain's curves per epoch."""
    from rfsearch import plots

    if not plots.available():
        raise RfsearchError("rfsearch plot needs matplotlib: pip install 'rfsearch[plot]'")
    written = plots.plot_run(run_dir, out)
    console.print(f"[bold green]done[/] → {', '.join(str(p) for p in written)}")


def main() -> None:
    """Entry point: bad input (a config, a run directory, a flag) is one line on stderr and exit
    code 2, a run that had to stop (a disk fault, a NaN loss) one line and exit code 1; never a traceback."""
    warnings.showwarning = _show_warning
    try:
        code = app(standalone_mode=False)
    except RfsearchError as err:
        _fail(str(err), err.exit_code)
    except TyperException as err:  # a usage error (unknown option, missing argument): typer would draw a box
        ctx = getattr(err, "ctx", None)
        message = err.format_message()
        if message:  # empty: the help was printed instead (no arguments)
            _fail(f"{ctx.command_path + ': ' if ctx is not None else ''}{message} (see --help)", err.exit_code)
        sys.exit(err.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    sys.exit(code if isinstance(code, int) else 0)


_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None, line: str | None = None) -> None:
    """An RfsearchWarning is one line, as the notes are; any other warning as Python shows it."""
    if issubclass(category, RfsearchWarning):
        console.print(f"[bold yellow]warning:[/] {escape(str(message))}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def _fail(message: str, code: int) -> None:
    """One line, whatever the message holds (torch and pydantic write several) and however wide the terminal."""
    print("error: " + " ".join(part.strip() for part in message.splitlines() if part.strip()), file=sys.stderr)
    sys.exit(code)
