"""The one search loop every strategy runs in: data, optimizers, schedule, checkpoints, history."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfsearch import data as rfdata
from rfsearch.arch import Arch, apply_arch, arch_of
from rfsearch.console import console
from rfsearch.distributed import Dist, alpha_snapshot
from rfsearch.io import restoring, save_checkpoint
from rfsearch.search.context import SearchContext
from rfsearch.space.schema import SpaceConfig
from rfsearch.strategies.base import Fixing, Strategy
from rfsearch.strategies.config import resolve_strategy
from rfsearch.supernet import Supernet, build_supernet
from rfsearch.train import rundir
from rfsearch.train.engine import (
    check_finite,
    check_weights_finite,
    cosine_schedule,
    cycle,
    prune_optimizer,
    rng_state,
    set_rng_state,
    sgd,
)
from rfsearch.train.loggers import HistoryWriter
from rfsearch.train.setup import RunSetup, class_count


@dataclass
class SearchResult:
    run_dir: Path
    arch: Arch
    steps: int
    wall_time_s: float
    stopped_early: bool


HINT = "lower train.search.optimizer.lr or the strategy's own rates (strategy.arch_optimizer.lr), or set train.search.grad_clip"


def run_search(
    space: SpaceConfig,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    show_progress: bool = True,
    log: Sequence[str] = (),
) -> SearchResult:
    """Search ``space`` into a run directory (or continue the one in ``resume``); ``log``: the
    sinks (csv, tensorboard) the history also goes to."""
    run = RunSetup.start("search", space.train, resume)
    dist, device, seed, channels_last = run.dist, run.device, run.seed, run.channels_last
    recipe = space.train.search

    num_classes = class_count(space.backbone, space.data)
    supernet = build_supernet(space, num_classes)
    strategy_cls, options = resolve_strategy(space)
    strategy: Strategy = strategy_cls(options, supernet, seed)
    run_dir = run.open_run_dir(space.name, out)
    run.place(supernet)
    supernet.net = run.sync_bn(supernet.net)  # MixedOps stay in place

    loaders = None
    steps_per_epoch = 1
    if strategy_cls.trains_supernet:
        loaders = rfdata.build_search_loaders(
            space.data, batch_size=recipe.batch_size, seed=seed, device=device, distributed=dist.enabled
        )
        steps_per_epoch = len(loaders.weight) if recipe.steps_per_epoch is None else min(recipe.steps_per_epoch, len(loaders.weight))
    total_steps = recipe.epochs * steps_per_epoch
    weight_opt = sgd(supernet.weight_parameters(), recipe.optimizer)
    scheduler = cosine_schedule(weight_opt, total_steps, recipe.warmup_epochs * steps_per_epoch)
    ctx = SearchContext(
        supernet=supernet,
        model=dist.wrap(supernet, device, find_unused=strategy.single_path),
        weight_optimizer=weight_opt,
        device=device,
        amp=space.train.amp,
        channels_last=channels_last,
        grad_clip=recipe.grad_clip,
        epochs=recipe.epochs,
        reduce_grads=dist.mean_,
    )
    strategy.setup(ctx)

    start_epoch, finished, elapsed = 0, False, 0.0
    history, checkpoint = run.history, run.checkpoint
    history_log = HistoryWriter(history, log, labels={path: mixed.names for path, mixed in supernet.mixed_ops.items()})
    state = run.resumed_state(map_location=device)
    resumed = state is not None
    if state is not None:
        if dist.is_main and state.get("world_size", 1) != dist.world_size:
            console.print(
                f"[bold yellow]note:[/] {checkpoint} was written by {state.get('world_size', 1)} process(es), resumed by {dist.world_size}: "
                "batch_size is per process, so the global batch and the steps per epoch change"
            )
        with restoring(checkpoint):
            apply_arch(supernet, Arch.model_validate(state["arch"]))
            _after_fixing(ctx, supernet, dist, device, strategy)
            supernet.load_state_dict(state["model"])
            weight_opt.load_state_dict(state["weight_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            strategy.load_state_dict(state["strategy"])
            set_rng_state(state["rng"])
            start_epoch, ctx.step, finished, elapsed = state["epoch"], state["step"], state["finished"], state["elapsed"]

    def snapshot() -> Arch:
        return arch_of(supernet, backbone=space.backbone, num_classes=num_classes, space=space.name, strategy=space.strategy.name)

    def save(epoch: int, done: bool) -> None:
        check_weights_finite(supernet, f"search after step {ctx.step}", HINT)  # a NaN never overwrites the last good checkpoint
        dist.assert_same("α or the fixed choices", alpha_snapshot(supernet.mixed_ops.items()))
        if not dist.is_main:
            return
        save_checkpoint(
            checkpoint,
            {
                "arch": snapshot().model_dump(mode="json"),
                "model": supernet.state_dict(),
                "weight_optimizer": weight_opt.state_dict(),
                "scheduler": scheduler.state_dict(),
                "strategy": strategy.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "step": ctx.step,
                "finished": done,
                "elapsed": elapsed + time.perf_counter() - started,
                "world_size": dist.world_size,
            },
        )
        snapshot().save(run_dir / "arch.json")

    started = time.perf_counter()
    stopped_early = False
    supernet.train()
    n_points = len(supernet.points)
    progress = run.progress(total_steps, ctx.step, show_progress)
    with rundir.keeping_last_checkpoint(checkpoint), progress:
        if dist.is_main:
            if resumed:
                console.print(f"[bold]Resuming[/] {run_dir} at epoch {start_epoch}, step {ctx.step}")
            else:
                if resume is not None:
                    console.print(f"[bold]Resuming[/] {run_dir} from the start: it holds no checkpoint yet")
                rundir.save_config(run_dir, space)
            rundir.truncate_history(history, ctx.step, finished=finished)
        for epoch in range(start_epoch, recipe.epochs if strategy_cls.trains_supernet and not finished else start_epoch):
            ctx.epoch = epoch
            strategy.on_epoch_start(ctx, epoch)
            rfdata.set_epoch(loaders.weight, seed, epoch)
            rfdata.set_epoch(loaders.meta, seed, epoch)
            meta_batches = cycle(loaders.meta)
            for batch in itertools.islice(loaders.weight, steps_per_epoch):
                stats = dist.mean_stats(strategy.step(ctx, batch, next(meta_batches)), device)
                check_finite(stats, f"search step {ctx.step + 1} (epoch {epoch + 1})", HINT)
                fixings = strategy.decide(ctx)
                if fixings:
                    _after_fixing(ctx, supernet, dist, device, strategy)
                lr = ctx.weight_lr  # the rate this step used
                scheduler.step()
                ctx.step += 1
                if dist.is_main:
                    history_log.write(_record(ctx, stats, fixings, supernet, lr))
                fixed = f"{n_points - len(supernet.unfixed())}/{n_points}"
                progress.update(1, f"epoch {epoch + 1}/{recipe.epochs} · loss {stats.get('loss', 0.0):.3f} · acc {stats.get('acc', 0.0):.1f}% · fixed {fixed}")
                if strategy.finished():
                    stopped_early = True
                    break
            save(epoch + 1, False)
            progress.epoch_done()
            if stopped_early:
                break

        if not finished:
            meta = cycle(loaders.meta) if loaders is not None else iter(())
            fixings = strategy.finalize(ctx, meta)
            if fixings:  # the optimizers' state then matches what a resume rebuilds from the arch
                _after_fixing(ctx, supernet, dist, device, strategy)
            if dist.is_main and fixings:
                history_log.write(_record(ctx, {}, fixings, supernet, scheduler.get_last_lr()[0], final=True))
            save(recipe.epochs, True)
    history_log.close()
    wall = elapsed + time.perf_counter() - started
    result = SearchResult(run_dir, snapshot(), ctx.step, wall, stopped_early)
    if dist.is_main:
        rundir.write_summary(
            run_dir,
            {"steps": ctx.step, "budget_steps": total_steps if strategy_cls.trains_supernet else 0, "stopped_early": stopped_early, "wall_time_s": round(wall, 3), "arch": "arch.json"},
        )
    dist.barrier()
    return result


def _after_fixing(ctx: SearchContext, supernet: Supernet, dist: Dist, device: torch.device, strategy: Strategy) -> None:
    """After fixing: drop the gone parameters from the weights' optimizer and the strategy's state;
    re-wrap DDP around the new set."""
    prune_optimizer(ctx.weight_optimizer, supernet.weight_parameters())
    strategy.after_fixing(ctx)
    ctx.model = dist.wrap(supernet, device, find_unused=strategy.single_path)


def _record(ctx: SearchContext, stats: dict[str, float], fixings: list[Fixing], supernet: Supernet, lr: float, final: bool = False) -> dict[str, Any]:
    return {
        "step": ctx.step,
        "epoch": ctx.epoch,
        "lr": lr,
        **{k: round(v, 5) for k, v in stats.items()},
        "fixed": len(supernet.points) - len(supernet.unfixed()),
        "probs": {p: [round(x, 5) for x in probs.values()] for p, probs in supernet.probabilities().items()},
        "fixings": [{"path": f.path, "choice": f.choice, "step": f.step} for f in fixings],
        **({"final": True} if final else {}),
    }
