"""examples/gdas_strategy.py, a user strategy in one file plugged in by import path: one candidate
per point per step, α's gradient through the straight-through gate, the temperature annealed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.gdas_strategy import GDAS, GDASOptions
from rfsearch import load_space, run_search
from rfsearch.io import load_checkpoint, read_jsonl
from rfsearch.search.context import SearchContext
from tests import tiny
from tests.test_strategies import batches, tiny_supernet

STRATEGY = "examples.gdas_strategy:GDAS"


def test_a_step_runs_one_candidate_per_point_and_moves_every_alpha() -> None:
    net = tiny_supernet()
    ctx = SearchContext(supernet=net, model=net, weight_optimizer=torch.optim.SGD(net.weight_parameters(), lr=0.1), device=torch.device("cpu"), epochs=3)
    strategy = GDAS(GDASOptions(arch_optimizer={"lr": 0.01}), net, seed=0)
    strategy.setup(ctx)
    calls: dict[str, list[str]] = {path: [] for path in net.mixed_ops}
    for path, mixed in net.mixed_ops.items():
        for name, op in mixed.ops.items():
            op.register_forward_hook(lambda *_, path=path, name=name: calls[path].append(name))
    alpha_before = [a.detach().clone() for a in net.arch_parameters()]
    stats = strategy.step(ctx, *batches())
    assert all(len(names) == 2 for names in calls.values()), calls  # the weight forward and the meta forward: one op each
    for before, alpha in zip(alpha_before, net.arch_parameters()):
        assert (alpha.detach() != before).all()  # the gate's gradient reaches every candidate's α
    assert stats["tau"] == 10.0 and all(m.active is None for m in net.mixed_ops.values())
    strategy.on_epoch_start(ctx, 2)
    assert strategy.tau == pytest.approx(0.1)


def test_gdas_searches_by_import_path(tmp_path: Path) -> None:
    sets = [*tiny.TINY, "train.search.batch_size=16", "train.search.epochs=2", f"strategy.name={STRATEGY}", "strategy.arch_optimizer.lr=0.05"]
    result = run_search(load_space("spaces/custom_backbone.yaml", sets), tmp_path / "gdas", show_progress=False)
    assert result.arch.strategy == STRATEGY and result.steps > 0 and not result.stopped_early
    assert all(len(point.choice) == 1 for point in result.arch.points)
    history = [r for r in read_jsonl(tmp_path / "gdas" / "history.jsonl") if "final" not in r]
    assert [r["tau"] for r in (history[0], history[-1])] == [10.0, 0.1]
    assert history[-1]["probs"] != history[0]["probs"]  # α moves from step to step
    assert "arch_optimizer" in load_checkpoint(tmp_path / "gdas" / "checkpoint.pt")["strategy"]  # its Adam in its own state
