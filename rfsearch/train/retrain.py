"""Retrain a child from scratch with ``train.retrain``: top-1/top-5 every epoch, best and last
checkpoints, resumable. One loop for the CLI and for every ablation row."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfsearch import data as rfdata
from rfsearch.arch import Arch
from rfsearch.console import console
from rfsearch.discretize import build_child, child_state, save_child
from rfsearch.errors import RfsearchError
from rfsearch.io import restoring, save_checkpoint, write_json
from rfsearch.report import child_report
from rfsearch.space.schema import SpaceConfig
from rfsearch.train import rundir
from rfsearch.train.engine import (
    autocast,
    check_finite,
    check_weights_finite,
    classification_loss,
    cosine_schedule,
    epoch_steps,
    evaluate,
    rng_state,
    set_rng_state,
    sgd,
    to_device,
)
from rfsearch.train.loggers import HistoryWriter
from rfsearch.train.setup import RunSetup, class_count


HINT = "lower train.retrain.optimizer.lr or set train.retrain.grad_clip"


@dataclass
class RetrainResult:
    run_dir: Path
    arch: Arch
    history: list[dict[str, Any]]  # one record per finished epoch
    best: dict[str, Any]  # epoch, top1, top5 of the best validation top-1
    report: dict[str, Any]  # params and MACs of the child against its backbone (report.json)
    wall_time_s: float
    finished: bool

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def metrics(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        return {
            "finished": self.finished,
            "epochs": len(self.history),
            "final": {k: self.final.get(k) for k in ("epoch", "top1", "top5", "val_loss")},
            "best": self.best,
            "params": self.report["child"]["params"],
            "macs": self.report["child"]["macs"],
            "backbone_params": self.report["backbone"]["params"],
            "backbone_macs": self.report["backbone"]["macs"],
            "input_size": self.report["input_size"],
            "wall_time_s": round(self.wall_time_s, 3),
            "per_epoch": self.history,
        }


def fit_classifier(arch: Arch, space: SpaceConfig) -> Arch:
    """The arch with its classifier sized for the retraining data (unless the backbone's kwargs fix
    it), so an arch searched on one dataset retrains on another."""
    num_classes = class_count(arch.backbone, space.data)
    return arch if num_classes == arch.num_classes else arch.model_copy(update={"num_classes": num_classes})


def run_retrain(
    space: SpaceConfig,
    arch: Arch,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    epochs: int | None = None,
    show_progress: bool = True,
    log: Sequence[str] = (),
) -> RetrainResult:
    """Train the child of ``arch`` from scratch on ``space.data`` with ``space.train.retrain`` into a
    run directory (or continue the one in ``resume``). ``epochs`` overrides the recipe's; ``log``:
    the sinks (csv, tensorboard) the per-epoch history also goes to."""
    if epochs is not None:
        space = space.model_copy(deep=True)
        space.train.retrain.epochs = epochs
    recipe = space.train.retrain
    arch = fit_classifier(arch, space)
    run = RunSetup.start("retrain", space.train, resume)
    dist, device, seed, channels_last = run.dist, run.device, run.seed, run.channels_last

    child = build_child(arch)
    report = child_report(arch)
    run_dir = run.open_run_dir(arch.space or space.name, out)
    child = run.sync_bn(run.place(child))
    loaders = rfdata.build_train_loaders(space.data, batch_size=recipe.batch_size, seed=seed, device=device, distributed=dist.enabled)
    steps_per_epoch = epoch_steps(loaders.train, recipe.steps_per_epoch)
    optimizer = sgd(child.parameters(), recipe.optimizer)
    scheduler = cosine_schedule(optimizer, recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch)
    model = dist.wrap(child, device)

    start_epoch, step, elapsed = 0, 0, 0.0
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": None, "top1": None, "top5": None}
    history_path, checkpoint = run.history, run.checkpoint
    history_log = HistoryWriter(history_path, log, x_key="epoch")
    state = run.resumed_state()
    resumed = state is not None
    if state is not None:
        with restoring(checkpoint):
            if not Arch.model_validate(state["arch"]).same_network(arch):
                raise RfsearchError(f"{checkpoint} holds another architecture than the one given to resume it")
            child.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start_epoch, step, elapsed, history, best = state["epoch"], state["step"], state["elapsed"], state["history"], state["best"]

    started = time.perf_counter()

    def result() -> RetrainResult:
        return RetrainResult(run_dir, arch, history, best, report, elapsed + time.perf_counter() - started, len(history) == recipe.epochs)

    progress = run.progress(recipe.epochs * steps_per_epoch, step, show_progress)
    val_note = "-"
    with rundir.keeping_last_checkpoint(checkpoint), progress:
        if dist.is_main:
            if resumed:
                console.print(f"[bold]Resuming[/] {run_dir} at epoch {start_epoch}/{recipe.epochs}")
            else:
                write_json(run_dir / rundir.REPORT, report)  # first: it marks a retrain run directory
                rundir.save_config(run_dir, space)
                arch.save(run_dir / "arch.json")
            rundir.truncate_history(history_path, step)
        for epoch in range(start_epoch, recipe.epochs):
            rfdata.set_epoch(loaders.train, seed, epoch)
            child.train()
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples
            for batch in itertools.islice(loaders.train, steps_per_epoch):
                x, y = to_device(batch, device, channels_last)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, space.train.amp):
                    logits = model(x)
                loss = classification_loss(logits, y, label_smoothing=recipe.label_smoothing)
                mean_loss = dist.mean_stats({"loss": loss.item()}, device)  # the same on every rank, so all stop together
                check_finite(mean_loss, f"retrain step {step + 1} (epoch {epoch + 1})", HINT)  # before the step: the weights stay good
                loss.backward()
                if recipe.grad_clip is not None:
                    nn.utils.clip_grad_norm_(child.parameters(), recipe.grad_clip)
                optimizer.step()
                lr = scheduler.get_last_lr()[0]  # the rate this step used: the record keeps the epoch's last
                scheduler.step()
                step += 1
                sums[0] += loss.detach() * y.numel()
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += y.numel()
                acc = 100 * sums[1].item() / sums[2].item()  # this epoch's so far, on this rank
                progress.update(1, f"epoch {epoch + 1}/{recipe.epochs} · loss {mean_loss['loss']:.3f} · acc {acc:.1f}% · val top-1 {val_note}")
            dist.sum_(sums)
            dist.mean_buffers(child)  # every rank evaluates (and rank 0 saves) the same BN statistics
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": lr,
                "train_loss": round(sums[0].item() / sums[2].item(), 5),
                "train_acc": round(100 * sums[1].item() / sums[2].item(), 3),
                "val_loss": None,
                "top1": None,
                "top5": None,
            }
            if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
                val = evaluate(child, loaders.val, device, amp=space.train.amp, channels_last=channels_last, reduce=dist.sum_)
                record.update(
                    val_loss=round(val["loss"], 5),
                    top1=round(val["top1"], 3),
                    top5=None if val["top5"] is None else round(val["top5"], 3),
                )
            check_finite({k: record[k] for k in ("val_loss", "train_loss") if record[k] is not None}, f"retrain epoch {epoch + 1}", HINT)
            check_weights_finite(child, f"retrain epoch {epoch + 1}", HINT)  # a NaN never overwrites the last good checkpoint
            history.append(record)
            improved = record["top1"] is not None and (best["top1"] is None or record["top1"] > best["top1"])
            if improved:
                best = {"epoch": record["epoch"], "top1": record["top1"], "top5": record["top5"]}
            if record["top1"] is not None:
                val_note = f"{record['top1']:.2f}% (best {best['top1']:.2f}%)"
            top5 = "" if record["top5"] is None else f" top-5 {record['top5']:.2f}%"
            progress.epoch_done(
                f"epoch {epoch + 1}/{recipe.epochs} · loss {record['train_loss']:.3f} · acc {record['train_acc']:.1f}% · val top-1 {val_note}",
                summary=f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} · val top-1 {val_note}{top5}" if progress.live else None,
            )
            if dist.is_main:
                history_log.write(record)
                if improved:
                    save_child(run_dir / rundir.BEST, arch, child)
                save_checkpoint(
                    checkpoint,
                    {
                        **child_state(arch, child),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                        "epoch": epoch + 1,
                        "step": step,
                        "elapsed": elapsed + time.perf_counter() - started,
                        "history": history,
                        "best": best,
                    },
                )
                write_json(run_dir / rundir.METRICS, result().metrics())
    history_log.close()
    done = result()
    if dist.is_main:
        write_json(run_dir / rundir.METRICS, done.metrics())
    dist.barrier()
    return done
