"""In-place activations that would copy their input under autograd run out of place then
(rfsearch.train.activations)."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rfsearch.train.activations import copy_free_activations


class _CountClones(TorchDispatchMode):
    """Counts ATen's clones below autograd (torch.profiler would do too, but Kineto fixes its log
    level at its first start in a process, which then writes to the stderr of later tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.clones = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.clones += func.overloadpacket is torch.ops.aten.clone
        return func(*args, **(kwargs or {}))


def _clones(fn) -> int:
    with _CountClones() as mode:
        fn()
    return mode.clones


@pytest.mark.parametrize("make", [lambda: nn.ReLU6(inplace=True), lambda: nn.Hardswish(inplace=True), lambda: nn.SiLU(inplace=True), lambda: nn.Mish(inplace=True)])
def test_the_same_values_and_gradients_without_the_copy(make):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last) * 4
    conv = nn.Conv2d(6, 6, 1)
    runs = []
    for copy_free in (False, True):
        model = nn.Sequential(conv, make())
        if copy_free:
            assert copy_free_activations(model) == 1
        xi = x.clone().requires_grad_()

        def step() -> None:
            model(xi).square().sum().backward()

        conv.zero_grad(set_to_none=True)
        runs.append((_clones(step), model(xi).detach(), xi.grad.clone(), conv.weight.grad.clone()))
    (clones_in, y_in, gx_in, gw_in), (clones_free, y_free, gx_free, gw_free) = runs
    assert clones_in >= 1 and clones_free == 0  # the pass torch spends in place, and no longer
    assert torch.equal(y_in, y_free) and torch.equal(gx_in, gx_free) and torch.equal(gw_in, gw_free)


def test_without_a_gradient_they_still_work_in_place():
    act = nn.ReLU6(inplace=True)
    copy_free_activations(act)
    x = torch.randn(2, 3, 4, 4) * 8
    expected = x.clamp(0, 6)
    with torch.no_grad():
        y = act(x.requires_grad_())
    assert y.data_ptr() == x.data_ptr() and torch.equal(y, expected)
    plain = torch.randn(5) * 8
    assert act(plain).data_ptr() == plain.data_ptr()  # no gradient recorded through it either


def test_only_torchs_own_in_place_activations_are_swapped():
    class Custom(nn.ReLU6):
        pass

    model = nn.Sequential(nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.Hardtanh(-2, 2, inplace=True), nn.ReLU6(), Custom(inplace=True), nn.Hardsigmoid(inplace=True))
    assert copy_free_activations(model) == 3
    assert [type(m).__name__ for m in model] == ["ReLU", "CopyFreeReLU6", "CopyFreeHardtanh", "ReLU6", "Custom", "CopyFreeHardsigmoid"]
    assert isinstance(model[1], nn.ReLU6) and model[2].min_val == -2
    assert copy_free_activations(model) == 0


def test_runs_place_models_with_copy_free_activations():
    from rfsearch.space.schema import TrainConfig
    from rfsearch.train.setup import RunSetup

    run = RunSetup.start("retrain", TrainConfig(device="cpu"), None)
    model = run.place(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(inplace=True), nn.ReLU(inplace=True)))
    assert (type(model[1]).__name__, type(model[2])) == ("CopyFreeReLU6", nn.ReLU)
    again = pickle.loads(pickle.dumps(model))  # the swapped classes are found by name
    assert type(again[1]) is type(model[1]) and torch.equal(again[0].weight, model[0].weight)
