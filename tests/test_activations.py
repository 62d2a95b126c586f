"""Activations that would copy their input in place run out of place (rfsearch.train.activations)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import profile

from rfsearch.train.activations import activations_out_of_place


def _clones(fn) -> int:
    with profile() as prof:
        fn()
    return sum(e.name == "aten::clone" for e in prof.events())


@pytest.mark.parametrize("make", [lambda: nn.ReLU6(inplace=True), lambda: nn.Hardswish(inplace=True), lambda: nn.SiLU(inplace=True)])
def test_out_of_place_gives_the_same_values_and_gradients_without_the_copy(make):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last) * 4
    conv = nn.Conv2d(6, 6, 1)
    runs = []
    for out_of_place in (False, True):
        model = nn.Sequential(conv, make())
        if out_of_place:
            assert activations_out_of_place(model) == 1
            assert model[1].inplace is False
        xi = x.clone().requires_grad_()

        def step() -> None:
            model(xi).square().sum().backward()

        conv.zero_grad(set_to_none=True)
        runs.append((_clones(step), model(xi).detach(), xi.grad.clone(), conv.weight.grad.clone()))
    (clones_in, y_in, gx_in, gw_in), (clones_out, y_out, gx_out, gw_out) = runs
    assert clones_in >= 1 and clones_out == 0  # the pass torch spends in place, and no longer
    assert torch.equal(y_in, y_out) and torch.equal(gx_in, gx_out) and torch.equal(gw_in, gw_out)


def test_only_activations_that_copy_are_changed():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardtanh(inplace=True), nn.ReLU6(), nn.LeakyReLU(inplace=True), nn.Mish(inplace=True))
    assert activations_out_of_place(model) == 3
    assert [getattr(m, "inplace") for m in model] == [True, False, False, False, True, False]
    assert activations_out_of_place(model) == 0


def test_runs_place_models_with_activations_out_of_place():
    from rfsearch.space.schema import TrainConfig
    from rfsearch.train.setup import RunSetup

    run = RunSetup.start("retrain", TrainConfig(device="cpu"), None)
    model = run.place(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(inplace=True), nn.ReLU(inplace=True)))
    assert (model[1].inplace, model[2].inplace) == (False, True)
