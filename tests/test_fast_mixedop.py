"""The fused MixedOp against the plain weighted sum: same forward, same gradients for x, α and
every candidate parameter, on odd sizes, batch 1, both memory formats, both backends, chunked
batches, ties, fixed points, unknown ops, functional_call, α-only gradients and DDP."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
from torch import nn
from torch.func import functional_call

import rfsearch.ops.fused as fused
from rfsearch.ops.attention import SpatialSeparablePool
from rfsearch.ops.fused import FastAvgPool2d, FastMaxPool2d, classify
from rfsearch.ops.registry import get_op
from rfsearch.supernet import MixedOp

SHAPES = [(2, 8, 7, 7), (1, 8, 5, 9), (3, 8, 16, 16), (2, 8, 20, 18), (2, 8, 1, 1), (2, 8, 2, 2), (2, 8, 4, 4), (1, 8, 1, 5), (2, 8, 3, 1), (1, 8, 12, 3)]


def candidates(c: int, extra: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    ops = {"skip": get_op("skip").build(c, {})}
    for k in (3, 5, 7):
        ops[f"avgpool{k}"] = get_op("avgpool").build(c, {"k": k})
    for k in (3, 5, 7):
        ops[f"maxpool{k}"] = get_op("maxpool").build(c, {"k": k})
    ops["global"] = get_op("global").build(c, {})
    ops.update(extra or {})
    return ops


def pair(c: int, dtype: torch.dtype = torch.float64, backend: str | None = None, extra=None, seed: int = 0) -> tuple[MixedOp, MixedOp]:
    """(the plain weighted sum, whose global op is the paper's convolutions; the fused op)."""
    torch.manual_seed(seed)
    ref = MixedOp(candidates(c, extra), init_std=1.0, fast=False).to(dtype)
    fast = copy.deepcopy(ref)
    fast.fast, fast.backend = True, backend
    for op in ref.ops.values():
        if type(op) is SpatialSeparablePool:
            op.__class__ = PaperSSP  # same parameters and names, none of the fast paths
    return ref, fast


def run(m: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = m(x)
    (y * g).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
    buffers = {n: b.detach().clone() for n, b in m.named_buffers()}
    return y.detach(), x.grad.detach(), grads, buffers


def assert_same(a, b, dtype: torch.dtype) -> None:
    tol = {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(b[0], a[0], **tol, msg="forward")
    torch.testing.assert_close(b[1], a[1], **tol, msg="gradient of x")
    assert set(a[2]) == set(b[2]), "the same parameters get gradients"
    for name in a[2]:
        torch.testing.assert_close(b[2][name], a[2][name], **tol, msg=f"gradient of {name}")
    for name in a[3]:
        torch.testing.assert_close(b[3][name], a[3][name], **tol, msg=f"buffer {name}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", ["shift", "stock"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_same_forward_and_gradients_as_the_weighted_sum(shape, backend, channels_last) -> None:
    ref, fast = pair(shape[1], backend=backend)
    torch.manual_seed(1)
    x, g = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = run(ref, x, g), run(fast, x, g)
    assert_same(a, b, torch.float64)
    assert b[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("shape", [(2, 8, 7, 7), (1, 8, 5, 9), (2, 8, 16, 16), (2, 8, 19, 17), (2, 8, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_float32_within_float_tolerance(shape) -> None:
    ref, fast = pair(shape[1], torch.float32)
    torch.manual_seed(2)
    x, g = torch.rand(shape) * 6, torch.randn(shape)
    assert_same(run(ref, x, g), run(fast, x, g), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(5, 8, 7, 7), (4, 8, 5, 9), (3, 8, 16, 16), (3, 8, 21, 19), (4, 8, 2, 2), (3, 8, 1, 1)], ids=lambda s: "x".join(map(str, s)))
def test_batch_chunks_give_the_same_result(monkeypatch, shape, dtype) -> None:
    monkeypatch.setattr(fused, "_CHUNK_ELEMENTS", shape[1] * shape[2] * shape[3])  # one sample per chunk
    ref, fast = pair(shape[1], dtype)
    torch.manual_seed(3)
    x, g = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    assert_same(run(ref, x, g), run(fast, x, g), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (1, 3, 5, 9), (2, 3, 16, 16), (2, 3, 2, 6), (2, 3, 4, 4), (2, 3, 13, 2)], ids=lambda s: "x".join(map(str, s)))
def test_ties_route_the_gradient_to_the_same_element_as_maxpool(shape, k, dtype) -> None:
    """Integer inputs tie everywhere: MaxPool2d sends each gradient to the window's first maximum
    in row-major order; so must the fused path (a max cascade through torch.maximum would split it)."""
    torch.manual_seed(k)
    ref = MixedOp({"m": nn.MaxPool2d(k, 1, k // 2), "s": nn.Identity()}, 1.0, fast=False).to(dtype)
    fast = copy.deepcopy(ref)
    fast.fast = True
    for values in (2, 3):
        x = torch.randint(0, values, shape).to(dtype)
        g = torch.randn(shape, dtype=dtype)
        a, b = run(ref, x, g), run(fast, x, g)
        torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(b[0], a[0], atol=0, rtol=0)


def test_negative_zero_ties_with_positive_zero() -> None:
    x = torch.tensor([[[[-0.0, 0.0, -0.0, 0.0, 0.0]]]])
    g = torch.tensor([[[[1.0, 2.0, 3.0, 4.0, 5.0]]]])
    for m in (MixedOp({"m": nn.MaxPool2d(3, 1, 1)}, fast=False), MixedOp({"m": nn.MaxPool2d(3, 1, 1)}, fast=True)):
        xx = x.clone().requires_grad_(True)
        (m(xx) * g).sum().backward()
        if not m.fast:
            expected = xx.grad
    torch.testing.assert_close(xx.grad, expected, atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(2, 8, 7, 7), (1, 8, 5, 9), (2, 8, 20, 18), (2, 8, 2, 2)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", ["shift", "stock"])
def test_gradient_for_alpha_only(shape, backend) -> None:
    """The arch step: autograd.grad w.r.t. α alone, x a leaf without gradient (no dx is computed)."""
    ref, fast = pair(shape[1], backend=backend)
    torch.manual_seed(4)
    x, g = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    (ga,) = torch.autograd.grad((ref(x) * g).sum(), [ref.alpha])
    (gb,) = torch.autograd.grad((fast(x) * g).sum(), [fast.alpha])
    torch.testing.assert_close(gb, ga, atol=1e-10, rtol=1e-9)


def test_under_functional_call_with_lookahead_weights() -> None:
    """θ′ = θ − ζ∇θ through torch.func.functional_call, α's gradient only (as SearchContext does)."""
    ref, fast = pair(8)
    torch.manual_seed(5)
    x, g = torch.randn(2, 8, 9, 7, dtype=torch.float64), torch.randn(2, 8, 9, 7, dtype=torch.float64)
    theta = {n: (p.detach() + 0.1 * torch.randn_like(p)) for n, p in ref.named_parameters() if n != "alpha"}
    out = []
    for m in (ref, fast):
        y = functional_call(m, theta, (x,), strict=False)
        out.append((y, torch.autograd.grad((y * g).sum(), [m.alpha])[0]))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-10, rtol=1e-9)
    assert not torch.allclose(out[0][0], ref(x)), "the weights passed in were used"


def test_eval_and_no_grad() -> None:
    ref, fast = pair(8)
    ref.eval(), fast.eval()
    x = torch.randn(3, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("choice", [["maxpool5"], ["global"], ["avgpool7", "global"]])
def test_fixed_points_run_only_their_choice(choice) -> None:
    ref, fast = pair(8)
    for m in (ref, fast):
        m.fix(*choice)
    torch.manual_seed(6)
    x, g = torch.randn(2, 8, 5, 6, dtype=torch.float64), torch.randn(2, 8, 5, 6, dtype=torch.float64)
    assert_same(run(ref, x, g), run(fast, x, g), torch.float64)
    assert set(fast.ops) == set(choice)


class Doubler(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, c, 1, 1), 2.0))

    def forward(self, x):
        return x * self.scale


class MyPool(nn.AvgPool2d):  # a subclass may do anything: not recognised, runs as it is
    def forward(self, x):
        return super().forward(x) + 1.0


def test_unknown_ops_subclasses_and_hooked_ops_run_as_they_are() -> None:
    hooked = nn.MaxPool2d(3, 1, 1)
    calls = []
    hooked.register_forward_hook(lambda *args: calls.append(1))
    extra = {"mine": Doubler(8), "sub": MyPool(3, 1, 1, count_include_pad=False), "hooked": hooked, "strided": nn.AvgPool2d(3, 1, 1, ceil_mode=False, count_include_pad=True)}
    assert classify(extra["mine"]) is None and classify(extra["sub"]) is None and classify(hooked) is None
    assert classify(extra["strided"]) == ("avg", 3, True)
    ref, fast = pair(8, extra=extra)
    torch.manual_seed(7)
    x, g = torch.randn(2, 8, 6, 5, dtype=torch.float64), torch.randn(2, 8, 6, 5, dtype=torch.float64)
    assert_same(run(ref, x, g), run(fast, x, g), torch.float64)
    assert len(calls) == 2, "the hooked op ran through its __call__ in both"


def test_only_unknown_ops_falls_back_entirely() -> None:
    torch.manual_seed(8)
    ref = MixedOp({"a": Doubler(4), "b": nn.Conv2d(4, 4, 3, padding=1)}, 1.0, fast=False).double()
    fast = copy.deepcopy(ref)
    fast.fast = True
    x, g = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert fused.fused_mix(list(fast.ops.values()), torch.ones(2, dtype=torch.float64), x) is None
    assert_same(run(ref, x, g), run(fast, x, g), torch.float64)


def test_squeeze_excitation_gate() -> None:
    extra = {"se": get_op("se").build(8, {})}
    ref, fast = pair(8, extra=extra)
    assert classify(extra["se"]) == ("gate", "se")
    torch.manual_seed(9)
    x, g = torch.randn(2, 8, 6, 7, dtype=torch.float64), torch.randn(2, 8, 6, 7, dtype=torch.float64)
    assert_same(run(ref, x, g), run(fast, x, g), torch.float64)


def conv_ssp(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``SpatialSeparablePool`` as the paper draws it: 1×1 convolutions over the (H+W, 1) profile."""
    h, w = x.shape[-2], x.shape[-1]
    profile = torch.cat([x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)
    mixed_h, mixed_w = torch.split(op.reduce(profile), [h, w], dim=2)
    return x * torch.sigmoid(op.gate_h(mixed_h)) * torch.sigmoid(op.gate_w(mixed_w.transpose(2, 3)))


class PaperSSP(SpatialSeparablePool):
    """The global op computed by :func:`conv_ssp`: the references' form."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_ssp(self, x)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 1, 6), (3, 16, 9, 9)], ids=lambda s: "x".join(map(str, s)))
def test_global_op_matches_the_papers_form(shape, channels_last, train) -> None:
    torch.manual_seed(11)
    ref = get_op("global").build(16, {}).double().train(train)
    nn.init.normal_(ref.reduce[1].weight), nn.init.normal_(ref.reduce[1].bias)
    op = copy.deepcopy(ref)
    x, g = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = run(_Conv(ref), x, g), run(op, x, g)
    assert_same(a, b, torch.float64)
    a_h, a_w = op.gates(x)
    torch.testing.assert_close(x * a_h * a_w, conv_ssp(ref, x), atol=1e-12, rtol=1e-12)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(op.eval()(x), _Conv(ref.eval())(x), atol=1e-12, rtol=1e-12)


class _Conv(nn.Module):
    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_ssp(self.op, x)

    def named_parameters(self, *args, **kwargs):  # the op's own names, so the two runs compare key by key
        return self.op.named_parameters(*args, **kwargs)

    def named_buffers(self, *args, **kwargs):
        return self.op.named_buffers(*args, **kwargs)


def test_bfloat16_within_its_tolerance() -> None:
    ref, fast = pair(8, torch.bfloat16)
    torch.manual_seed(10)
    x, g = torch.rand(2, 8, 7, 7).to(torch.bfloat16) * 6, torch.randn(2, 8, 7, 7).to(torch.bfloat16)
    a, b = run(ref, x, g), run(fast, x, g)
    torch.testing.assert_close(b[0].float(), a[0].float(), atol=0.1, rtol=0.05)
    torch.testing.assert_close(b[1].float(), a[1].float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("module", ["avg", "avg_incl", "max"])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (1, 3, 5, 9), (2, 3, 20, 17), (2, 3, 1, 1), (2, 3, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_fast_pool_modules_are_exact(module, k, shape) -> None:
    if module == "max":
        plain, fast = nn.MaxPool2d(k, 1, k // 2), FastMaxPool2d(k, 1, k // 2)
        x = torch.randint(0, 3, shape).double()
    else:
        incl = module == "avg_incl"
        plain, fast = nn.AvgPool2d(k, 1, k // 2, count_include_pad=incl), FastAvgPool2d(k, 1, k // 2, count_include_pad=incl)
        x = torch.randn(shape, dtype=torch.float64)
    g = torch.randn(shape, dtype=torch.float64)
    a, b = run(plain, x, g), run(fast, x, g)
    torch.testing.assert_close(b[0], a[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(b[1], a[1], atol=1e-12, rtol=1e-12)
    assert classify(fast) is not None, "the supernet recognises the drop-in modules too"


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc-native", "nchw-shift"])
def test_max_pooling_routes_nan_as_maxpool2d_does(layout) -> None:
    """MaxPool2d takes a value that is larger or NaN while it scans a window in row-major order:
    ties go to the first maximum, NaNs to the last NaN. Random float32 maps with ties (values 0-2)
    and a quarter of NaNs, 1 to 17 pixels a side (from 7 rows the native kernel merges long column
    windows in blocks): the same outputs and ∂x (the native kernel bit for bit; the shift backend
    sums a 2×2 plane's routed gradients in another order)."""
    from rfsearch.ops import native

    exact = layout == torch.channels_last and native.available()
    torch.manual_seed(12)
    for _ in range(60):
        h, w = torch.randint(1, 18, (2,)).tolist()
        x = torch.randint(0, 3, (2, 8, h, w)).float()
        x[torch.rand(x.shape) < 0.25] = float("nan")
        x = x.contiguous(memory_format=layout)
        for k in (3, 5, 7):
            a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            ya, yb = nn.MaxPool2d(k, 1, k // 2)(a), FastMaxPool2d(k, 1, k // 2)(b)
            g = torch.randn_like(ya)
            ya.backward(g), yb.backward(g)
            assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
            if exact:
                assert torch.equal(a.grad, b.grad), f"{h}x{w}, k={k}"
            else:
                torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=f"{h}x{w}, k={k}")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_fast_pool_modules_trace_to_aten_pooling() -> None:
    traced = torch.jit.trace(nn.Sequential(FastMaxPool2d(3, 1, 1), FastAvgPool2d(5, 1, 2, count_include_pad=False)), torch.randn(1, 2, 6, 6), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aten::max_pool2d" in graph and "aten::avg_pool2d" in graph


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    _, fast = pair(8)
    model = DistributedDataParallel(fast)
    torch.manual_seed(100 + rank)
    x, g = torch.randn(2, 8, 7, 5, dtype=torch.float64), torch.randn(2, 8, 7, 5, dtype=torch.float64)
    (model(x) * g).sum().backward()
    grads = {n: p.grad for n, p in fast.named_parameters() if p.grad is not None}
    torch.save(grads, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ddp_gradients_are_the_average_of_the_reference(tmp_path) -> None:
    """DDP around a fused MixedOp (gloo, 2 processes): every parameter, α included, gets the mean
    of the reference's per-rank gradients."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "grads")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    got = [torch.load(f"{out}.{r}") for r in range(2)]
    ref, _ = pair(8)
    expected: dict[str, torch.Tensor] = {}
    for rank in range(2):
        ref.zero_grad()
        torch.manual_seed(100 + rank)
        x, g = torch.randn(2, 8, 7, 5, dtype=torch.float64), torch.randn(2, 8, 7, 5, dtype=torch.float64)
        (ref(x) * g).sum().backward()
        for n, p in ref.named_parameters():
            expected[n] = expected.get(n, 0) + p.grad / 2
    for rank in range(2):
        for n, value in expected.items():
            torch.testing.assert_close(got[rank][n], value, atol=1e-10, rtol=1e-9)
