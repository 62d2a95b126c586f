"""The native mixing kernel (rfsearch/ops/mix_kernel.c) against the plain weighted sum, and the
guarantees around it: used where it applies (float32, channels_last), exact ties, the same bits
for any number of threads, and the shift backend when no compiler is there."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from rfsearch.ops import native
from rfsearch.ops.registry import get_op
from rfsearch.supernet import MixedOp
from rfsearch.ops.fused import FastAvgPool2d, FastMaxPool2d
from rfsearch.ops.attention import separable_profiles
from test_fast_mixedop import SHAPES, PaperSSP, assert_same, run
from test_fast_mixedop import pair as _pair

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernel cannot be built")

NHWC = torch.channels_last


def pair(c: int, dtype: torch.dtype, backend: str, extra=None) -> tuple[MixedOp, MixedOp]:
    """(reference, fused): the reference's pooling candidates are ATen's own modules, so that it
    shares no code with the kernel (the registry builds the drop-in Fast* modules)."""
    ref, fast = _pair(c, dtype, backend=backend, extra=extra)
    for name, op in list(ref.ops.items()):
        if type(op) is FastAvgPool2d:
            ref.ops[name] = nn.AvgPool2d(op.kernel_size, 1, op.padding, count_include_pad=op.count_include_pad)
        elif type(op) is FastMaxPool2d:
            ref.ops[name] = nn.MaxPool2d(op.kernel_size, 1, op.padding)
    return ref, fast


def count_calls(monkeypatch, *names: str) -> dict[str, int]:
    """Wraps each of ``rfsearch.ops.native``'s entry points ``names`` so that its calls are counted."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(native, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(native, name, spy)
    return counts


@pytest.fixture
def calls(monkeypatch):
    """Counts the kernel's calls: the mix's forward and backward, the global op's profiles and its
    one-call inference."""
    return count_calls(monkeypatch, "forward", "backward", "profiles", "profiles_backward", "global_forward")


def inputs(shape, seed: int, layout=NHWC) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x, g = torch.rand(shape) * 6 - 1, torch.randn(shape)
    return x.contiguous(memory_format=layout), g.contiguous(memory_format=layout)


@pytest.mark.parametrize("shape", SHAPES + [(2, 20, 6, 6), (1, 3, 33, 31)], ids=lambda s: "x".join(map(str, s)))
def test_same_forward_and_gradients_as_the_weighted_sum(shape, calls) -> None:
    """Every candidate (skip, avg/max 3/5/7, global, and avg 5 with count_include_pad) on odd, thin
    and clipped maps; a channel count that leaves a partial channel block; the output in the
    input's memory format."""
    ref, fast = pair(shape[1], torch.float32, backend="native", extra={"avg5_incl": nn.AvgPool2d(5, 1, 2, count_include_pad=True)})
    x, g = inputs(shape, 1)
    a, b = run(ref, x, g), run(fast, x, g)
    assert_same(a, b, torch.float32)
    assert b[0].is_contiguous(memory_format=NHWC)
    assert calls["forward"] == 1 and calls["backward"] == 1


def test_channel_blocks_give_the_same_result(monkeypatch) -> None:
    """Tiles of 8 channels (three blocks, the last partial) against one tile of all 20; the forward
    gives the same bits whatever the split (what lets it take whole samples)."""
    ref, fast = pair(20, torch.float32, backend="native")
    again = copy.deepcopy(fast)
    x, g = inputs((2, 20, 9, 7), 2)
    whole = run(fast, x, g)
    monkeypatch.setattr(native, "TILE_FLOATS", 8 * 9 * 7)
    monkeypatch.setattr(native, "FORWARD_TILE_FLOATS", 8 * 9 * 7)
    assert native._channel_block(x.shape) == 8 and native._forward_block(x.shape, 1) == 8
    blocks = run(again, x, g)
    assert_same(run(ref, x, g), blocks, torch.float32)
    assert_same(whole, blocks, torch.float32)
    assert torch.equal(whole[0], blocks[0])


@pytest.mark.parametrize("shape, threads, block", [((32, 96, 56, 56), 2, 96), ((1, 96, 56, 56), 2, 48), ((1, 20, 9, 7), 3, 8), ((2, 960, 7, 7), 1, 960), ((32, 96, 112, 112), 1, 40)])
def test_forward_tiles_take_whole_samples_and_keep_every_thread_busy(shape, threads, block) -> None:
    """Up to FORWARD_TILE_FLOATS per buffer; split where the batch has fewer samples than threads."""
    assert native._forward_block(shape, threads) == block


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (1, 3, 5, 9), (2, 3, 16, 16), (2, 3, 2, 6), (2, 3, 4, 4), (2, 3, 13, 2)], ids=lambda s: "x".join(map(str, s)))
def test_ties_route_the_gradient_to_the_same_element_as_maxpool(shape, k, calls) -> None:
    """Integer inputs tie everywhere: each gradient goes to the window's first maximum in
    row-major order, exactly as MaxPool2d sends it; -inf inputs and ±0 too."""
    torch.manual_seed(k)
    ref = MixedOp({"m": nn.MaxPool2d(k, 1, k // 2), "s": nn.Identity()}, 1.0, fast=False)
    fast = copy.deepcopy(ref)
    fast.fast, fast.backend = True, "native"
    for values in (2, 3):
        x = torch.randint(0, values, shape).float()
        if values == 3:
            x[x == 2] = float("-inf")
            x[..., 0, :] = -0.0
        x = x.contiguous(memory_format=NHWC)
        g = torch.randn(shape)
        a, b = run(ref, x, g), run(fast, x, g)
        torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=0)
        torch.testing.assert_close(b[0], a[0], atol=0, rtol=0)
    assert calls["backward"] == 2


def test_gradient_for_alpha_only_and_squeeze_excitation(calls) -> None:
    ref, fast = pair(8, torch.float32, backend="native", extra={"se": get_op("se").build(8, {})})
    x, g = inputs((2, 8, 6, 7), 3)
    (ga,) = torch.autograd.grad((ref(x) * g).sum(), [ref.alpha])
    (gb,) = torch.autograd.grad((fast(x) * g).sum(), [fast.alpha])
    torch.testing.assert_close(gb, ga, atol=2e-5, rtol=1e-4)
    ref.zero_grad(), fast.zero_grad()
    assert_same(run(ref, x, g), run(fast, x, g), torch.float32)
    assert calls["backward"] == 2


def test_squeeze_excitation_beside_pooling_in_a_partial_channel_block(monkeypatch) -> None:
    """A per-plane gate's gradients in tiles of 8 of 20 channels (the last block 4 wide): each
    pixel of a tile is its block's width apart, not the full block's."""
    ref, fast = pair(20, torch.float32, backend="native", extra={"se": get_op("se").build(20, {})})
    monkeypatch.setattr(native, "TILE_FLOATS", 8 * 9 * 7)
    x, g = inputs((2, 20, 9, 7), 5)
    assert native._channel_block(x.shape) == 8
    assert_same(run(ref, x, g), run(fast, x, g), torch.float32)


POOLING_PLAN = (True, ((1, 1, 0), (2, 2, 3)), ((1, 1), (2, 2), (3, 3)), (2, 1))
POINTWISE_PLAN = (True, (), (), (2, 1))  # no pooling: one pass along the rows, no tiles


@pytest.mark.parametrize("plan", [POOLING_PLAN, POINTWISE_PLAN], ids=["pooling", "pointwise"])
def test_results_do_not_depend_on_the_number_of_threads(plan) -> None:
    """The kernel alone (the gates' convolutions are oneDNN's): the weight gradients are summed per
    tile (per sample without pooling) in a fixed order, so 1 and 2 threads give the same bits."""
    n, c, h, w = 8, 16, 12, 12
    x, g = inputs((n, c, h, w), 4)
    factors = [torch.rand(n, c, h, 1), torch.rand(n, c, 1, w), torch.rand(n, c, 1, 1)]
    weights = torch.rand(int(plan[0]) + len(plan[1]) + len(plan[2]) + len(plan[3]))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = native.forward(x, weights, *plan, factors)
            gx, gw, gf = native.backward(x, g, weights, *plan, factors, True, True, [True, True, True])
            results.append([y, gx, gw, *gf])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_other_inputs_use_the_shift_backend(calls) -> None:
    """NCHW float32 and float64 are not the kernel's: they run the shift backend, as exactly."""
    for dtype, layout in ((torch.float32, torch.contiguous_format), (torch.float64, NHWC)):
        ref, fast = pair(8, dtype, backend="native")
        x, g = inputs((2, 8, 7, 7), 5, layout)
        assert_same(run(ref, x.to(dtype), g.to(dtype)), run(fast, x.to(dtype), g.to(dtype)), dtype)
    assert calls == {"forward": 0, "backward": 0, "profiles": 0, "profiles_backward": 0, "global_forward": 0}


def test_without_a_compiler_the_default_is_the_shift_backend(tmp_path) -> None:
    code = "import torch; from rfsearch.ops.fused import default_backend; print(default_backend(torch.device('cpu')))"
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "RFSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RFSEARCH_MIX_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shift"
    assert "native mixing kernel is unavailable" in done.stderr and "no C compiler" in done.stderr
    assert not (tmp_path / "cache" / "kernels").exists() or not any((tmp_path / "cache" / "kernels").glob("*.so"))


def test_the_kernel_is_built_once_into_its_cache(tmp_path) -> None:
    code = "from rfsearch.ops import native; print(native.available())"
    env = {**os.environ, "RFSEARCH_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "True", done.stderr
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so", "one shared object, no temporary left"


@pytest.mark.parametrize("module", ["avg", "avg_incl", "max"])
@pytest.mark.parametrize("k", [3, 7])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (1, 3, 5, 9), (2, 3, 20, 17), (2, 3, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_drop_in_pool_modules_run_the_kernel_exactly(module, k, shape, calls) -> None:
    """A child's pooling layers (FastAvgPool2d / FastMaxPool2d) in float32 channels_last."""
    if module == "max":
        plain, fast = nn.MaxPool2d(k, 1, k // 2), FastMaxPool2d(k, 1, k // 2)
        x = torch.randint(0, 3, shape).float()
    else:
        incl = module == "avg_incl"
        plain, fast = nn.AvgPool2d(k, 1, k // 2, count_include_pad=incl), FastAvgPool2d(k, 1, k // 2, count_include_pad=incl)
        x = torch.randn(shape)
    x = x.contiguous(memory_format=NHWC)
    g = torch.randn(shape)
    a, b = run(plain, x, g), run(fast, x, g)
    torch.testing.assert_close(b[0], a[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b[1], a[1], atol=1e-6, rtol=1e-5)
    assert calls["forward"] == 1 and calls["backward"] == 1


@pytest.mark.parametrize("folded", [False, True], ids=["bn", "folded"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(1, 70, 9, 11), (3, 16, 5, 7), (2, 8, 1, 6)], ids=lambda s: "x".join(map(str, s)))
def test_the_global_ops_inference_in_one_call(shape, threads, folded, calls) -> None:
    """Evaluation without a gradient: profiles, head (running statistics, or folded) and gating in
    one native call, with the same bits as the module's three calls."""
    from rfsearch.inference import fold_batchnorm
    import rfsearch.ops.attention as attention

    torch.manual_seed(5)
    op = get_op("global").build(shape[1], {})
    bn = op.reduce[1]
    nn.init.normal_(bn.weight), nn.init.normal_(bn.bias), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    op = fold_batchnorm(op.eval()) if folded else op.eval()
    x, _ = inputs(shape, 9)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast = op(x)
            assert calls["global_forward"] == 1 and calls["forward"] == 0
            a_h, a_w = op.gates(x)  # the module's path, call by call
            three = native.forward(x, torch.ones(1), False, (), (), (2,), (a_h, a_w))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(fast, three)
    assert fast.is_contiguous(memory_format=NHWC)
    assert attention._native_inference(op, x.contiguous()) is None  # NCHW: the kernel reads channels innermost


def test_the_global_ops_inference_steps_aside_where_autograd_or_batch_statistics_are_needed(calls) -> None:
    """A gradient wanted (for x or for the weights), or BN in training mode (batch statistics, and
    the running ones move): the module's path, which records the graph and updates BN."""
    op = get_op("global").build(16, {})
    x, _ = inputs((2, 16, 5, 5), 10)
    op.eval()
    op(x.clone().requires_grad_(True)).sum().backward()  # ∂x wanted
    op(x).sum().backward()  # eval, but the weights want gradients
    assert calls["global_forward"] == 0 and all(p.grad is not None for p in op.parameters())
    op.train()
    with torch.no_grad():
        steps = int(op.reduce[1].num_batches_tracked)
        op(x)
    assert calls["global_forward"] == 0 and int(op.reduce[1].num_batches_tracked) == steps + 1
    op.eval()
    with torch.no_grad():
        op(x)
    assert calls["global_forward"] == 1


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (3, 70, 9, 11), (1, 1, 4, 4), (2, 130, 1, 6), (1, 70, 6, 5)], ids=lambda s: "x".join(map(str, s)))
def test_the_global_ops_profiles(shape, threads, calls) -> None:
    """The kernel's profiles (one read of x; a sample's channels in one tile, or in blocks of 16
    floats with a partial one where the batch has fewer samples than threads) against torch's means;
    their backward writes the same bits as autograd's through the two means, in channels_last."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, _ = inputs(shape, 6)
        x.requires_grad_(True)
        p = separable_profiles(x)
        ref = torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2).transpose(1, 2)
        torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-5)
        g = torch.randn_like(p)
        (gx,), (gr,) = torch.autograd.grad(p, x, g), torch.autograd.grad(ref, x, g)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(gx, gr)
    assert gx.is_contiguous(memory_format=NHWC)
    assert calls["profiles"] == 1 and calls["profiles_backward"] == 1


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (3, 70, 9, 11), (1, 8, 1, 6)], ids=lambda s: "x".join(map(str, s)))
def test_the_global_op_gates_in_the_kernel(shape, train, calls) -> None:
    """A child's global op: the profiles and x · a_h · a_w in the kernel, against the paper's form
    (convolutions, plain products) in float64, about as close as that form is in float32 (the
    gradients through a training-mode BatchNorm cancel to ~1e-5 in float32 either way); in training,
    evaluation and inference without autograd."""
    torch.manual_seed(3)
    op = get_op("global").build(shape[1], {}).train(train)
    nn.init.normal_(op.reduce[1].weight), nn.init.normal_(op.reduce[1].bias)
    plain = copy.deepcopy(op)
    plain.__class__ = PaperSSP
    x, g = inputs(shape, 7)
    fast, ref32, ref64 = run(op, x, g), run(plain, x, g), run(copy.deepcopy(plain).double(), x.double(), g.double())
    assert calls == {"forward": 1, "backward": 1, "profiles": 1, "profiles_backward": 1, "global_forward": 0}
    assert fast[0].is_contiguous(memory_format=NHWC)
    pairs = [(fast[0], ref32[0], ref64[0]), (fast[1], ref32[1], ref64[1])] + [(fast[2][k], ref32[2][k], ref64[2][k]) for k in ref64[2]]
    assert set(fast[2]) == set(ref64[2])
    scale = max(exact.abs().max().item() for _, _, exact in pairs)  # reduce.0.bias's is 0 up to rounding (BN follows)
    for ours, theirs, exact in pairs:
        error, baseline = (ours.double() - exact).abs().max().item(), (theirs.double() - exact).abs().max().item()
        assert error <= 4 * baseline + 1e-6 * scale
    with torch.no_grad():
        torch.testing.assert_close(op(x), plain(x), atol=1e-6, rtol=1e-5)
    # in evaluation one call (running statistics); in training the module's path (batch statistics)
    assert (calls["forward"], calls["global_forward"]) == ((2, 0) if train else (1, 1))


# (identity, gates): the general form (two gates) and the ones formed in one loop (at most one gate)
POINTWISE_VARIANTS = [(True, (2, 1)), (True, ()), (True, (2,)), (False, (2,)), (True, (1,)), (False, (1,))]


@pytest.mark.parametrize("variant", POINTWISE_VARIANTS, ids=lambda v: ("id" if v[0] else "") + "".join("+ab" if k == 2 else "+s" for k in v[1]))
@pytest.mark.parametrize("shape", [(3, 20, 6, 9), (2, 70, 1, 5), (1, 8, 13, 1)], ids=lambda s: "x".join(map(str, s)))
def test_the_pointwise_path_against_plain_products(shape, variant) -> None:
    """Without pooling (the identity and gates only), against ``(w0 + v1·a_h·a_w + v2·s) · x`` (the
    terms the plan has) and autograd's gradients of it, every input's gradient included."""
    n, c, h, w = shape
    identity, gates = variant
    x, g = inputs(shape, 8)
    torch.manual_seed(8)
    factors = [f for k in gates for f in ([torch.rand(n, c, h, 1), torch.rand(n, c, 1, w)] if k == 2 else [torch.rand(n, c, 1, 1)])]
    weights = torch.rand(int(identity) + len(gates))
    plan = (identity, (), (), gates)
    y = native.forward(x, weights, *plan, factors)
    gx, gw, gf = native.backward(x, g, weights, *plan, factors, True, True, [True] * len(factors))
    leaves = [t.double().requires_grad_(True) for t in (x, weights, *factors)]
    xd, wd, *fd = leaves
    scale = wd[0] if identity else torch.zeros((), dtype=torch.float64)
    wi, fi = int(identity), 0
    for k in gates:
        scale = scale + wd[wi] * (fd[fi] * fd[fi + 1] if k == 2 else fd[fi])
        wi, fi = wi + 1, fi + k
    ref = scale * xd
    grads = torch.autograd.grad(ref, leaves, g.double())
    torch.testing.assert_close(y.double(), ref.detach(), atol=1e-6, rtol=1e-5)
    assert y.is_contiguous(memory_format=NHWC) and gx.is_contiguous(memory_format=NHWC)
    for ours, theirs in zip([gx, gw, *gf], grads):
        torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=1e-5)


def test_a_cropped_channels_last_view(calls) -> None:
    """A crop of a channels_last map has channels innermost but is not dense: the kernel reads it
    through its strides and writes its own channels_last outputs (empty_like would give NCHW)."""
    torch.manual_seed(9)
    base = (torch.rand(2, 8, 9, 9) * 6 - 1).contiguous(memory_format=NHWC)
    g = torch.randn(2, 8, 7, 5)
    ref, fast = pair(8, torch.float32, backend="native")
    results = []
    for model in (ref, fast, separable_profiles):
        leaf = base.clone().requires_grad_(True)
        x = leaf[:, :, 1:8, 2:7]
        assert x.stride(1) == 1 and not x.is_contiguous(memory_format=NHWC)
        y = model(x)
        y.backward(g if y.shape == g.shape else torch.ones_like(y))
        results.append((y.detach(), leaf.grad))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    x = base[:, :, 1:8, 2:7]
    torch.testing.assert_close(results[2][0], torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2).transpose(1, 2), atol=1e-6, rtol=1e-5)
    expected = torch.zeros_like(base)
    expected[:, :, 1:8, 2:7] = 1 / 5 + 1 / 7  # every pixel is in one row mean and one column mean
    torch.testing.assert_close(results[2][1], expected)
    assert calls["backward"] == 1 and calls["profiles_backward"] == 2

