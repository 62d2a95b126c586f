"""The global op's gate head in one native call each way (rfsearch/ops/gate_head.c) against the
paper's form in float64: the gates, every gradient, BatchNorm's running statistics; where it
applies and where the layers run as they are."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rfsearch.ops.attention as attention
from rfsearch.inference import fold_batchnorm
from rfsearch.ops import native
from rfsearch.ops.attention import SpatialSeparablePool
from test_fast_mixedop import conv_ssp
from test_native_mix import count_calls

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernel cannot be built")

F32 = {"atol": 2e-6, "rtol": 1e-5}


def op_pair(c: int, train: bool, momentum: float | None = 0.1, seed: int = 0) -> tuple[SpatialSeparablePool, SpatialSeparablePool]:
    """(float64 reference, float32 op) with the same, non-default BN parameters and statistics."""
    torch.manual_seed(seed)
    op = SpatialSeparablePool(c)
    bn = op.reduce[1]
    bn.momentum = momentum
    nn.init.normal_(bn.weight), nn.init.normal_(bn.bias)
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    op.train(train)
    return copy.deepcopy(op).double(), op


def gated(op: nn.Module, x: torch.Tensor, g: torch.Tensor, form=None):
    """y = x · a_h · a_w (the op's gates, or ``form``), ∂x, every parameter's gradient, the buffers."""
    x = x.detach().clone().requires_grad_(True)
    if form is not None:
        y = form(op, x)
    else:
        a_h, a_w = op.gates(x)
        y = x * a_h * a_w
    (y * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in op.named_parameters()}
    return y.detach(), x.grad, grads, {n: b.clone() for n, b in op.named_buffers()}


def assert_close_to(ref, got) -> None:
    torch.testing.assert_close(got[0], ref[0].float(), **F32, msg="forward")
    torch.testing.assert_close(got[1], ref[1].float(), **F32, msg="gradient of x")
    for name, grad in ref[2].items():
        scale = max(1.0, grad.abs().max().item())  # ∂b of the reduce layer is 0 in exact arithmetic under a training BN
        torch.testing.assert_close(got[2][name], grad.float(), atol=2e-6 * scale, rtol=1e-5, msg=f"gradient of {name}")
    for name, value in ref[3].items():
        torch.testing.assert_close(got[3][name], value.to(got[3][name].dtype), **F32, msg=f"buffer {name}")


@pytest.fixture
def head_calls(monkeypatch):
    return count_calls(monkeypatch, "head_forward", "head_backward")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(4, 16, 7, 5), (3, 24, 1, 6), (2, 480, 2, 2), (1, 8, 9, 9)], ids=lambda s: "x".join(map(str, s)))
def test_native_head_matches_the_papers_form(shape, layout, train, head_calls) -> None:
    ref, op = op_pair(shape[1], train)
    torch.manual_seed(1)
    x, g = torch.randn(shape), torch.randn(shape)
    x = x.contiguous(memory_format=layout)
    want = gated(ref, x.double(), g.double(), form=conv_ssp)
    got = gated(op, x, g)
    assert head_calls == {"head_forward": 1, "head_backward": 1}
    assert_close_to(want, got)
    if train:
        assert op.reduce[1].num_batches_tracked.item() == 1 == ref.reduce[1].num_batches_tracked.item()


def test_cumulative_momentum_and_several_steps() -> None:
    """momentum None: BN's running statistics are the plain average over the steps taken."""
    ref, op = op_pair(16, True, momentum=None)
    for step in range(3):
        torch.manual_seed(10 + step)
        x, g = torch.randn(2, 16, 5, 4), torch.randn(2, 16, 5, 4)
        want, got = gated(ref, x.double(), g.double(), form=conv_ssp), gated(op, x, g)
        for p in (*ref.parameters(), *op.parameters()):
            p.grad = None
    assert_close_to(want, got)
    assert op.reduce[1].num_batches_tracked.item() == 3


def test_folded_head_and_inference() -> None:
    """fold_batchnorm's form (the BN an Identity) and eval under no_grad, as a child runs."""
    ref, op = op_pair(32, False)
    folded = fold_batchnorm(op)
    assert type(folded.reduce[1]) is nn.Identity
    torch.manual_seed(2)
    x = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)
    assert attention._native_head(folded, attention.separable_profiles(x), 6) is not None
    with torch.no_grad():
        torch.testing.assert_close(folded(x), conv_ssp(ref, x.double()).float(), **F32)


def test_only_the_profiles_gradient_when_the_weights_are_constants() -> None:
    """The α step runs with the weights marked constant: ∂x is the same, no weight gets a gradient."""
    _, op = op_pair(24, True)
    torch.manual_seed(3)
    x, g = torch.randn(2, 24, 4, 4), torch.randn(2, 24, 4, 4)
    full = gated(copy.deepcopy(op), x, g)
    for p in op.parameters():
        p.requires_grad_(False)
    x = x.clone().requires_grad_(True)
    a_h, a_w = op.gates(x)
    (x * a_h * a_w * g).sum().backward()
    assert torch.equal(x.grad, full[1])
    assert all(p.grad is None for p in op.parameters())


def test_the_same_bits_for_any_number_of_threads() -> None:
    """The weight gradients are summed over a fixed split of the samples, whatever the threads."""
    ref_threads = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            _, op = op_pair(40, True)
            torch.manual_seed(4)
            x, g = (torch.randn(13, 40, 5, 3).contiguous(memory_format=torch.channels_last) for _ in range(2))
            results.append(gated(op, x, g, form=lambda m, t: m(t)))  # the gating itself native too: ATen's reductions depend on threads
    finally:
        torch.set_num_threads(ref_threads)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0]) and torch.equal(other[1], results[0][1])
        assert all(torch.equal(other[2][n], results[0][2][n]) for n in results[0][2])


def test_nan_and_extreme_profiles() -> None:
    """A NaN reaches the gates as NaN (the module's sigmoid does the same); gates saturate to 0 and 1
    where the pre-activations are huge, without overflow."""
    _, op = op_pair(8, False)
    x = torch.randn(1, 8, 3, 3)
    x[0, 2, 1, 1] = float("nan")
    with torch.no_grad():
        a_h, a_w = op.gates(x)
        ref_h, ref_w = attention.SpatialSeparablePool.gates(op.double(), x.double())
    assert torch.equal(a_h.isnan(), ref_h.isnan()) and torch.equal(a_w.isnan(), ref_w.isnan())
    op.float()
    with torch.no_grad():
        op.gate_h.bias.fill_(1e4), op.gate_w.bias.fill_(-1e4)
        a_h, a_w = op.gates(torch.randn(1, 8, 3, 3))
    assert torch.equal(a_h, torch.ones_like(a_h)) and torch.all(a_w < 1e-30) and torch.all(a_w >= 0)


def test_where_the_layers_run_as_they_are(head_calls) -> None:
    """float64, a hook on one of the head's layers (which the native call would skip), CPU autocast
    and tracing (exports keep the layers) run the modules' own path."""
    ref, op = op_pair(8, True)
    x = torch.randn(2, 8, 3, 3)
    ref.gates(x.double())
    seen = []
    handle = op.reduce[1].register_forward_hook(lambda *a: seen.append(1))
    op.gates(x)
    handle.remove()
    assert seen == [1] and head_calls["head_forward"] == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a_h, _ = op.gates(x)
    assert head_calls["head_forward"] == 0 and a_h.dtype == torch.bfloat16
    traced = torch.jit.trace(op.eval(), x, check_trace=False)
    assert head_calls["head_forward"] == 0
    assert "aten::linear" in str(traced.inlined_graph)
    op.gates(x)
    assert head_calls["head_forward"] == 1


@pytest.mark.parametrize(
    "change",
    [
        lambda op: setattr(op.reduce, "1", nn.BatchNorm2d(op.reduce[1].num_features, affine=False)),
        lambda op: setattr(op.reduce, "2", nn.ReLU()),
        lambda op: setattr(op, "gate_h", nn.Conv2d(op.gate_h.in_channels, op.gate_h.out_channels, 1, bias=False)),
        lambda op: setattr(op.gate_w, "weight", nn.Parameter(torch.randn(op.gate_w.in_channels, 8, 1, 1).transpose(0, 1))),
    ],
    ids=["bn-without-affine", "another-activation", "gate-without-bias", "non-contiguous-weight"],
)
def test_another_structure_runs_its_modules(change, head_calls) -> None:
    _, op = op_pair(8, True)
    change(op)
    a_h, a_w = op.gates(torch.randn(2, 8, 3, 4))
    assert head_calls["head_forward"] == 0 and a_h.shape == (2, 8, 3, 1) and a_w.shape == (2, 8, 1, 4)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bn_without_running_statistics(train, head_calls) -> None:
    """track_running_stats=False: batch statistics in training and evaluation, nothing to move."""
    ref, op = op_pair(16, train)
    for m in (ref, op):
        hid = m.reduce[1].num_features
        m.reduce[1] = nn.BatchNorm2d(hid, track_running_stats=False).to(m.reduce[0].weight.dtype).train(train)
    torch.manual_seed(5)
    x, g = torch.randn(3, 16, 4, 6), torch.randn(3, 16, 4, 6)
    assert_close_to(gated(ref, x.double(), g.double(), form=conv_ssp), gated(op, x, g))
    assert head_calls["head_forward"] == 1
