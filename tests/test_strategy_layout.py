"""A strategy owns its options and state: PMPL's α optimizer and warm-up are its options, its
Adam lives in its state_dict; the older layout (both under ``train.search``, Adam at the
checkpoint's top level) still loads and resumes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from rfsearch import load_space, run_search
from rfsearch.errors import ConfigError, RfsearchWarning
from rfsearch.io import load_checkpoint, save_checkpoint
from rfsearch.strategies import resolve_strategy
from rfsearch.strategies.pmpl import PMPL
from rfsearch.train.rundir import CHECKPOINT, CONFIG, load_run_config
from tests import tiny

OLD = """\
backbone: {name: "examples.custom_backbone:TinyNet", input_size: 16, kwargs: {width: 8}}
insert: [{modules: "blocks.*.depthwise"}]
strategy: {name: pmpl, rho: 0.3}
train:
  search:
    epochs: 2
    arch_warmup_epochs: 1
    arch_optimizer: {lr: 0.07, betas: [0.6, 0.9]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "old.yaml"
    path.write_text(text)
    return path


def test_old_layout_moves_to_the_strategy_with_one_note_per_key(tmp_path: Path) -> None:
    path = write(tmp_path, OLD)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        space = load_space(path)
        load_space(path)  # the same file again: no second note
    notes = [str(w.message) for w in caught if issubclass(w.category, RfsearchWarning)]
    assert notes == [
        f"{path}:8: train.search.arch_optimizer is deprecated: write it as strategy.arch_optimizer",
        f"{path}:7: train.search.arch_warmup_epochs is deprecated: write it as strategy.arch_warmup_epochs",
    ]
    _, options = resolve_strategy(space)
    assert options.arch_optimizer.lr == 0.07 and options.arch_optimizer.betas == (0.6, 0.9) and options.arch_warmup_epochs == 1
    assert options.rho == 0.3 and "arch_optimizer" not in space.train.search.model_dump()


def test_an_old_key_keeps_its_line_and_a_strategy_without_it_ignores_it(tmp_path: Path) -> None:
    with pytest.warns(RfsearchWarning), pytest.raises(ConfigError, match=r"old\.yaml:8: strategy\.arch_optimizer\.lr: .*greater than 0"):
        load_space(write(tmp_path, OLD.replace("lr: 0.07", "lr: -1")))
    with pytest.warns(RfsearchWarning):
        space = load_space(write(tmp_path, OLD.replace("{name: pmpl, rho: 0.3}", "{name: uniform}")))
    assert resolve_strategy(space)[1].model_dump() == {"eval_batches": 4} and space.strategy.options == {}
    with pytest.warns(RfsearchWarning), pytest.raises(ConfigError, match=r"old\.yaml:3: strategy\.arch_optimizer: unknown option 'arch_optimizer' for strategy 'uniform'"):
        load_space(write(tmp_path, OLD.replace("{name: pmpl, rho: 0.3}", "{name: uniform, arch_optimizer: {lr: 0.1}}")))


class InterruptedPMPL(PMPL):
    """PMPL that raises before step ``stop_at`` (a crash after a checkpoint)."""

    stop_at: ClassVar[int | None] = None

    def step(self, ctx, batch, meta_batch):
        if ctx.step == self.stop_at:
            raise RuntimeError("interrupted")
        return super().step(ctx, batch, meta_batch)


def test_an_old_checkpoint_and_config_resume_to_the_same_alpha(tmp_path: Path) -> None:
    """α's Adam state travels in the strategy's state_dict; a checkpoint of the older layout (Adam at
    its top level) and a config of the older layout (PMPL's options under train.search) resume
    to the α of an uninterrupted run."""
    sets = [*tiny.TINY, "train.search.batch_size=16", "train.search.epochs=3", "strategy.rho=null", f"strategy.name={__name__}:InterruptedPMPL"]
    sets += ["strategy.arch_optimizer.lr=0.05"]
    full = run_search(load_space("spaces/custom_backbone.yaml", sets), tmp_path / "full", show_progress=False)
    assert "arch_optimizer" in load_checkpoint(full.run_dir / CHECKPOINT)["strategy"]

    InterruptedPMPL.stop_at = full.steps // 3 + 1  # in the second epoch, after the first checkpoint
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            run_search(load_space("spaces/custom_backbone.yaml", sets), tmp_path / "cut", show_progress=False)
    finally:
        InterruptedPMPL.stop_at = None
    cut = tmp_path / "cut"
    state = load_checkpoint(cut / CHECKPOINT)
    assert state["epoch"] == 1 and state["strategy"]["arch_optimizer"]["state"]
    state["arch_optimizer"] = state["strategy"].pop("arch_optimizer")  # the older layout
    save_checkpoint(cut / CHECKPOINT, state)
    config = yaml.safe_load((cut / CONFIG).read_text())
    config["train"]["search"]["arch_optimizer"] = config["strategy"].pop("arch_optimizer")
    (cut / CONFIG).write_text(yaml.safe_dump(config))

    with pytest.warns(RfsearchWarning, match="train.search.arch_optimizer is deprecated"):
        space = load_run_config(cut)
    resumed = run_search(space, resume=cut, show_progress=False)
    assert resumed.steps == full.steps
    a, b = load_checkpoint(full.run_dir / CHECKPOINT), load_checkpoint(cut / CHECKPOINT)
    alphas = [k for k in a["model"] if k.endswith(".alpha")]
    assert alphas
    for key in alphas:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
