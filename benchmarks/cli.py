"""``python -m benchmarks [--quick] [--device cuda] [--json FILE] [--only step,search,child]``"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import Row, Settings, child_rows, family_steps, layout_steps, pmpl_search, pmpl_steps, supernet_steps
from rfsearch.host_memory import keep_freed_memory


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="rfsearch performance ratios, measured side by side")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    p.add_argument("--quick", action="store_true", help="fewer rounds and a shorter search: a smoke run, not for the record")
    p.add_argument("--only", default="step,search,child", help="comma-separated parts: step (supernet step + memory), families (the step by candidate family), layout (NHWC / NCHW steps; on CPU, grouped convs padded first / torch's), pmpl-step (PMPL's step, after_alpha vs reuse), search, child")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write every number to FILE")
    p.add_argument("--compare", type=Path, default=None, metavar="OTHER.json", help="then print this run beside an earlier run's --json file, row by row")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per comparison (default 7; quick 3)")
    p.add_argument("--batch", type=int, default=None, help="training batch size (default 32 on CPU, 128 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--search-epochs", type=int, default=None, help="search budget: epochs (default: the space's; quick 2)")
    p.add_argument("--search-steps", type=int, default=None, help="search budget: steps per epoch cap (default: the space's; quick 8)")
    p.add_argument("--search-repeats", type=int, default=None, help="searches per variant (default 1)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast (CUDA only; default on for CUDA)")
    p.add_argument("--space", type=Path, default=None, metavar="YAML", help="the space of the step, families, layout, pmpl-step and search parts (default spaces/mbv2_metapool.yaml)")
    p.add_argument("--resolutions", default=None, metavar="PX,PX", help="image sizes of the step, families and layout parts (default 32,64)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key of the space for the step and search parts, as rfsearch --set does (repeatable)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="NHWC tensors and models (default on, as the search loop does)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND", help="the step part also times the backbone and the supernet under torch.compile (default backend inductor; compiling takes minutes)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True, help="glibc keeps freed host memory, as every run does (train.keep_freed_memory; default on): --no-keep-freed-memory measures glibc's defaults")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available here")
    cuda = device.type == "cuda"
    s = Settings(device=device)
    s.rounds = args.rounds or (3 if args.quick else 7)
    s.warmup = 1 if args.quick else 2
    s.batch = args.batch or (128 if cuda else 32)
    s.latency_batches = (1, 64) if cuda else (1, 32)
    s.resolutions = _sizes(args.resolutions) if args.resolutions else (32, 64)
    if args.space is not None:
        s.space = args.space
    s.search_epochs = args.search_epochs or (2 if args.quick else None)
    s.search_steps = args.search_steps or (8 if args.quick else None)
    s.search_repeats = args.search_repeats or 1
    s.amp = cuda if args.amp is None else (args.amp and cuda)
    s.channels_last = True if args.channels_last is None else args.channels_last
    s.overrides = tuple(args.overrides)
    s.compile = args.compile
    _check_space(s)
    return s


def _check_space(settings: Settings) -> None:
    """A space file or ``--set`` that does not load stops the run at once, with the loader's line."""
    from rfsearch import RfsearchError, load_space

    try:
        load_space(settings.space, list(settings.overrides))
    except RfsearchError as err:
        raise SystemExit(str(err)) from None


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--resolutions takes image sizes in pixels, comma-separated (32,64), not {text!r}")
    return sizes


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def fmt_value(v: float, unit: str) -> str:
    if unit == "B":
        return f"{v / 2**20:,.1f} MiB"
    return f"{v * 1e3:,.1f} ms" if v < 10 else f"{v:,.1f} s"


def render(rows: list[Row], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    table = Table(title="rfsearch benchmarks (medians of alternating rounds)", show_lines=False)
    for col, kw in (("comparison", {}), ("numerator", {"justify": "right"}), ("denominator", {"justify": "right"}), ("ratio", {"justify": "right"}), ("target", {"justify": "right"}), ("", {})):
        table.add_column(col, no_wrap=col != "comparison", **kw)
    group = None
    for row in rows:
        if group is not None and row.group != group:
            table.add_section()
        group = row.group
        verdict = "" if row.passed is None else ("[green]ok[/]" if row.passed else "[red]over[/]")
        table.add_row(
            row.name + (f"\n[dim]{row.note}[/]" if row.note else ""),
            f"{row.numerator}: {fmt_value(row.num, row.unit)}",
            f"{row.denominator}: {fmt_value(row.den, row.unit)}",
            f"{row.ratio:.2f}×",
            "" if row.target is None else f"≤ {row.target:.2f}×",
            verdict,
        )
    console.print(table)
    m = meta["machine"]
    console.print(f"[dim]{m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['threads']} threads, {m['cpu_capability']})"
                  + (f", {m['gpu']}" if "gpu" in m else "")
                  + f"; device {meta['device']}; freed host memory {'kept' if meta.get('keep_freed_memory') else 'returned (glibc default)'}"
                  + f"; load average before {meta['load_before']}, after {meta['load_after']}; {meta['seconds']:.0f} s[/]")


def render_comparison(this: dict[str, Any], other: dict[str, Any], other_name: str) -> None:
    """Two runs' ratios side by side (rows matched by group and name), and how the numerator's
    own time or memory changed: this run's over the other's."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    table = Table(title=f"this run beside {other_name}")
    for col in ("comparison", "this run", other_name, "numerator: this / other"):
        table.add_column(col, justify="left" if col == "comparison" else "right", no_wrap=col != "comparison")
    theirs = {(r["group"], r["name"]): r for r in other["rows"]}
    ours = {(r["group"], r["name"]) for r in this["rows"]}
    for row in [*this["rows"], *(r for key, r in theirs.items() if key not in ours)]:
        mine = row if (row["group"], row["name"]) in ours else None
        old = theirs.get((row["group"], row["name"]))

        def cell(r: dict[str, Any] | None) -> str:
            return "-" if r is None else f"{r['ratio']:.2f}× ({fmt_value(r['num'], r['unit'])})"

        change = f"{mine['num'] / old['num']:.2f}×" if mine is not None and old is not None and old["num"] else "-"
        table.add_row(row["name"], cell(mine), cell(old), change)
    console.print(table)
    for name, run in (("this run", this), (other_name, other)):
        m = run["meta"]["machine"]
        console.print(f"[dim]{name}: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['threads']} threads); {run['meta']['command']}[/]")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    other = _read_run(args.compare) if args.compare is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    settings = settings_of(args)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    known = ("step", "families", "layout", "pmpl-step", "search", "child")
    unknown = parts - set(known)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(known)}")

    def log(message: str) -> None:
        print(f"  · {message}", file=sys.stderr, flush=True)

    started, load_before = time.perf_counter(), _load()
    rows: list[Row] = []
    arch = None
    if "step" in parts:
        rows += supernet_steps(settings, log)
    if "families" in parts:
        rows += family_steps(settings, log)
    if "layout" in parts:
        rows += layout_steps(settings, log)
    if "pmpl-step" in parts:
        rows += pmpl_steps(settings, log)
    if "search" in parts:
        search, arch = pmpl_search(settings, log)
        rows += search
    if "child" in parts:
        rows += child_rows(settings, arch, log)
    meta = {
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "device": str(settings.device),
        "settings": {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in vars(settings).items()},
        "machine": machine(),
        "keep_freed_memory": kept,
        "load_before": load_before,
        "load_after": _load(),
        "seconds": time.perf_counter() - started,
    }
    render(rows, meta)
    run = {"meta": meta, "rows": [r.to_dict() for r in rows]}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=2))
    if other is not None:
        render_comparison(run, other, str(args.compare))
    return 0


def _read_run(path: Path) -> dict[str, Any]:
    """An earlier run's --json file, checked before anything is measured."""
    try:
        run = json.loads(path.read_text())
        if not isinstance(run.get("rows"), list) or "machine" not in run.get("meta", {}):
            raise ValueError("no 'rows' and 'meta.machine'")
    except (OSError, ValueError, AttributeError) as err:
        raise SystemExit(f"--compare {path}: not a benchmark --json file ({err})") from None
    return run
