"""PMPL's step, its fixing rule, and what fixing removes; on a small real model and real tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from rfsearch.errors import RfsearchWarning
from rfsearch.search.context import SearchContext
from rfsearch.space.schema import SpaceConfig, WeightOptimizer
from rfsearch.strategies.pmpl import PMPL, PMPLOptions, decision
from rfsearch.strategies.uniform import UniformOptions, UniformSampling
from rfsearch.supernet import Supernet, build_supernet
from rfsearch.train.engine import prune_optimizer, sgd

CANDIDATES = ["skip", {"avgpool": {"k": [3, 5, 7]}}, {"maxpool": {"k": [3]}}, "global"]


def tiny_supernet(seed: int = 0) -> Supernet:
    space = SpaceConfig.model_validate(
        {
            "backbone": {"name": "examples.custom_backbone:TinyNet", "input_size": 16, "kwargs": {"width": 8, "num_classes": 3}},
            "candidates": CANDIDATES,
            "insert": [{"modules": "blocks.*.depthwise"}],
        }
    )
    torch.manual_seed(seed)
    net = build_supernet(space, init_std=0.5)  # visibly different α per candidate
    return net


def batches(seed: int = 1) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    train = (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 3, (8,), generator=g))
    meta = (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 3, (8,), generator=g))
    return train, meta


def context(net: Supernet, lr: float = 0.1) -> SearchContext:
    weights = torch.optim.SGD(net.weight_parameters(), lr=lr)  # plain SGD: θ′ and θ use the same ζ
    return SearchContext(supernet=net, model=net, weight_optimizer=weights, device=torch.device("cpu"))


def pmpl(net: Supernet, ctx: SearchContext, **options) -> PMPL:
    """PMPL set up on ``ctx``, its α optimizer swapped for SGD at lr 1: α_new = α − ∇α, the gradient shows as is."""
    strategy = PMPL(PMPLOptions(**options), net, seed=0)
    strategy.setup(ctx)
    strategy.arch_optimizer = torch.optim.SGD(net.arch_parameters(), lr=1.0)
    return strategy


def hand_meta_gradient(net: Supernet, train, meta, lr: float, lookahead: bool) -> list[torch.Tensor]:
    """First-order MAML by hand: g = ∇θ L_train; θ′ = θ − ζ g; ∇α L_meta(θ′, α)."""
    net = copy.deepcopy(net)
    names = [n for n, _ in net.named_weight_parameters()]
    params = [p for _, p in net.named_weight_parameters()]
    loss = torch.nn.functional.cross_entropy(net(train[0]), train[1])
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    theta = {n: (p - lr * g if (lookahead and g is not None) else p).detach() for n, p, g in zip(names, params, grads)}
    meta_loss = torch.nn.functional.cross_entropy(functional_call(net, theta, (meta[0],), strict=False), meta[1])
    return list(torch.autograd.grad(meta_loss, net.arch_parameters()))


@pytest.mark.parametrize("lookahead", [True, False])
def test_alpha_update_is_first_order_maml(lookahead: bool) -> None:
    train, meta = batches()
    net = tiny_supernet()
    alpha_before = [a.detach().clone() for a in net.arch_parameters()]
    expected = hand_meta_gradient(net, train, meta, lr=0.1, lookahead=lookahead)
    ctx = context(net)
    pmpl(net, ctx, lookahead=lookahead, rho=None).step(ctx, train, meta)
    for before, grad, alpha in zip(alpha_before, expected, net.arch_parameters()):
        torch.testing.assert_close(alpha.detach(), before - grad, rtol=1e-4, atol=1e-6)


def test_lookahead_changes_the_update() -> None:
    train, meta = batches()
    results = []
    for lookahead in (True, False):
        net = tiny_supernet()
        ctx = context(net, lr=0.5)
        pmpl(net, ctx, lookahead=lookahead).step(ctx, train, meta)
        results.append(torch.cat([a.detach() for a in net.arch_parameters()]))
    assert not torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("weight_grad", ["after_alpha", "reuse"])
def test_weight_step_uses_the_training_gradient_at_the_new_alpha(weight_grad: str) -> None:
    """The meta batch moves α, never θ. Algorithm 1 steps θ after α: θ − ζ ∇θ L_train(θ, α_new);
    ``reuse`` steps with the gradient taken at α_old."""
    train, meta = batches()
    net = tiny_supernet()
    ref = copy.deepcopy(net)
    ctx = context(net, lr=0.1)
    pmpl(net, ctx, weight_grad=weight_grad).step(ctx, train, meta)
    if weight_grad == "after_alpha":
        with torch.no_grad():
            for a_ref, a_new in zip(ref.arch_parameters(), net.arch_parameters()):
                a_ref.copy_(a_new)
        assert not torch.allclose(torch.cat(ref.arch_parameters()), torch.cat(tiny_supernet().arch_parameters()))
    loss = torch.nn.functional.cross_entropy(ref(train[0]), train[1])
    grads = torch.autograd.grad(loss, ref.weight_parameters(), allow_unused=True)
    for p, r, g in zip(net.weight_parameters(), ref.weight_parameters(), grads):
        torch.testing.assert_close(p.detach(), r.detach() - 0.1 * g if g is not None else r.detach(), rtol=1e-5, atol=1e-6)


def test_lookahead_is_the_step_the_weights_take() -> None:
    """θ′ is the real step (clipping, momentum, weight decay), not θ − ζ·raw gradient: with ``reuse``
    the weights land exactly on θ′, so α's gradient must be ∇α L_meta at the weights after the step."""
    train, meta = batches()
    net = tiny_supernet()
    weight_opt = sgd(net.weight_parameters(), WeightOptimizer(lr=0.5, momentum=0.9, weight_decay=1e-3))
    ctx = SearchContext(supernet=net, model=net, weight_optimizer=weight_opt, device=torch.device("cpu"), grad_clip=0.05)
    strategy = pmpl(net, ctx, rho=None, weight_grad="reuse")
    strategy.step(ctx, *batches(seed=7))  # a non-zero momentum buffer for the next step
    alpha_before = [a.detach().clone() for a in net.arch_parameters()]
    before = copy.deepcopy(net)
    strategy.step(ctx, train, meta)
    after = {n: p.detach() for n, p in net.named_weight_parameters()}
    meta_loss = torch.nn.functional.cross_entropy(functional_call(before, after, (meta[0],), strict=False), meta[1])
    expected = torch.autograd.grad(meta_loss, before.arch_parameters())
    for a0, g, a in zip(alpha_before, expected, net.arch_parameters()):
        torch.testing.assert_close(a.detach(), a0 - g, rtol=1e-4, atol=1e-6)
    raw = hand_meta_gradient(before, train, meta, lr=0.5, lookahead=True)  # the unclipped θ − ζg of old
    assert not all(torch.allclose(a0 - g, a.detach(), atol=1e-6) for a0, g, a in zip(alpha_before, raw, net.arch_parameters()))


def test_lookahead_block_holds_theta_prime_and_always_returns_to_theta() -> None:
    """Inside ``at_lookahead`` the module itself sits at θ′ (its weights constants); after it, even
    when the block fails, θ, the optimizer's state and the weights' gradients flags are as before."""
    train, _ = batches()
    net = tiny_supernet()
    weight_opt = sgd(net.weight_parameters(), WeightOptimizer(lr=0.5, momentum=0.9, weight_decay=1e-3))
    ctx = SearchContext(supernet=net, model=net, weight_optimizer=weight_opt, device=torch.device("cpu"))
    strategy = pmpl(net, ctx)
    strategy.step(ctx, train, train)  # momentum buffers exist
    ctx.weight_backward(train)
    theta = [p.detach().clone() for p in net.weight_parameters()]
    state = {id(p): s["momentum_buffer"].clone() for p, s in weight_opt.state.items()}
    shadow = copy.deepcopy(weight_opt.state_dict())
    probe = copy.deepcopy(net)
    probe_opt = sgd(probe.weight_parameters(), WeightOptimizer(lr=0.5, momentum=0.9, weight_decay=1e-3))
    probe_opt.load_state_dict(shadow)
    for p, q in zip(net.weight_parameters(), probe.weight_parameters()):
        q.grad = p.grad.clone()
    probe_opt.step()  # θ′ by hand: the real step on a copy
    params = net.weight_parameters()
    with pytest.raises(RuntimeError, match="meta step failed"):
        with strategy.at_lookahead(ctx):
            assert all(torch.equal(p, q) for p, q in zip(params, probe.weight_parameters()))
            assert not any(p.requires_grad for p in params)
            raise RuntimeError("meta step failed")
    assert net.weight_parameters() == params and all(p.requires_grad for p in params)
    assert all(torch.equal(p, t) for p, t in zip(params, theta))
    assert all(torch.equal(s["momentum_buffer"], state[id(p)]) for p, s in weight_opt.state.items())


def test_meta_gradient_at_lookahead_is_bitwise_a_functional_call_at_detached_theta_prime() -> None:
    """The look-ahead runs the module in place at θ′. Its α gradient must be, to the bit, what
    ``functional_call`` over detached copies of θ′ gives (the search's results before the in-place
    look-ahead): oneDNN rounds a forward whose weights require gradients differently, which
    would change every search's later decisions. MobileNetV2 in channels_last shows it."""
    import warnings

    space = SpaceConfig.model_validate(
        {
            "backbone": {"name": "mobilenet_v2", "input_size": 28, "max_downsample": 16, "kwargs": {"width_mult": 0.25, "num_classes": 4}},
            "candidates": ["skip", {"avgpool": {"k": [3]}}, {"maxpool": {"k": [3]}}, "global"],
            "insert": [{"modules": "features.*.conv.1", "types": "Conv2dNormActivation"}],
        }
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RfsearchWarning)
        net = build_supernet(space).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    x, mx = (torch.randn(16, 3, 28, 28, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2))
    y, my = (torch.randint(0, 4, (16,), generator=g) for _ in range(2))
    ref = copy.deepcopy(net)
    recipe = WeightOptimizer(lr=0.1, momentum=0.9)
    ctx = SearchContext(supernet=net, model=net, weight_optimizer=sgd(net.weight_parameters(), recipe), device=torch.device("cpu"), grad_clip=1.0)
    strategy = pmpl(net, ctx)

    torch.manual_seed(5)  # the classifier's dropout draws the same mask on both sides
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    torch.nn.utils.clip_grad_norm_(ref.weight_parameters(), 1.0)
    sgd(ref.weight_parameters(), recipe).step()
    theta_prime = {n: p.detach().clone() for n, p in ref.named_weight_parameters()}
    ref.load_state_dict(net.state_dict())  # θ and the BN statistics back
    torch.manual_seed(6)
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(functional_call(ref, theta_prime, (mx,), strict=False), my), ref.arch_parameters())

    torch.manual_seed(5)
    ctx.weight_backward((x, y))
    with strategy.at_lookahead(ctx):
        torch.manual_seed(6)
        got = torch.autograd.grad(torch.nn.functional.cross_entropy(net(mx), my), net.arch_parameters())
    assert len(got) == len(expected) > 0 and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_member_lists_follow_fixing_and_a_replaced_net() -> None:
    """The supernet lists its weights and buffers once per structure: a fixed point's dropped
    candidates leave the lists, and a replaced ``net`` (SyncBatchNorm) is listed anew."""
    net = tiny_supernet()
    path = next(iter(net.mixed_ops))
    walked = lambda: {id(b) for b in net.buffers()}  # noqa: E731
    assert {id(b) for b in net.state_buffers()} == walked()
    gone = {id(b) for b in net.mixed_ops[path].ops["global"].buffers()}
    before = len(net.weight_parameters())
    net.fix(path, "skip")
    assert gone and not gone & {id(b) for b in net.state_buffers()} and {id(b) for b in net.state_buffers()} == walked()
    alphas = {id(m.alpha) for m in net.mixed_ops.values()}
    assert len(net.weight_parameters()) < before and {id(p) for p in net.weight_parameters()} == {
        id(p) for p in net.parameters() if p.requires_grad and id(p) not in alphas
    }
    net.net = copy.deepcopy(net.net)
    assert {id(b) for b in net.state_buffers()} == walked()


def test_meta_and_lookahead_forwards_leave_batchnorm_statistics_alone() -> None:
    """Only the weights' own training forward (at α_new) moves BN's running statistics."""
    train, meta = batches()
    net = tiny_supernet()
    ref = copy.deepcopy(net)
    ctx = context(net)
    pmpl(net, ctx, rho=None).step(ctx, train, meta)
    with torch.no_grad():
        for a_ref, a_new in zip(ref.arch_parameters(), net.arch_parameters()):
            a_ref.copy_(a_new)
    ref.train()
    ref(train[0])
    buffers = dict(net.named_buffers())
    assert any("running_mean" in n for n in buffers)
    for name, b in ref.named_buffers():
        torch.testing.assert_close(buffers[name], b, msg=name)


def test_uniform_scores_deterministically_in_eval_mode() -> None:
    net = tiny_supernet()
    strategy = UniformSampling(UniformOptions(), net, seed=0)
    _, meta = batches()
    path = next(iter(net.mixed_ops))
    running = [b.clone() for b in net.buffers()]
    state = strategy.generator.get_state()
    scores = []
    for _ in range(3):
        strategy.generator.set_state(state)
        scores.append(strategy.score(context(net), path, "global", [meta]))
    assert scores[0] == scores[1] == scores[2]
    assert net.training and all(torch.equal(a, b) for a, b in zip(running, net.buffers()))


def test_decision_is_the_true_argmax() -> None:
    """The reference code indexed the candidates with the comparison's boolean: every fixed point
    became candidate 1. A point whose α favours avgpool7 must get avgpool7."""
    net = tiny_supernet()
    path = next(iter(net.mixed_ops))
    mixed = net.mixed_ops[path]
    target = mixed.names.index("avgpool7")
    assert target not in (0, 1)
    with torch.no_grad():
        mixed.alpha.zero_()
        mixed.alpha[target] = 2.0
    assert decision(mixed.probs(), 0.2) == target
    strategy = PMPL(PMPLOptions(rho=0.2), net, seed=0)
    ctx = context(net)
    fixings = strategy.decide(ctx)
    assert [(f.path, f.choice) for f in fixings] == [(path, ["avgpool7"])]
    assert mixed.choice == ("avgpool7",) and mixed.fixed_probs[target] == pytest.approx(mixed.probs()[target].item())


def test_no_decision_below_rho_and_none_without_rho() -> None:
    probs = torch.tensor([0.30, 0.25, 0.45])
    assert decision(probs, 0.2) is None
    assert decision(probs, 0.1) == 2
    net = tiny_supernet()
    with torch.no_grad():
        next(iter(net.mixed_ops.values())).alpha[0] = 10.0
    assert PMPL(PMPLOptions(rho=None), net, seed=0).decide(context(net)) == []


def test_fixing_removes_unused_parameters_from_model_and_optimizers() -> None:
    train, meta = batches()
    net = tiny_supernet()
    weight_opt = sgd(net.weight_parameters(), WeightOptimizer(lr=0.1, momentum=0.9))
    ctx = SearchContext(supernet=net, model=net, weight_optimizer=weight_opt, device=torch.device("cpu"))
    strategy = PMPL(PMPLOptions(rho=None, arch_optimizer={"lr": 1e-3}), net, seed=0)
    strategy.setup(ctx)
    arch_opt = strategy.arch_optimizer
    assert isinstance(arch_opt, torch.optim.Adam) and arch_opt.param_groups[0]["lr"] == 1e-3
    for _ in range(2):
        strategy.step(ctx, train, meta)  # momentum and Adam state exist for every parameter
    path = next(iter(net.mixed_ops))
    mixed = net.mixed_ops[path]
    gone = {id(p) for p in mixed.ops["global"].parameters()}
    alpha = mixed.alpha
    assert gone and all(any(id(p) in gone for p in g["params"]) for g in weight_opt.param_groups[:1])
    net.fix(path, "maxpool3")
    prune_optimizer(weight_opt, net.weight_parameters())
    strategy.after_fixing(ctx)  # the strategy prunes its own α optimizer
    assert not gone & {id(p) for p in net.parameters()}
    assert not gone & {id(p) for g in weight_opt.param_groups for p in g["params"]}
    assert not gone & {id(p) for p in weight_opt.state}
    assert all(p is not alpha for g in arch_opt.param_groups for p in g["params"]) and alpha not in arch_opt.state
    assert list(mixed.ops) == ["maxpool3"] and not alpha.requires_grad
    strategy.step(ctx, train, meta)  # the pruned optimizers keep working
    x = torch.randn(1, 8, 16, 16)
    torch.testing.assert_close(mixed(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))


def test_finalize_fixes_every_open_point_to_argmax_or_top2() -> None:
    for fallback, size in (("argmax", 1), ("top2", 2)):
        net = tiny_supernet()
        strategy = PMPL(PMPLOptions(fallback=fallback), net, seed=0)
        fixings = strategy.finalize(context(net), iter(()))
        assert net.all_fixed() and len(fixings) == len(net.points)
        for f in fixings:
            mixed = net.mixed_ops[f.path]
            assert len(f.choice) == size
            assert f.choice[0] == max(f.probs, key=f.probs.get)
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_candidates_that_coincide_on_small_maps_are_merged_at_build() -> None:
    """On 1×1 every local pool is skip and on 2×2 the pools of 3, 5 and 7 coincide: α cannot tell
    them apart, so they are dropped with a warning, and a point left with one candidate is fixed.
    MobileNetV2 at 32 px ends on 1×1 maps (features.14-17) after 2×2 ones (features.11-13)."""

    def space(candidates):
        return SpaceConfig.model_validate(
            {
                "backbone": {"name": "mobilenet_v2", "input_size": 32, "kwargs": {"width_mult": 0.35, "num_classes": 3}},
                "candidates": candidates,
                "insert": [{"modules": "features.*.conv.1", "types": "Conv2dNormActivation"}],
            }
        )

    with pytest.warns(RfsearchWarning, match=r"11 point.*features\.14\.conv\.1, features\.15\.conv\.1, features\.16\.conv\.1, features\.17\.conv\.1 \(1×1: avgpool3 = skip") as caught:
        net = build_supernet(space(CANDIDATES))
    assert len([w for w in caught if issubclass(w.category, RfsearchWarning)]) == 1
    sizes = {p.path: (p.height, [c.name for c in p.candidates]) for p in net.points}
    assert sizes["features.4.conv.1"] == (4, ["skip", "avgpool3", "avgpool5", "avgpool7", "maxpool3", "global"])
    assert sizes["features.11.conv.1"] == (2, ["skip", "avgpool3", "maxpool3", "global"])  # avgpool5/7 = avgpool3 on 2×2
    assert sizes["features.17.conv.1"] == (1, ["skip", "global"])
    assert net.mixed_ops["features.11.conv.1"].names == ("skip", "avgpool3", "maxpool3", "global")
    assert net.unfixed() == list(net.mixed_ops)  # global still differs from skip everywhere

    with pytest.warns(RfsearchWarning):
        local = build_supernet(space(["skip", {"avgpool": {"k": [3, 5]}}, {"maxpool": {"k": [3]}}]))
    last = local.mixed_ops["features.17.conv.1"]
    assert last.choice == ("skip",) and last.fixed_step == 0 and not last.alpha.requires_grad
    assert "features.17.conv.1" not in local.unfixed() and all(a is not last.alpha for a in local.arch_parameters())
    assert "features.4.conv.1" in local.unfixed()
    assert local(torch.randn(2, 3, 32, 32)).shape == (2, 3)




@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_decays_only_weights_and_takes_parameters_that_start_late(nesterov: bool) -> None:
    """Two steps against the formulas in float64 (decay on conv/linear weights only, momentum,
    Nesterov); one weight gets its first gradient only at the second step, beside one that has a
    momentum already, as an unsampled candidate of a single-path search does (torch's fused update
    fails there)."""
    torch.manual_seed(0)
    params = {"w": torch.nn.Parameter(torch.randn(4, 3)), "late": torch.nn.Parameter(torch.randn(4, 3)), "b": torch.nn.Parameter(torch.randn(4))}
    opt = sgd(params.values(), WeightOptimizer(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov))
    ref = {name: p.detach().double().clone() for name, p in params.items()}
    bufs: dict[str, torch.Tensor] = {}
    for step in range(2):
        for name, p in params.items():
            p.grad = None if name == "late" and step == 0 else torch.randn(p.shape)
        grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
        opt.step()
        for name, g in grads.items():
            d = g.double() + (0.0 if name == "b" else 0.01) * ref[name]
            bufs[name] = 0.9 * bufs[name] + d if name in bufs else d
            ref[name] -= 0.1 * (d + 0.9 * bufs[name] if nesterov else bufs[name])
    for name, p in params.items():
        torch.testing.assert_close(p.detach().double(), ref[name], atol=1e-6, rtol=1e-6)
