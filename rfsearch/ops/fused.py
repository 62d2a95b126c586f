"""Exact fast mixing for :class:`rfsearch.supernet.MixedOp`: ``Σ_k w_k · op_k(x)`` in one autograd node.

The plain weighted sum runs every candidate on its own and keeps every candidate's output for the
backward (``w_k * op_k(x)`` saves ``op_k(x)``; max pooling also saves int64 indices). This module
computes the same sum, with the same forward and the same gradients for ``x``, the weights and the
candidates' parameters, by recognising the built-in candidates by module type:

* ``nn.Identity``, stride-1 shape-preserving ``nn.AvgPool2d`` (either ``count_include_pad``) and
  ``nn.MaxPool2d`` (and the drop-in ``FastAvgPool2d`` / ``FastMaxPool2d`` below): the *local*
  candidates, computed together inside one ``autograd.Function``;
* ``SpatialSeparablePool`` (``global`` / ``coordatt``: a class whose own body declares
  ``fused_gate = "ssp"`` and whose ``gates(x)`` gives ``a_h, a_w``; this module imports no op) and
  torchvision's ``SqueezeExcitation`` (``se``): *gates* ``x · a_h · a_w`` / ``x · s``. Their small
  gate tensors come from the op's own submodules through ordinary autograd; only the full-size
  product moves into the fused node, so neither ``x · a_h`` nor the op's output is kept for the
  backward;
* anything else (user ops, subclasses, ops with hooks, other pooling settings): the plain
  ``w_k * op_k(x)``, added to the fused node's output.

The node saves only its input (which the layer before keeps anyway, or the NHWC copy it made, and
then the input is free) and recomputes what the backward needs. Windows are clipped to the map
first, so candidates that coincide at a resolution are computed once with their weights summed (on
a 3×3 map ``maxpool5 == maxpool7``; on 1×1 every local op is the identity; a window spanning an
axis is a reduction along it). Two exact backends:

``native`` (CPU default for float32 channels_last; rfsearch.ops.native): one C pass per tile. ``shift`` (the CPU fallback), all from elementwise ops on views and small matrix products:

* identity and gates: ``x · S`` with ``S = w_skip + Σ v · a_h ⊗ a_w``; backward ``g · S``.
* average pooling with ``count_include_pad=False`` is separable with a per-position divisor that
  factorises per axis (``rows(i) · cols(j)`` real pixels): up to 16×16 it is ``P · X · Qᵀ`` with
  band matrices that carry the divisors; above, box sums along W (the 5-sum is the 3-sum plus two
  columns) then along H, times the divisor map. The transpose (backward) is the same with ``Pᵀ``
  and ``Qᵀ``, or ``C_w(R_h(D ⊙ g))``.
* max pooling cascades (``max5 = max3 ∘ max3``, ``max7 = max3 ∘ max5``; exact because ``MaxPool2d``
  pads with -inf, i.e. ignores outside pixels, and the max over clipped windows of clipped windows
  is the max over the clipped union). The backward runs the same cascade as a *min over int64
  keys* ``index − ordered(value)·2³²``: the minimum is the window's largest value and, among ties,
  its first position in row-major order, which is exactly the element ``MaxPool2d`` sends the
  gradient to; ATen's ``max_pool2d_with_indices_backward`` then scatters.
* batches are processed in chunks of ~2¹⁸ elements whose few scratch buffers stay in cache and are
  reused (fresh multi-MB tensors page-fault, which on CPU costs as much as the arithmetic); narrow
  maps (W < 12) run in NHWC, where every shift, broadcast and reduction has C as its inner loop.

``stock`` (CUDA default): ATen's pooling kernels (cuDNN, channels_last, AMP), but inside the fused
node: no saved outputs or indices; the backward recomputes the pooling (with indices for max).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rfsearch.ops import native
from rfsearch.ops.tracing import tracing

__all__ = ["FastAvgPool2d", "FastMaxPool2d", "Plan", "classify", "default_backend", "fused_mix", "gate_forward", "pool_forward"]

_BACKENDS = ("native", "shift", "stock")


def default_backend(device: torch.device) -> str:
    """``RFSEARCH_MIX_BACKEND`` (native|shift|stock) if set, else native on CPU (shift where no C
    compiler is found) and stock elsewhere."""
    forced = os.environ.get("RFSEARCH_MIX_BACKEND")
    if forced in _BACKENDS:
        return forced
    if device.type != "cpu":
        return "stock"
    return "native" if native.available() else "shift"


# --------------------------------------------------------------------------------------------
# Recognising candidates
# --------------------------------------------------------------------------------------------


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def has_hooks(op: nn.Module) -> bool:
    """Whether ``op`` has hooks of its own, which a fused path that bypasses its forward would skip."""
    return bool(op._forward_hooks or op._forward_pre_hooks or op._backward_hooks or getattr(op, "_backward_pre_hooks", None))


def global_hooks() -> bool:
    """Whether any module-wide hooks are registered (``nn.modules.module.register_module_*_hook``)."""
    mod = nn.modules.module
    return any(bool(getattr(mod, name, None)) for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def _se_type() -> type | None:
    try:
        from torchvision.ops import SqueezeExcitation
    except Exception:  # pragma: no cover
        return None
    return SqueezeExcitation if hasattr(SqueezeExcitation, "_scale") else None


def classify(op: nn.Module) -> tuple | None:
    """What the fast path knows about ``op``: ``("id",)``, ``("avg", k, include_pad)``,
    ``("max", k)``, ``("gate", kind)``, or None (run it as it is). Exact types only: a subclass may
    override ``forward``; a module with hooks must run through its ``__call__``."""
    if has_hooks(op):
        return None
    t = type(op)
    if t is nn.Identity:
        return ("id",)
    if t in _AVG_TYPES or t in _MAX_TYPES:
        kh, kw = _pair(op.kernel_size)
        stride = _pair(op.stride if op.stride is not None else op.kernel_size)
        ph, pw = _pair(op.padding)
        if kh != kw or kh % 2 == 0 or stride != (1, 1) or (ph, pw) != (kh // 2, kh // 2) or op.ceil_mode:
            return None
        if t in _AVG_TYPES:
            if op.divisor_override is not None:
                return None
            return ("avg", kh, bool(op.count_include_pad))
        if _pair(op.dilation) != (1, 1) or op.return_indices:
            return None
        return ("max", kh)
    if t.__dict__.get("fused_gate") == "ssp":  # declared by the class itself (rfsearch.ops.attention), not inherited
        return ("gate", "ssp")
    se = _se_type()
    if se is not None and t is se:
        return ("gate", "se")
    return None


def _gate_factors(kind: str, op: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    if kind == "ssp":
        return op.gates(x)
    return (op._scale(x),)  # torchvision SqueezeExcitation: forward is _scale(x) * x


@dataclass(frozen=True)
class Plan:
    """The fused node's program for one input size. Weight vector order: identity (if any), avg
    groups, max groups, gates. Radii are already clipped to the map."""

    identity: bool
    avg: tuple[tuple[int, int, int], ...]  # (rh, rw, k) with k = 0 for count_include_pad=False
    max: tuple[tuple[int, int], ...]  # (rh, rw)
    gates: tuple[int, ...]  # number of factors of each gate
    backend: str

    @property
    def n_weights(self) -> int:
        return int(self.identity) + len(self.avg) + len(self.max) + len(self.gates)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

_MATRIX_CACHE: dict[Any, Tensor] = {}
_MAP_CACHE: dict[Any, Tensor] = {}


def _cached(cache: dict[Any, Tensor], key: Any, make) -> Tensor:
    value = cache.get(key)
    if value is None:
        if len(cache) > 512:
            cache.clear()
        value = cache[key] = make()
    return value


def fused_mix(ops: Sequence[nn.Module], weights: Tensor, x: Tensor, backend: str | None = None) -> Tensor | None:
    """``Σ_k weights[k] · ops[k](x)`` through the fused node, or None when no candidate is known
    (the caller then runs the plain sum). ``weights`` already has ``x``'s dtype."""
    if x.dim() != 4 or global_hooks():
        return None
    kinds = [classify(op) for op in ops]
    if all(kind is None for kind in kinds):
        return None
    backend = backend or default_backend(x.device)
    if backend not in _BACKENDS:
        raise ValueError(f"unknown mixing backend '{backend}'; use one of {_BACKENDS}")
    h, w = x.shape[-2], x.shape[-1]
    keys: dict[tuple, list[int]] = {}
    gates: list[tuple[int, str]] = []
    others: list[int] = []
    for i, kind in enumerate(kinds):
        if kind is None:
            others.append(i)
            continue
        if kind[0] == "gate":
            gates.append((i, kind[1]))
            continue
        if kind[0] == "id":
            key: tuple = ("id",)
        else:
            r = kind[1] // 2
            rh, rw = min(r, h - 1), min(r, w - 1)
            if kind[0] == "avg":
                incl = kind[1] if kind[2] else 0
                key = ("id",) if (rh, rw) == (0, 0) and not incl else ("avg", rh, rw, incl)
            else:
                key = ("id",) if (rh, rw) == (0, 0) else ("max", rh, rw)
        keys.setdefault(key, []).append(i)
    avg = tuple(sorted(k[1:] for k in keys if k[0] == "avg"))
    mx = tuple(sorted(k[1:] for k in keys if k[0] == "max"))
    identity = ("id",) in keys
    gate_factors = [_gate_factors(kind, ops[i], x) for i, kind in gates]
    gate_counts = tuple(len(f) for f in gate_factors)
    if backend == "native" and not (native.available() and native.supports(x, gate_counts, [f for fs in gate_factors for f in fs])):
        backend = "shift"  # float64, bfloat16 and unknown gate shapes
    plan = Plan(identity, avg, mx, gate_counts, backend)
    order: list[list[int]] = ([keys[("id",)]] if identity else []) + [keys[("avg", *a)] for a in avg] + [keys[("max", *m)] for m in mx] + [[i] for i, _ in gates]
    k = weights.shape[0]
    if all(len(g) == 1 for g in order) and [g[0] for g in order] == list(range(k)):
        group_weights = weights
    else:
        key = (tuple(tuple(g) for g in order), k, weights.device, weights.dtype)

        def make() -> Tensor:
            m = torch.zeros(len(order), k, dtype=weights.dtype)
            for row, members in enumerate(order):
                m[row, members] = 1
            return m.to(weights.device)

        group_weights = _cached(_MATRIX_CACHE, key, make) @ weights
    factors = [f for fs in gate_factors for f in fs]
    out = _FusedMix.apply(x, group_weights, plan, *factors)
    for i in others:
        out = out + weights[i] * ops[i](x)
    return out


class _FusedMix(torch.autograd.Function):
    """The fused node. It saves only the input (for the shift backend: the input's NHWC copy,
    which the forward made anyway; the input itself is then free) and small tensors."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weights: Tensor, plan: Plan, *factors: Tensor) -> Tensor:
        y, saved, layout = _forward(x, weights, plan, factors)
        ctx.plan, ctx.layout = plan, layout
        ctx.save_for_backward(saved, weights, *factors)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        saved, weights, *factors = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_f = ctx.needs_input_grad[3:]
        gx, gw, gf = _backward(grad, saved, ctx.layout, weights, ctx.plan, factors, need_x, need_w, need_f)
        return (gx, gw, None, *gf)


# --------------------------------------------------------------------------------------------
# Layout: the shift backend works on a contiguous NHWC view
# --------------------------------------------------------------------------------------------


class _Layout:
    """Where the H and W dims of the work tensors are (NHWC: 1, 2; NCHW: 2, 3) and how to move
    small NCHW-shaped tensors (gates, divisor maps) in and out of it."""

    def __init__(self, nhwc: bool) -> None:
        self.nhwc = nhwc
        self.hd, self.wd = (1, 2) if nhwc else (2, 3)

    def small(self, f: Tensor) -> Tensor:
        """A broadcastable NCHW-shaped factor (N,C,H,1), (N,C,1,1), … in this layout, contiguous:
        a strided operand in a broadcast kills vectorisation (4-8× slower), and the copy is small."""
        return f.permute(0, 2, 3, 1).contiguous() if self.nhwc else f.contiguous()

    def small_back(self, g: Tensor, like: Tensor) -> Tensor:
        return (g.permute(0, 3, 1, 2) if self.nhwc else g).reshape(like.shape)

    def nchw(self, t: Tensor) -> Tensor:
        return t.permute(0, 3, 1, 2) if self.nhwc else t

    def map_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (1, h, w, 1) if self.nhwc else (1, 1, h, w)


_NHWC_BELOW_WIDTH = 12


def _choose_nhwc(x: Tensor, plan: Plan) -> bool:
    """NHWC when the input is channels_last (free), or when W is narrow: shifts, broadcasts and
    reductions along a W of a few elements run inner loops of a few elements in NCHW (a broadcast
    multiply on a 2×2 map is ~10× slower than in NHWC). From W ≈ 12 on, NCHW is as fast and the
    two transposes per pass (≈ 5 plain passes each) are saved."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return True
    if x.is_contiguous():
        return x.shape[-1] < _NHWC_BELOW_WIDTH and x.shape[-1] * x.shape[-2] > 1
    return True


# --------------------------------------------------------------------------------------------
# Shift primitives (clipped windows: sums ignore outside pixels, maxima ignore them too)
# --------------------------------------------------------------------------------------------


def _counts(n: int, r: int) -> Tensor:
    j = torch.arange(n)
    return ((j + r).clamp(max=n - 1) - (j - r).clamp(min=0) + 1).double()


def _divisor_map(h: int, w: int, rh: int, rw: int, k: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """1 / (number of pixels averaged) at every position: the clipped window's real pixels
    (rows(i) · cols(j): the count factorises per axis), or k² for ``count_include_pad=True``."""

    def make() -> Tensor:
        if k:
            d = torch.full((h, w), 1.0 / (k * k), dtype=torch.float64)
        else:
            d = 1.0 / (_counts(h, rh)[:, None] * _counts(w, rw)[None, :])
        return d.reshape(shape).to(device=device, dtype=dtype)

    return _cached(_MAP_CACHE, ("div", h, w, rh, rw, k, shape, device, dtype), make)


def _band(n: int, r: int, k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The clipped radius-r window along one axis as an n×n matrix whose rows are already divided
    by the window's count (``count_include_pad=False``) or by k (True: the k² divisor split over
    the two axes): average pooling is ``P · X · Qᵀ`` per plane, P and Q such bands."""

    def make() -> Tensor:
        i = torch.arange(n)
        band = ((i[:, None] - i[None, :]).abs() <= r).double()
        band = band / (band.sum(1, keepdim=True) if not k else float(k))
        return band.to(device=device, dtype=dtype)

    return _cached(_MAP_CACHE, ("band", n, r, k, device, dtype), make)


_AVG_MATMUL_UP_TO = 16  # matrix products for maps up to 16×16 (measured faster); shifts above


class _Buffers:
    """Scratch storage reused within one forward or backward. Fresh multi-megabyte tensors
    page-fault on first touch (glibc returns large blocks to the OS on free), which on CPU costs as
    much as the arithmetic; a handful of reused buffers replaces dozens of allocations."""

    def __init__(self, like: Tensor) -> None:
        self.numel, self.device = like.numel(), like.device
        self.store: dict[tuple[str, torch.dtype], Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        n = 1
        for size in shape:
            n *= size
        buf = self.store.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self.store[(name, dtype)] = torch.empty(max(n, self.numel), dtype=dtype, device=self.device)
        return buf[:n].view(tuple(shape))


_COMBINE = {"sum": torch.add, "max": torch.maximum, "min": torch.minimum}


def _combine(op: str, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    fn = _COMBINE[op]
    return fn(a, b, out=out) if out is not None else fn(a, b)


def _fold(t: Tensor, d: int, op: str) -> Tensor:
    """A reduction along ``d`` (keepdim) as a tree of elementwise combines: reductions over a short
    axis that is not the innermost are slow in ATen (int64 ``amin`` worst of all)."""
    n = t.size(d)
    cur = t
    while n > 1:
        half = n // 2
        nxt = _combine(op, cur.narrow(d, 0, half), cur.narrow(d, half, half))
        if n % 2:
            first = nxt.narrow(d, 0, 1)
            _combine(op, first, cur.narrow(d, 2 * half, 1), out=first)
        cur, n = nxt, half
    return cur


def _step1(src: Tensor, d: int, op: str, out: Tensor, pair: Tensor) -> None:
    """Radius-1 clipped window along ``d`` into ``out`` with two full-size operations: pairs
    ``p(j) = src(j) ⊕ src(j+1)``, then ``out(j) = p(j-1) ⊕ src(j+1)`` (sum) or ``p(j-1) ⊕ p(j)``
    (max, min); the two edge slices are copies of a pair. Needs ``size(d) >= 3``."""
    n = src.size(d)
    _combine(op, src.narrow(d, 0, n - 1), src.narrow(d, 1, n - 1), out=pair)
    second = src.narrow(d, 2, n - 2) if op == "sum" else pair.narrow(d, 1, n - 2)
    _combine(op, pair.narrow(d, 0, n - 2), second, out=out.narrow(d, 1, n - 2))
    out.narrow(d, 0, 1).copy_(pair.narrow(d, 0, 1))
    out.narrow(d, n - 1, 1).copy_(pair.narrow(d, n - 2, 1))


def _ring_(buf: Tensor, src: Tensor, d: int, s: int, op: str) -> None:
    """In place: widen ``buf`` (a radius s-1 window of ``src``) by the elements at distance s.
    It reads only ``src``, so ``buf`` can be updated where it lies."""
    n = src.size(d)
    a = buf.narrow(d, s, n - s)
    _combine(op, a, src.narrow(d, 0, n - s), out=a)
    b = buf.narrow(d, 0, n - s)
    _combine(op, b, src.narrow(d, s, n - s), out=b)


def _shape_minus(shape: Sequence[int], d: int) -> list[int]:
    shape = list(shape)
    shape[d] -= 1
    return shape


class _Chain:
    """Applies clipped windows one after another, ping-ponging between two named buffers so that a
    result never overwrites its own input."""

    def __init__(self, bufs: _Buffers, op: str, dtype: torch.dtype, names: tuple[str, str] = ("wa", "wb")) -> None:
        self.bufs, self.op, self.dtype, self.names = bufs, op, dtype, names

    def window(self, src: Tensor, where: str | None, d: int, r: int) -> tuple[Tensor, str | None]:
        """(result, buffer it lies in): ``src`` itself for r = 0, a fold (a fresh small tensor)
        when the window spans the axis, else one of the two buffers (not ``where``)."""
        n = src.size(d)
        r = min(r, n - 1)
        if r == 0:
            return src, where
        if r == n - 1:
            return _fold(src, d, self.op), None
        name = self.names[1] if where == self.names[0] else self.names[0]
        out = self.bufs.get(name, src.shape, self.dtype)
        _step1(src, d, self.op, out, self.bufs.get("pair", _shape_minus(src.shape, d), self.dtype))
        for s in range(2, r + 1):
            _ring_(out, src, d, s, self.op)
        return out, name


def _max_cascade(t: Tensor, hd: int, wd: int, groups: Sequence[tuple[int, int]], chain: _Chain, emit) -> None:
    """Max pooling (or min, on keys) for sorted (rh, rw) groups as cascades: max5 = max3 ∘ max3,
    max7 = max3 ∘ max5. Exact: the max over clipped windows of clipped windows is the max over the
    clipped union, so ``MaxPool2d``'s -inf padding ("ignore") is kept. ``emit(group, result)`` is
    called in order; a result lies in a buffer the next group reuses."""
    prev, prev_where, prev_r = t, None, (0, 0)
    for rh, rw in groups:
        if prev.shape == t.shape and rh >= prev_r[0] and rw >= prev_r[1]:
            cur, where, dh, dw = prev, prev_where, rh - prev_r[0], rw - prev_r[1]
        else:
            cur, where, dh, dw = t, None, rh, rw
        step = min(dh, dw)
        for _ in range(step):
            cur, where = chain.window(cur, where, wd, 1)
            cur, where = chain.window(cur, where, hd, 1)
        cur, where = chain.window(cur, where, wd, dw - step)
        cur, where = chain.window(cur, where, hd, dh - step)
        emit((rh, rw), cur)
        prev, prev_where, prev_r = cur, where, (rh, rw)


def _keys_into(t: Tensor, hd: int, wd: int, bufs: _Buffers) -> Tensor:
    """int64 keys whose *minimum* over a window gives ``MaxPool2d``'s maximum and its index: a key
    is ``(h·W + w) − ordered(value)·2³²`` where ``ordered`` maps float32 bits to int32 monotonically
    (−0.0 folded into +0.0, which ``>`` treats as equal). The smallest key has the largest value
    and, among equal values, the smallest row-major position: the window's first maximum, as
    ``MaxPool2d`` picks it. A NaN (which ``MaxPool2d`` takes whenever its scan meets one) gets a
    key below every number's, lower the later its position: the window's last NaN. Its low 32 bits
    are the index."""
    h, w = t.shape[hd], t.shape[wd]
    value = bufs.get("kf", t.shape, torch.float32)
    if t.dtype == torch.float32:
        torch.add(t, 0.0, out=value)
    else:  # bfloat16 / float16 widen exactly
        value.copy_(t).add_(0.0)
    ordered = value.view(torch.int32)
    flip = bufs.get("ki", t.shape, torch.int32)
    torch.bitwise_right_shift(ordered, 31, out=flip)
    ordered.bitwise_xor_(flip.bitwise_and_(0x7FFFFFFF))
    keys = bufs.get("keys", t.shape, torch.int64)
    keys.copy_(ordered).bitwise_left_shift_(32)
    shape = [1, 1, 1, 1]
    shape[hd], shape[wd] = h, w
    index = _cached(
        _MAP_CACHE,
        ("index", h, w, tuple(shape), t.device),
        lambda: torch.arange(h * w, dtype=torch.int64).reshape(shape).to(t.device),
    )
    torch.sub(index, keys, out=keys)
    nan = torch.isnan(value)
    if nan.any():
        # high half -2^31 + (h·w - 1 - position): below +inf's (-0x7F800000) for maps up to 2^23 pixels
        nan_keys = _cached(
            _MAP_CACHE,
            ("nan-keys", h, w, tuple(shape), t.device),
            lambda: (((h * w - 1) - index - 2**31) << 32) + index,
        )
        keys = torch.where(nan, nan_keys, keys)
    return keys


def _flat_base(t: Tensor, hd: int, wd: int) -> Tensor:
    """Flat offset of (n, c) in ``t`` (broadcastable to ``t``): the start of each plane."""
    cd = 3 if hd == 1 else 1
    shape = [1, 1, 1, 1]
    shape[0], shape[cd] = t.shape[0], t.shape[cd]

    def make() -> Tensor:
        n = torch.arange(t.shape[0], dtype=torch.int64) * t.stride(0)
        c = torch.arange(t.shape[cd], dtype=torch.int64) * t.stride(cd)
        return (n[:, None] + c[None, :]).reshape(shape).to(t.device)

    return _cached(_MAP_CACHE, ("base", tuple(t.shape), tuple(t.stride()), hd, t.device), make)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ where ``a`` may be smaller along some axes (broadcast): ``b`` is folded over them."""
    for d in range(a.dim()):
        if a.shape[d] == 1 and b.shape[d] != 1:
            b = _fold(b, d, "sum")
    if a.is_contiguous() and b.is_contiguous() and a.dtype in (torch.float32, torch.float64) and a.device.type == "cpu":
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()


# --------------------------------------------------------------------------------------------
# Forward and backward (shift backend)
# --------------------------------------------------------------------------------------------


_CHUNK_ELEMENTS = 1 << 18


def _chunks(n: int, per_sample: int) -> list[tuple[int, int]]:
    """Batch slices of about ``_CHUNK_ELEMENTS`` elements: each op then streams ~1 MiB of float32,
    so a chunk's handful of buffers stays in cache between the ~100 operations that touch it, and
    the buffers are reused from chunk to chunk. Small inputs are one chunk (per-op overhead)."""
    if n * per_sample <= 2 * _CHUNK_ELEMENTS:
        return [(0, n)]
    size = max(1, _CHUNK_ELEMENTS // per_sample)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def _is_cl(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _forward(x: Tensor, weights: Tensor, plan: Plan, factors: Sequence[Tensor]) -> tuple[Tensor, Tensor, Any]:
    """(output, tensor to save, layout). The shift backend saves the NHWC work copy of the input
    when it made one (the input is then free), else the input."""
    if plan.backend == "stock":
        return _forward_stock(x, weights, plan, factors), x, None
    if plan.backend == "native":
        return native.forward(x, weights, plan.identity, plan.avg, plan.max, plan.gates, factors), x, None
    nhwc, cl = _choose_nhwc(x, plan), _is_cl(x)
    if not nhwc and not x.is_contiguous():
        x = x.contiguous()
    lay = _Layout(nhwc)
    n, c, h, w = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last if cl else torch.contiguous_format)
    work = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device) if nhwc and not cl else None
    bufs: _Buffers | None = None
    for s, e in _chunks(n, c * h * w):
        if not nhwc:
            t, out = x[s:e], y[s:e]
        elif cl:
            t, out = x[s:e].permute(0, 2, 3, 1), y[s:e].permute(0, 2, 3, 1)
        else:
            t = work[s:e]
            t.copy_(x[s:e].permute(0, 2, 3, 1))
        bufs = bufs or _Buffers(t)
        if nhwc and not cl:
            out = bufs.get("out", t.shape, t.dtype)
        _forward_chunk(t, out, lay, weights, plan, [f[s:e] for f in factors], bufs)
        if nhwc and not cl:
            y[s:e].copy_(out.permute(0, 3, 1, 2))
    saved = work if work is not None else x
    return y, saved, (nhwc, cl, tuple(x.shape))


def _scale(weights: Tensor, plan: Plan, factors: Sequence[Tensor], lay: _Layout) -> Tensor | None:
    """The identity and the gates together: ``S = w_skip + Σ_j v_j · Π factors_j``, so that their
    part of the output is ``x · S`` (one full-size pass to make S, one to apply it) and their part
    of ``x``'s gradient is ``g · S``. S is small when every gate is per channel (SE); None when
    there is neither an identity nor a gate."""
    first_gate = plan.n_weights - len(plan.gates)
    pending = weights[0] if plan.identity else None  # the identity's weight, not yet added
    out: Tensor | None = None
    fi = 0
    for j, n in enumerate(plan.gates):
        fs = [lay.small(f) for f in factors[fi : fi + n]]
        fi += n
        head = fs[0] * weights[first_gate + j]
        for f in fs[1:-1]:
            head = head * f
        base = out if out is not None else pending
        pending = None
        if n == 1:
            out = head if base is None else base + head
        else:
            out = torch.addcmul(base, head, fs[-1]) if base is not None else head * fs[-1]
    if pending is not None:
        out = pending
    return out


def _forward_chunk(t: Tensor, y: Tensor, lay: _Layout, weights: Tensor, plan: Plan, factors: Sequence[Tensor], bufs: _Buffers) -> None:
    hd, wd = lay.hd, lay.wd
    scale = _scale(weights, plan, factors, lay)
    if scale is None:
        y.zero_()
    else:
        torch.mul(t, scale, out=y)
    wi = int(plan.identity)
    if plan.avg:
        _avg_forward(y, t, lay, plan, weights[wi : wi + len(plan.avg)], bufs)
        wi += len(plan.avg)
    if plan.max:
        max_weights = weights[wi : wi + len(plan.max)]
        order = {group: j for j, group in enumerate(plan.max)}
        _max_cascade(t, hd, wd, plan.max, _Chain(bufs, "max", t.dtype), lambda group, v: y.addcmul_(v, max_weights[order[group]]))
        wi += len(plan.max)


def _avg_apply(t: Tensor, out: Tensor, lay: _Layout, p: Tensor, q: Tensor, bufs: _Buffers, accumulate: bool) -> None:
    """``out (+)= P ⊛_H t ⊛_W Q`` (``(P ⊛_H t)[i] = Σ_i' P[i, i'] t[i']``): two batched small
    matrix products on contiguous operands, the second one accumulating into ``out``."""
    n = t.shape[0]
    h, w = t.shape[lay.hd], t.shape[lay.wd]
    mid = bufs.get("mm", t.shape, t.dtype)
    if lay.nhwc:
        c = t.shape[3]
        torch.matmul(p, t.view(n, h, w * c), out=mid.view(n, h, w * c))
        target, batch = out.view(n * h, w, c), mid.view(n * h, w, c)
        qq = q.expand(n * h, w, w)
    else:
        c = t.shape[1]
        torch.matmul(t.view(n * c, h, w), q.t(), out=mid.view(n * c, h, w))
        target, batch = out.view(n * c, h, w), mid.view(n * c, h, w)
        qq = p.expand(n * c, h, h)  # NCHW: the second product is along H
    if accumulate:
        target.baddbmm_(qq, batch)
    else:
        torch.bmm(qq, batch, out=target)


def _avg_forward(y: Tensor, t: Tensor, lay: _Layout, plan: Plan, weights: Tensor, bufs: _Buffers) -> None:
    """``y += Σ_g w_g · avg_g(x)``. Up to 16×16: ``P_g ⊛_H x ⊛_W (w_g Q_g)`` with divisor-carrying
    band matrices. Larger maps: ``D_g ⊙ R_rh(C_rw(x))``, column sums growing in place (radius 2 =
    radius 1 plus two columns), each group's row sums, then the divisor map times the weight."""
    h, w = t.shape[lay.hd], t.shape[lay.wd]
    if max(h, w) <= _AVG_MATMUL_UP_TO:
        for j, (rh, rw, k) in enumerate(plan.avg):
            _avg_apply(t, y, lay, _band(h, rh, k, t.device, t.dtype), _band(w, rw, k, t.device, t.dtype) * weights[j], bufs, accumulate=True)
        return
    chain = _Chain(bufs, "sum", t.dtype, ("ra", "rb"))
    cols, cols_r = None, 0
    for j in sorted(range(len(plan.avg)), key=lambda i: (plan.avg[i][1], plan.avg[i][0])):
        rh, rw, k = plan.avg[j]
        if rw == 0:
            src = t
        elif rw >= w - 1:
            src = _fold(t, lay.wd, "sum")
        else:
            if cols is None:
                cols = bufs.get("cols", t.shape, t.dtype)
                _step1(t, lay.wd, "sum", cols, bufs.get("pair", _shape_minus(t.shape, lay.wd), t.dtype))
                cols_r = 1
            for s in range(cols_r + 1, rw + 1):
                _ring_(cols, t, lay.wd, s, "sum")
            cols_r = rw
            src = cols
        box, _ = chain.window(src, None, lay.hd, rh)
        y.addcmul_(box, _divisor_map(h, w, rh, rw, k, lay.map_shape(h, w), t.device, t.dtype) * weights[j])


def _backward(
    grad: Tensor,
    saved: Tensor,
    layout: Any,
    weights: Tensor,
    plan: Plan,
    factors: Sequence[Tensor],
    need_x: bool,
    need_w: bool,
    need_f: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, list[Tensor | None]]:
    if plan.backend == "stock":
        return _backward_stock(grad, saved, weights, plan, factors, need_x, need_w, need_f)
    if plan.backend == "native":
        return native.backward(saved, grad, weights, plan.identity, plan.avg, plan.max, plan.gates, factors, need_x, need_w, need_f)
    nhwc, cl, shape = layout
    lay = _Layout(nhwc)
    n, c, h, w = shape
    full_t = saved.permute(0, 2, 3, 1) if nhwc and cl else saved  # the work tensor of the forward
    if not nhwc and not grad.is_contiguous():
        grad = grad.contiguous()
    grad_cl = _is_cl(grad)
    gx = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last if cl else torch.contiguous_format) if need_x else None
    gf_full: list[Tensor | None] = [torch.empty_like(f) if want else None for f, want in zip(factors, need_f)]
    gw_total: Tensor | None = None
    bufs: _Buffers | None = None
    for s, e in _chunks(n, c * h * w):
        t = full_t[s:e]
        bufs = bufs or _Buffers(t)
        if not nhwc:
            g = grad[s:e]
        elif grad_cl:
            g = grad[s:e].permute(0, 2, 3, 1)
        else:
            g = bufs.get("g", t.shape, grad.dtype)
            g.copy_(grad[s:e].permute(0, 2, 3, 1))
        gxw = None
        if gx is not None:
            gxw = gx[s:e] if not nhwc else (gx[s:e].permute(0, 2, 3, 1) if cl else bufs.get("gx", t.shape, grad.dtype))
        gw, gf = _backward_chunk(g, t, gxw, lay, weights, plan, [f[s:e] for f in factors], need_w, need_f, bufs)
        if gx is not None and nhwc and not cl:
            gx[s:e].copy_(gxw.permute(0, 3, 1, 2))
        if need_w:
            gw_t = torch.stack(gw)
            gw_total = gw_t if gw_total is None else gw_total + gw_t
        for full, piece in zip(gf_full, gf):
            if full is not None and piece is not None:
                full[s:e].copy_(piece)
    return gx, gw_total, gf_full


def _backward_chunk(
    g: Tensor,
    t: Tensor,
    gx: Tensor | None,
    lay: _Layout,
    weights: Tensor,
    plan: Plan,
    factors: Sequence[Tensor],
    need_w: bool,
    need_f: Sequence[bool],
    bufs: _Buffers,
) -> tuple[list[Tensor], list[Tensor | None]]:
    hd, wd = lay.hd, lay.wd
    h, w = t.shape[hd], t.shape[wd]
    gw: list[Tensor | None] = [None] * plan.n_weights
    if gx is not None:
        scale = _scale(weights, plan, factors, lay)
        if scale is None:
            gx.zero_()
        else:
            torch.mul(g, scale, out=gx)
    gt = g * t if plan.gates and (need_w or any(need_f)) else None
    if plan.identity and need_w:
        gw[0] = gt.sum() if gt is not None else _dot(g, t)
    wi = int(plan.identity)
    if plan.avg and max(h, w) <= _AVG_MATMUL_UP_TO:
        for rh, rw, k in plan.avg:  # the transpose of P ⊛ · ⊛ Q is Pᵀ ⊛ · ⊛ Qᵀ
            back = bufs.get("ra", t.shape, t.dtype)
            _avg_apply(g, back, lay, _band(h, rh, k, t.device, t.dtype).t(), _band(w, rw, k, t.device, t.dtype).t(), bufs, accumulate=False)
            if need_w:
                gw[wi] = _dot(back, t)
            if gx is not None:
                gx.addcmul_(back, weights[wi])
            wi += 1
    elif plan.avg:
        # the transpose of D ⊙ R(C(·)) is C(R(D ⊙ ·)): clipped box sums are symmetric
        chain = _Chain(bufs, "sum", t.dtype, ("ra", "rb"))
        for rh, rw, k in plan.avg:
            scaled = torch.mul(g, _divisor_map(h, w, rh, rw, k, lay.map_shape(h, w), t.device, t.dtype), out=bufs.get("ra", t.shape, t.dtype))
            rows, where = chain.window(scaled, "ra", hd, rh)
            back, _ = chain.window(rows, where, wd, rw)
            if need_w:
                gw[wi] = _dot(back, t)
            if gx is not None:
                gx.addcmul_(back, weights[wi])
            wi += 1
    if plan.max:
        n_max = len(plan.max)
        if gx is not None and t.dtype == torch.float64:  # no room for an index next to 64 value bits
            for rh, rw in plan.max:
                kernel, pad = [2 * rh + 1, 2 * rw + 1], [rh, rw]
                _, idx = F.max_pool2d(lay.nchw(t), kernel, 1, pad, return_indices=True)
                routed = torch.ops.aten.max_pool2d_with_indices_backward(lay.nchw(g), lay.nchw(t), kernel, [1, 1], pad, [1, 1], False, idx)
                routed = routed.permute(0, 2, 3, 1) if lay.nhwc else routed
                if need_w:
                    gw[wi] = _dot(routed.contiguous(), t)
                gx.addcmul_(routed, weights[wi])
                wi += 1
        elif gx is not None:
            grads = _max_backward(t, g, gx, lay, plan, weights[wi : wi + n_max], need_w, bufs)
            gw[wi : wi + n_max] = grads
            wi += n_max
        else:
            order = {group: wi + j for j, group in enumerate(plan.max)}
            _max_cascade(t, hd, wd, plan.max, _Chain(bufs, "max", t.dtype), lambda group, v: gw.__setitem__(order[group], _dot(v, g)))
            wi += n_max
    gf = _gates_backward(gt, lay, weights, plan, factors, need_w, need_f, gw)
    return gw, gf


def _max_backward(t: Tensor, g: Tensor, gx: Tensor, lay: _Layout, plan: Plan, weights: Tensor, need_w: bool, bufs: _Buffers) -> list[Tensor | None]:
    """Route each output's gradient to its window's first maximum, ``MaxPool2d``'s choice: the
    indices come from a min-cascade over int64 keys, the scatter is ATen's own pooling backward
    (into a reused buffer). ⟨g, max_k(x)⟩ = ⟨max_kᵀ(g), x⟩ gives the weight's gradient."""
    hd, wd = lay.hd, lay.wd
    keys = _keys_into(t, hd, wd, bufs)
    order = {group: j for j, group in enumerate(plan.max)}
    grads: dict[tuple[int, int], Tensor] = {}
    g_nchw, t_nchw = lay.nchw(g), lay.nchw(t)

    def emit(group: tuple[int, int], best: Tensor) -> None:
        rh, rw = group
        weight = weights[order[group]]
        if best.shape[hd] == 1 and best.shape[wd] == 1 and t.shape[hd] * t.shape[wd] > 1:
            # the window is the whole map: one maximum per plane gets the plane's summed gradient
            src = _fold(_fold(g, hd, "sum"), wd, "sum")
            target = best.bitwise_and(0xFFFFFFFF).mul_(t.stride(wd)).add_(_flat_base(t, hd, wd))
            if need_w:
                grads[group] = (torch.take(t, target) * src).sum()
            gx.view(-1).scatter_add_(0, target.reshape(-1), (src * weight).reshape(-1))
            return
        idx = bufs.get("target", t.shape, torch.int64)
        if best.shape == t.shape:
            torch.bitwise_and(best, 0xFFFFFFFF, out=idx)
        else:  # the window spans one axis: the same index all along it
            idx.copy_(best.bitwise_and(0xFFFFFFFF).expand(t.shape))
        routed = bufs.get("routed", t.shape, t.dtype)
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            g_nchw, t_nchw, [2 * rh + 1, 2 * rw + 1], [1, 1], [rh, rw], [1, 1], False, lay.nchw(idx), grad_input=lay.nchw(routed)
        )
        if need_w:
            grads[group] = _dot(routed, t)
        gx.addcmul_(routed, weight)

    _max_cascade(keys, hd, wd, plan.max, _Chain(bufs, "min", torch.int64, ("ka", "kb")), emit)
    return [grads.get(group) for group in plan.max]


def _gates_backward(
    gt: Tensor | None,
    lay: _Layout,
    weights: Tensor,
    plan: Plan,
    factors: Sequence[Tensor],
    need_w: bool,
    need_f: Sequence[bool],
    gw: list[Tensor | None],
) -> list[Tensor | None]:
    """Gradients of the gate factors and weights from ``gt = g · x``: each factor gets
    ``v · Σ(g · x · the other factors)`` over its broadcast axes, the weight ``⟨that, factor⟩``."""
    out: list[Tensor | None] = []
    first_gate = plan.n_weights - len(plan.gates)
    fi = 0
    for j, n in enumerate(plan.gates):
        raw = factors[fi : fi + n]
        wants = need_f[fi : fi + n]
        fi += n
        if gt is None:
            out.extend([None] * n)
            continue
        fs = [lay.small(f) for f in raw]
        v = weights[first_gate + j]
        reduced: list[Tensor] = []
        for a in range(n):
            prod = gt
            for b in range(n):
                if b != a:
                    prod = prod * fs[b]
            reduced.append(prod.sum_to_size(fs[a].shape))
        if need_w:
            gw[first_gate + j] = (reduced[0] * fs[0]).sum()
        out.extend(lay.small_back(reduced[a] * v, raw[a]) if wants[a] else None for a in range(n))
    return out


# --------------------------------------------------------------------------------------------
# The stock backend: ATen pooling kernels inside the fused node (no saved outputs)
# --------------------------------------------------------------------------------------------


def _avg_stock(x: Tensor, rh: int, rw: int, k: int) -> Tensor:
    if k:
        return F.avg_pool2d(x, (2 * rh + 1, 2 * rw + 1), 1, (rh, rw), count_include_pad=True, divisor_override=k * k)
    return F.avg_pool2d(x, (2 * rh + 1, 2 * rw + 1), 1, (rh, rw), count_include_pad=False)


_NCHW = _Layout(False)


def _forward_stock(x: Tensor, weights: Tensor, plan: Plan, factors: Sequence[Tensor]) -> Tensor:
    scale = _scale(weights, plan, factors, _NCHW)
    y = torch.zeros_like(x) if scale is None else x * scale
    wi = int(plan.identity)
    for rh, rw, k in plan.avg:
        y.addcmul_(_avg_stock(x, rh, rw, k), weights[wi])
        wi += 1
    for rh, rw in plan.max:
        y.addcmul_(F.max_pool2d(x, (2 * rh + 1, 2 * rw + 1), 1, (rh, rw)), weights[wi])
        wi += 1
    return y


def _backward_stock(grad, x, weights, plan, factors, need_x, need_w, need_f):
    g = grad.contiguous(memory_format=torch.channels_last) if _is_cl(x) else grad.contiguous()
    gw: list[Tensor | None] = [None] * plan.n_weights
    gx: Tensor | None = None
    if need_x:
        scale = _scale(weights, plan, factors, _NCHW)
        gx = torch.zeros_like(x) if scale is None else g * scale
    gt = g * x if plan.gates and (need_w or any(need_f)) else None
    if plan.identity and need_w:
        gw[0] = gt.sum() if gt is not None else (g * x).sum()
    wi = int(plan.identity)
    for rh, rw, k in plan.avg:
        kernel, pad = [2 * rh + 1, 2 * rw + 1], [rh, rw]
        if need_w:
            gw[wi] = (g * _avg_stock(x, rh, rw, k)).sum()
        if need_x:
            back = torch.ops.aten.avg_pool2d_backward(g, x, kernel, [1, 1], pad, False, bool(k), k * k if k else None)
            gx.addcmul_(back, weights[wi])
        wi += 1
    for rh, rw in plan.max:
        kernel, pad = [2 * rh + 1, 2 * rw + 1], [rh, rw]
        if need_x:
            values, idx = F.max_pool2d(x, kernel, 1, pad, return_indices=True)
            back = torch.ops.aten.max_pool2d_with_indices_backward(g, x, kernel, [1, 1], pad, [1, 1], False, idx)
            gx.addcmul_(back, weights[wi])
        else:
            values = F.max_pool2d(x, kernel, 1, pad)
        if need_w:
            gw[wi] = (g * values).sum()
        wi += 1
    gf = _gates_backward(gt, _NCHW, weights, plan, factors, need_w, need_f, gw)
    return gx, (torch.stack(gw) if need_w else None), gf


# --------------------------------------------------------------------------------------------
# Drop-in pooling modules for children (and anything else): the same module, a faster forward
# --------------------------------------------------------------------------------------------


def _pool_plan(op: nn.Module, x: Tensor, backend: str) -> Plan | None:
    kind = classify(op)
    if kind is None or kind[0] not in ("avg", "max") or x.dim() != 4:
        return None
    if backend == "native" and not (native.available() and native.supports(x, (), ())):
        backend = "shift"
    r = kind[1] // 2
    rh, rw = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    if kind[0] == "avg":
        incl = kind[1] if kind[2] else 0
        if (rh, rw) == (0, 0) and not incl:
            return Plan(True, (), (), (), backend)
        return Plan(False, ((rh, rw, incl),), (), (), backend)
    if (rh, rw) == (0, 0):
        return Plan(True, (), (), (), backend)
    return Plan(False, (), ((rh, rw),), (), backend)


def pool_forward(op: nn.Module, x: Tensor) -> Tensor | None:
    """One stride-1 shape-preserving pooling module through the fused node's CPU backends (native,
    else shift), exactly ``op(x)`` in values and gradients; None where it does not apply (then run
    ATen's)."""
    if x.device.type != "cpu" or not x.is_floating_point() or tracing():
        return None
    backend = default_backend(x.device)
    if backend == "stock":
        return None
    plan = _pool_plan(op, x, backend)
    if plan is None:
        return None
    one = _cached(_MAP_CACHE, ("one", x.device, x.dtype), lambda: torch.ones(1, dtype=x.dtype, device=x.device))
    return _FusedMix.apply(x, one, plan)


def gate_forward(x: Tensor, factors: Sequence[Tensor]) -> Tensor | None:
    """A gate op's output ``x · Π factors`` (``x · a_h · a_w``, ``x · s``) through the fused node on
    the native backend: one pass, and only ``x`` and the small factors kept for the backward; None
    where the kernel does not apply (then the op multiplies as it is)."""
    if tracing() or default_backend(x.device) != "native" or not native.supports(x, (len(factors),), factors):
        return None
    one = _cached(_MAP_CACHE, ("one", x.device, x.dtype), lambda: torch.ones(1, dtype=x.dtype, device=x.device))
    return _FusedMix.apply(x, one, Plan(False, (), (), (len(factors),), "native"), *factors)


class FastAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` (same arguments, state and results) whose stride-1, shape-preserving CPU
    forward and backward run the exact native or shift path instead of ATen's NCHW kernel, which is
    10-50× slower on CPU for stride-1 windows. Tracing, export and other settings use ATen's."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            out = self._fast(x)
            if out is not None:
                return out
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)

    @torch.jit.ignore
    def _fast(self, x: Tensor) -> Tensor | None:
        return pool_forward(self, x)


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` likewise (the gradient goes to the same element, ties included)."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            out = self._fast(x)
            if out is not None:
                return out
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    @torch.jit.ignore
    def _fast(self, x: Tensor) -> Tensor | None:
        return pool_forward(self, x)


_AVG_TYPES = (nn.AvgPool2d, FastAvgPool2d)
_MAX_TYPES = (nn.MaxPool2d, FastMaxPool2d)
