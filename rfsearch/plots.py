"""Plots of an ablation (PNG, matplotlib's Agg canvas, no display needed).

matplotlib is optional (``pip install 'rfsearch[plot]'``) and imported only when a plot is drawn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfsearch.arch import Arch
from rfsearch.io import atomic_write, read_jsonl
from rfsearch.train import rundir

if TYPE_CHECKING:
    from rfsearch.ablate import AblationResult


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    """A figure on an Agg canvas, without pyplot (no global backend, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png"))


def plot_accuracy(result: AblationResult, path: str | Path) -> Path:
    """Mean top-1 per row with ± std error bars, every seed as a dot, the ``no`` row as a line."""
    fig = _figure(max(4.5, 1.1 * len(result.rows) + 1.5), 3.8)
    ax = fig.add_subplot()
    xs = range(len(result.rows))
    means = [r.mean for r in result.rows]
    stds = [r.std for r in result.rows]
    colors = ["#9e9e9e" if r.row == "no" else "#d62728" if r.row == "pmpl" else "#1f77b4" for r in result.rows]
    ax.bar(xs, means, yerr=stds, capsize=5, color=colors, alpha=0.75, edgecolor="black", linewidth=0.6)
    low = max(0.0, min(min(r.top1) for r in result.rows) - 10)
    for x, r in zip(xs, result.rows):
        ax.scatter([x] * len(r.top1), r.top1, color="black", s=14, zorder=3)
        # at the bar's foot: above the error bar it would leave the axes when mean + std nears 100
        ax.annotate(f"{r.mean:.1f}", (x, low), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    has_no = any(r.row == "no" for r in result.rows)
    if has_no:
        ax.axhline(result.row("no").mean, color="#555555", linestyle="--", linewidth=0.8)
    ax.set_xticks(list(xs), [r.row for r in result.rows])
    ax.set_ylabel("final top-1 (%)")
    ax.set_ylim(low, 102)  # room for a seed at 100 %
    title = f"{len(result.seeds)} seed{'s' if len(result.seeds) > 1 else ''}: mean ± std"
    ax.set_title(title + (", dashed: the no-enhancer mean" if has_no else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_pi(search_dir: str | Path, path: str | Path, title: str = "") -> Path:
    """π of every candidate at every insertion point over the search steps (history.jsonl); a
    dashed line where the point was fixed (dotted: fixed at the end of the budget)."""
    search_dir = Path(search_dir)
    history = read_jsonl(search_dir / rundir.HISTORY)
    arch = Arch.load(search_dir)
    names = {p.path: p.candidates for p in arch.points}
    steps = [r["step"] for r in history]
    fixings = {f["path"]: (f, bool(r.get("final"))) for r in history for f in r.get("fixings", [])}
    n = len(arch.points)
    cols = min(4, n)
    rows = -(-n // cols)
    fig = _figure(3.0 * cols, 2.1 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    every: list[str] = list(dict.fromkeys(c for p in arch.points for c in p.candidates))
    palette = {c: f"C{i % 10}" for i, c in enumerate(every)}
    for i, point in enumerate(arch.points):
        ax = axes[i // cols][i % cols]
        series = [r["probs"].get(point.path) for r in history]
        for k, cand in enumerate(names[point.path]):
            ax.plot(steps, [s[k] if s else float("nan") for s in series], color=palette[cand], linewidth=1.1, label=cand)
        fixing = fixings.get(point.path)
        choice = " + ".join(point.choice_names) or "-"
        if fixing is not None:
            f, final = fixing
            ax.axvline(f["step"], color="black", linestyle=":" if final else "--", linewidth=0.9)
        when = "" if point.fixed_step is None else f" @ {point.fixed_step}"
        ax.set_title(f"#{point.index} {point.path} → {choice}{when}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    top = max((max(v) for r in history for v in r.get("probs", {}).values() if v), default=1.0)
    axes[0][0].set_ylim(0.0, min(1.0, top + 0.05))
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for line in axes:
        line[0].set_ylabel("π", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[c], label=c) for c in every]
    fig.legend(handles=handles, labels=every, loc="outside lower center", ncol=min(len(every), 8), fontsize=8)
    fig.suptitle(f"π per point over the search{': ' + title if title else ''} (dashed: fixed by ρ; dotted: fixed at the end)", fontsize=10)
    return _save(fig, Path(path))
