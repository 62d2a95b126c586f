"""Plots of an ablation, of one run and of effective receptive fields (PNG, matplotlib's Agg
canvas, no display needed).

matplotlib is optional (``pip install 'rfsearch[plot]'``) and imported only when a plot is drawn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfsearch.arch import Arch
from rfsearch.errors import RfsearchError
from rfsearch.io import atomic_write, read_jsonl
from rfsearch.train import rundir

if TYPE_CHECKING:
    from rfsearch.ablate import AblationResult
    from rfsearch.erf import ErfStudy


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
    """Left: mean top-1 per row with its 95 % t-interval, every seed as a dot, the baseline's mean
    dashed. Right (with a baseline row and another): each row's paired difference to the baseline
    with its interval; filled where the interval excludes 0 (resolved), hollow where it holds 0
    (within noise). Rows whose search learns π are drawn in red."""
    base = result.baseline
    others = [r for r in result.rows if r.row != base]
    has_no = len(others) < len(result.rows)
    paired = has_no and bool(others)
    fig = _figure(max(4.5, 1.1 * len(result.rows) + 1.5) + (0.8 * len(others) + 2.0 if paired else 0.0), 3.8)
    axes = fig.subplots(1, 2, width_ratios=[len(result.rows) + 1, len(others) + 1]) if paired else [fig.add_subplot()]
    ax = axes[0]
    xs = range(len(result.rows))
    intervals = [r.interval for r in result.rows]
    colors = ["#9e9e9e" if r.row == base else "#d62728" if r.learns_pi else "#1f77b4" for r in result.rows]
    ax.bar(xs, [ci.mean for ci in intervals], yerr=[ci.half_width or 0.0 for ci in intervals], capsize=5, color=colors, alpha=0.75, edgecolor="black", linewidth=0.6)
    lows = [v for r, ci in zip(result.rows, intervals) for v in (*r.top1, ci.low) if v is not None]
    low = max(0.0, min(lows) - 5)
    for x, r in zip(xs, result.rows):
        ax.scatter([x] * len(r.top1), r.top1, color="black", s=14, zorder=3)
        # at the bar's foot: above the error bar it would leave the axes when the interval nears 100
        ax.annotate(f"{r.mean:.1f}", (x, low), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
    if has_no:
        ax.axhline(result.row(base).mean, color="#555555", linestyle="--", linewidth=0.8)
    ax.set_xticks(list(xs), [r.row for r in result.rows])
    ax.set_ylabel("final top-1 (%)")
    ax.set_ylim(low, 102)  # room for a seed at 100 %; an interval past 100 is cut at the frame
    n = len(result.seeds)
    title = f"{n} seed{'s' if n > 1 else ''}: mean" + (" and 95 % t-interval" if n > 1 else "")
    ax.set_title(title + (f", dashed: the {base} row's mean" if has_no else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if paired:
        _plot_paired(axes[1], result, others)
    return _save(fig, Path(path))


def _plot_paired(ax: Any, result: AblationResult, rows: list[Any]) -> None:
    """Each row's top-1 minus the baseline's on the same seed: mean and 95 % interval, 0 drawn as a line."""
    deltas = [result.delta(r.row) for r in rows]
    xs = range(len(rows))
    ax.axhline(0.0, color="#555555", linewidth=0.8)
    for x, r, d in zip(xs, rows, deltas):
        if d is None:
            continue
        color = "#d62728" if r.learns_pi else "#1f77b4"
        yerr = None if d.half_width is None else [[d.half_width], [d.half_width]]
        ax.errorbar([x], [d.mean], yerr=yerr, fmt="o", capsize=5, color=color, markerfacecolor=color if d.resolved else "white", markersize=7)
        ax.annotate(f"{d.mean:+.1f}", (x, d.mean), textcoords="offset points", xytext=(8, -3), fontsize=8)
    ax.set_xticks(list(xs), [r.row for r in rows])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(f"Δ top-1 vs {result.baseline}, same seed (points)")
    ax.set_title(f"paired Δ vs {result.baseline}: filled = resolved (interval excludes 0)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


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


# ----------------------------------------------------------------------------- one run (rfsearch plot)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """The plots of a search run (π per point, losses and accuracies per step) or of a retrain run
    (its curves per epoch), read from its history.jsonl; written into ``out_dir`` (default: the run)."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    history_path = run_dir / rundir.HISTORY
    if not history_path.exists():
        raise RfsearchError(f"{run_dir} holds no {rundir.HISTORY}: give a search or retrain run directory")
    history = read_jsonl(history_path)
    if not history:
        raise RfsearchError(f"{history_path} is empty: the run has not finished a step yet")
    if "probs" in history[0]:
        return [plot_pi(run_dir, out / "pi.png", title=run_dir.name), plot_search_curves(history, out / "curves.png", title=run_dir.name)]
    return [plot_retrain_curves(history, out / "curves.png", title=run_dir.name)]


def plot_search_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Weight and meta losses and accuracies per step (thin: every step; thick: the mean over the
    last epoch's worth of steps) and the points fixed, with a grey line at every fixing."""
    steps = [r for r in history if "final" not in r]
    window = max(1, sum(1 for r in steps if r["epoch"] == steps[0]["epoch"])) if steps else 1
    panels = [
        ("loss", [("loss", "weight (training batch)"), ("meta_loss", "meta (held-out batch)")], window),
        ("accuracy (%)", [("acc", "weight (training batch)"), ("meta_acc", "meta (held-out batch)")], window),
        ("points fixed", [("fixed", "fixed")], 1),
    ]
    fixings = sorted({f["step"] for r in history for f in r.get("fixings", [])})
    heading = f"search{': ' + title if title else ''} (grey: a point fixed; thick: mean over {window} steps)"
    return _curves(history, "step", panels, Path(path), heading, marks=fixings)


def plot_retrain_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training and validation loss, accuracies and the learning rate per epoch of a retrain."""
    panels = [
        ("loss", [("train_loss", "train"), ("val_loss", "validation")], 1),
        ("accuracy (%)", [("train_acc", "train top-1"), ("top1", "validation top-1"), ("top5", "validation top-5")], 1),
        ("learning rate (end of epoch)", [("lr", "lr")], 1),
    ]
    return _curves(history, "epoch", panels, Path(path), f"retrain{': ' + title if title else ''}", markers=True)


def _curves(
    history: list[dict[str, Any]],
    x_key: str,
    panels: list[tuple[str, list[tuple[str, str]], int]],
    path: Path,
    title: str,
    *,
    marks: Sequence[int] = (),
    markers: bool = False,
) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xs = [r[x_key] for r in history]
    for ax, (ylabel, series, smooth) in zip(axes, panels):
        for x in marks:
            ax.axvline(x, color="#bbbbbb", linewidth=0.6, zorder=0)
        for k, (key, label) in enumerate(series):
            values = [float(r[key]) if r.get(key) is not None else float("nan") for r in history]
            if all(v != v for v in values):  # NaN everywhere: a number this run does not record
                continue
            if smooth > 1:
                ax.plot(xs, values, color=f"C{k}", linewidth=0.6, alpha=0.35)
                ax.plot(xs, _rolling_mean(values, smooth), color=f"C{k}", linewidth=1.6, label=label)
            else:
                ax.plot(xs, values, color=f"C{k}", linewidth=1.4, marker="o" if markers else None, markersize=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(x_key, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _rolling_mean(values: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` values that are numbers; NaN where the value is (a gap stays one)."""
    out = []
    for i, value in enumerate(values):
        numbers = [v for v in values[max(0, i - window + 1) : i + 1] if v == v]
        out.append(sum(numbers) / len(numbers) if value == value else float("nan"))
    return out


# ----------------------------------------------------------------------------- effective receptive fields


def plot_erf(study: ErfStudy, path: str | Path) -> Path:
    """One row per point, child beside backbone under each set of weights (init, trained): the ERF
    map (colour: √mass, one scale per child/backbone pair) with its 50 % (dashed) and 90 % squares."""
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    columns = [(w, n) for w, by_network in study.maps.items() for n in by_network]
    fig = _figure(2.3 * len(columns) + 0.4, 2.35 * len(study.points) + 0.7)
    axes = fig.subplots(len(study.points), len(columns), squeeze=False)
    for row, point in enumerate(study.points):
        for col, (weights, network) in enumerate(columns):
            ax = axes[row][col]
            erf = study.maps[weights][network][point.path]
            peak = max(float(by_point[point.path].mass.max()) for by_point in study.maps[weights].values()) or 1.0
            ax.imshow(erf.mass.numpy(), cmap="magma", norm=PowerNorm(0.5, vmin=0.0, vmax=peak), interpolation="nearest")
            radii = erf.radii()
            for key, style in (("r50", "--"), ("r90", "-")):
                r = radii[key]
                if r is not None:
                    cy, cx = erf.centre
                    ax.add_patch(Rectangle((cx - r - 0.5, cy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, edgecolor="#4fc3f7", linestyle=style, linewidth=0.9))
            label = f"{weights} · {network}" + (f" ({' + '.join(point.choice_names)})" if network == "child" else "")
            ax.set_title(f"{label}\nr50 {radii['r50']} · r90 {radii['r90']} px", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"#{point.index} {point.path}\n{point.height}×{point.width}", fontsize=7)
    fig.suptitle(
        f"effective receptive field: {study.arch.space or 'arch'} at {study.arch.backbone.input_size} px, {study.images} images\n"
        "backbone: the child's weights without its enhancers",
        fontsize=9,
    )
    return _save(fig, Path(path))
