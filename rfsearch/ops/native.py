"""The ``native`` mixing backend: ``mix_kernel.c`` (and ``gate_head.c``, the global op's gate head)
compiled on first use and called through ctypes.

The kernel computes every candidate of a point from one cached copy of each (sample, channel)
plane, where the shift backend makes ~100 passes over the whole tensor. It is plain C with OpenMP
and no PyTorch headers, so it compiles in about a second (a ``torch.utils.cpp_extension`` build
takes over a minute here, for every fresh checkout); it links the ``libgomp`` that PyTorch has
already loaded, so both share one thread pool. The shared object is cached under
``$RFSEARCH_CACHE_DIR`` (default ``~/.cache/rfsearch``) by a hash of the sources, the compiler and
the CPU, and written atomically. Without a C compiler (``$CC``, else ``cc``) the CPU default stays
the shift backend, with one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["available", "backward", "forward", "global_forward", "head_backward", "head_forward", "profiles", "profiles_backward", "supports"]

_SOURCES = [Path(__file__).with_name(name) for name in ("mix_kernel.c", "gate_head.c")]
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_log = logging.getLogger(__name__)
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ('{compiler}' not found; set CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256(b"\0".join([*(path.read_bytes() for path in _SOURCES), " ".join(_FLAGS).encode(), version.encode(), _cpu_id().encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("RFSEARCH_CACHE_DIR") or Path.home() / ".cache" / "rfsearch") / "kernels"
    target = cache / f"mix_kernel-{digest}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run([compiler, *_FLAGS, *map(str, _SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            os.replace(tmp, target)  # atomic: a concurrent process sees the old state or the whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    pointer, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    lib.rf_mix_forward.argtypes = [pointer, pointer, i64p, i64p, pointer, pointer, ctypes.c_int, ctypes.c_int]
    lib.rf_mix_backward.argtypes = [pointer, pointer, pointer, i64p, i64p, pointer, pointer, pointer, pointer, ctypes.c_int, ctypes.c_int]
    lib.rf_profiles_forward.argtypes = [pointer, pointer, i64p, ctypes.c_int, ctypes.c_int]
    lib.rf_profiles_backward.argtypes = [pointer, pointer, i64p, ctypes.c_int, ctypes.c_int]
    lib.rf_head_forward.argtypes = [pointer, pointer, pointer, pointer, pointer, i64p, pointer, pointer, pointer, ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int]
    lib.rf_head_backward.argtypes = [pointer, pointer, pointer, pointer, pointer, pointer, pointer, i64p, pointer, ctypes.c_int, pointer, pointer, ctypes.c_int]
    lib.rf_global_forward.argtypes = [pointer, pointer, i64p, pointer, pointer, pointer, ctypes.c_double, ctypes.c_int, ctypes.c_int]
    for entry in (lib.rf_mix_forward, lib.rf_mix_backward, lib.rf_profiles_forward, lib.rf_profiles_backward, lib.rf_head_forward, lib.rf_head_backward, lib.rf_global_forward):
        entry.restype = ctypes.c_int
    return lib


def _check(status: int) -> None:
    if status:
        raise MemoryError("rfsearch: the native kernel could not allocate its working buffers (out of memory)")


def available() -> bool:
    """Whether the kernel is compiled and loaded (built on the first call)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except (OSError, RuntimeError) as err:
            _log.warning("rfsearch: the native mixing kernel is unavailable (%s); using the shift backend", err)
            _lib = None
    return _lib is not None


def supports(x: Tensor, gates: Sequence[int], factors: Sequence[Tensor]) -> bool:
    """float32 on CPU in channels_last (the kernel's inner loop runs along the channels), with gates
    of the shapes it knows: (N,C,H,1)·(N,C,1,W) (the separable global op) or (N,C,1,1) (SE)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        return False
    n, c, h, w = x.shape
    if x.stride(1) != 1 and c > 1:
        return False
    fi = 0
    for count in gates:
        group = factors[fi : fi + count]
        fi += count
        if [tuple(f.shape) for f in group] not in ([(n, c, h, 1), (n, c, 1, w)], [(n, c, 1, 1)]):
            return False
        if any(f.dtype != torch.float32 for f in group):
            return False
    return True


def _plan_array(identity: bool, avg, mx, gates: Sequence[int]) -> ctypes.Array:
    values = [int(identity), len(avg), *[v for group in avg for v in group], len(mx), *[v for group in mx for v in group], len(gates), *[int(n == 2) for n in gates]]
    return (ctypes.c_int64 * len(values))(*values)


def _geometry(shape: Sequence[int], *tensors: Tensor) -> ctypes.Array:
    values = [*shape] + [s for t in tensors for s in (t.stride(0), t.stride(2), t.stride(3))]
    return (ctypes.c_int64 * len(values))(*values)


def _pointers(tensors: Sequence[Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * max(1, len(tensors)))(*[t.data_ptr() if t is not None else None for t in tensors])


def _pixel_major(f: Tensor) -> Tensor:
    """(N,C,H,1) → (N,H,1,C), (N,C,1,W) → (N,1,W,C), (N,C,1,1) as it is: channels innermost."""
    return f.detach().permute(0, 2, 3, 1).contiguous()


def _slots(gates: Sequence[int], factors: Sequence[Tensor]) -> list[Tensor | None]:
    """Two slots per gate (A, B; B None for a per-plane gate), pixel-major."""
    out: list[Tensor | None] = []
    fi = 0
    for count in gates:
        out.append(_pixel_major(factors[fi]))
        out.append(_pixel_major(factors[fi + 1]) if count == 2 else None)
        fi += count
    return out


def _nhwc_like(x: Tensor) -> Tensor:
    """An output the kernel can write (channels with stride 1), also where ``x`` is a view that
    only has channels innermost (a crop of a channels_last map): ``empty_like`` would give NCHW."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _channels_last(t: Tensor) -> Tensor:
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def forward(x: Tensor, weights: Tensor, identity: bool, avg, mx, gates: Sequence[int], factors: Sequence[Tensor]) -> Tensor:
    """``Σ_k w_k · op_k(x)`` in channels_last (``x``'s format when ``x`` is dense)."""
    y = _nhwc_like(x)
    weights = weights.detach().float().contiguous()
    slots = _slots(gates, factors)
    _check(_lib.rf_mix_forward(
        x.data_ptr(), y.data_ptr(), _geometry(x.shape, x, y), _plan_array(identity, avg, mx, gates), weights.data_ptr(), _pointers(slots), _forward_block(x.shape, torch.get_num_threads()), torch.get_num_threads()
    ))
    return y


def backward(
    x: Tensor, grad: Tensor, weights: Tensor, identity: bool, avg, mx, gates: Sequence[int], factors: Sequence[Tensor], need_x: bool, need_w: bool, need_f: Sequence[bool]
) -> tuple[Tensor | None, Tensor | None, list[Tensor | None]]:
    """(∂x in channels_last, ∂weights, ∂factors) of ``forward``."""
    grad = _channels_last(grad)
    gx = _nhwc_like(x) if need_x else None
    n_weights = int(identity) + len(avg) + len(mx) + len(gates)
    block = _channel_block(x.shape)
    tiles = x.shape[0] * -(-x.shape[1] // block)
    gw_tiles = torch.zeros(tiles, n_weights, dtype=torch.float64)
    weights_c = weights.detach().float().contiguous()
    slots = _slots(gates, factors)
    grad_slots = [torch.empty_like(s) if s is not None and want else None for s, want in zip(slots, _slot_wants(gates, need_f))]
    _check(_lib.rf_mix_backward(
        x.data_ptr(), grad.data_ptr(), gx.data_ptr() if gx is not None else None, _geometry(x.shape, x, grad, gx if gx is not None else x),
        _plan_array(identity, avg, mx, gates), weights_c.data_ptr(), _pointers(slots), _pointers(grad_slots), gw_tiles.data_ptr(), block, torch.get_num_threads(),
    ))
    gw = gw_tiles.sum(0).to(weights.dtype) if need_w else None
    gf: list[Tensor | None] = []
    for j, count in enumerate(gates):
        for a in range(count):
            piece = grad_slots[2 * j + a]
            gf.append(piece.permute(0, 3, 1, 2) if piece is not None else None)
    return gx, gw, gf


def profiles(x: Tensor) -> Tensor:
    """The separable global op's profiles of ``x`` (N,C,H,W): (N, H+W, C), the means along W of
    each row then the means along H of each column, channels innermost, in one read of ``x``."""
    n, c, h, w = x.shape
    p = torch.empty(n, h + w, c, dtype=x.dtype, device=x.device)
    threads = torch.get_num_threads()
    _check(_lib.rf_profiles_forward(x.data_ptr(), p.data_ptr(), _geometry(x.shape, x), _profile_block(x.shape, threads), threads))
    return p


def profiles_backward(grad: Tensor, out: Tensor) -> Tensor:
    """∂x of :func:`profiles` for ``grad`` (N, H+W, C), written into ``out`` (x's shape, channels
    with stride 1) and returned."""
    grad = grad.contiguous()
    threads = torch.get_num_threads()
    _check(_lib.rf_profiles_backward(grad.data_ptr(), out.data_ptr(), _geometry(out.shape, out), _profile_block(out.shape, threads), threads))
    return out


def head_forward(
    p: Tensor, params: Sequence[Tensor | None], running: tuple[Tensor, Tensor] | None, batch: bool, eps: float, momentum: float | None, h: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The global op's gate head on its profiles ``p`` (N, H+W, C) (``gate_head.c``): ``a_h`` (N, H, C),
    ``a_w`` (N, W, C), and what the backward needs: the reduce layer's output (N, H+W, hid) and the
    statistics used (2, hid). ``params``: W1 (hid, C), b1, gamma, beta (None, None: no BN), Wh, bh,
    Ww, bw. ``batch``: BN normalises with the batch's statistics and moves ``running`` (mean, var)
    by ``momentum`` (None: leaves them); else with ``running``."""
    n, rows, c = p.shape
    hid = params[0].shape[0]
    ah, aw = p.new_empty(n, h, c), p.new_empty(n, rows - h, c)
    z = p.new_empty(n, rows, hid)
    stats = torch.empty(2, hid, dtype=torch.float64)
    rm, rv = running if running is not None else (None, None)
    _check(_lib.rf_head_forward(
        p.data_ptr(), ah.data_ptr(), aw.data_ptr(), z.data_ptr(), stats.data_ptr(), _head_geometry(p, h, hid), _pointers(params),
        rm.data_ptr() if rm is not None else None, rv.data_ptr() if rv is not None else None, int(batch), eps,
        -1.0 if momentum is None else momentum, torch.get_num_threads(),
    ))
    return ah, aw, z, stats


def head_backward(
    p: Tensor, z: Tensor, ah: Tensor, aw: Tensor, gah: Tensor | None, gaw: Tensor | None, stats: Tensor, params: Sequence[Tensor | None],
    batch: bool, need_p: bool, need: Sequence[bool],
) -> tuple[Tensor | None, list[Tensor | None]]:
    """(∂p, [∂ of each of ``params`` where ``need`` says so]) of :func:`head_forward`."""
    gp = torch.empty_like(p) if need_p else None
    grads = [torch.empty_like(t) if t is not None and want else None for t, want in zip(params, need)]
    gah = gah.contiguous() if gah is not None else None
    gaw = gaw.contiguous() if gaw is not None else None
    _check(_lib.rf_head_backward(
        p.data_ptr(), z.data_ptr(), ah.data_ptr(), aw.data_ptr(), gah.data_ptr() if gah is not None else None,
        gaw.data_ptr() if gaw is not None else None, stats.data_ptr(), _head_geometry(p, ah.shape[1], z.shape[2]), _pointers(params),
        int(batch), gp.data_ptr() if gp is not None else None, _pointers(grads), torch.get_num_threads(),
    ))
    return gp, grads


def global_forward(x: Tensor, params: Sequence[Tensor | None], running: tuple[Tensor, Tensor] | None, eps: float) -> Tensor:
    """The global op's output ``x · a_h · a_w`` without autograd, in one call: :func:`profiles`, then
    :func:`head_forward` with BN's ``running`` statistics (None: the folded form), then the gating of
    :func:`forward`; the same bits as those three calls. ``x``: float32, channels with stride 1."""
    y = _nhwc_like(x)
    threads = torch.get_num_threads()
    rm, rv = running if running is not None else (None, None)
    geom = (ctypes.c_int64 * 11)(*_geometry(x.shape, x, y), params[0].shape[0])  # as forward's, then the head's hidden width
    _check(_lib.rf_global_forward(
        x.data_ptr(), y.data_ptr(), geom, _pointers(params), rm.data_ptr() if rm is not None else None,
        rv.data_ptr() if rv is not None else None, eps, _profile_block(x.shape, threads), threads,
    ))
    return y


def _head_geometry(p: Tensor, h: int, hid: int) -> ctypes.Array:
    return (ctypes.c_int64 * 5)(p.shape[0], p.shape[1], h, p.shape[2], hid)


def _slot_wants(gates: Sequence[int], need_f: Sequence[bool]) -> list[bool]:
    wants: list[bool] = []
    fi = 0
    for count in gates:
        wants.extend([need_f[fi], count == 2 and need_f[fi + 1]])
        fi += count
    return wants


TILE_FLOATS = 1 << 16  # the backward's tile: its ~7 buffers of 256 KB fit the 2 MB L2 it was measured on
FORWARD_TILE_FLOATS = 1 << 19


def _profile_block(shape: Sequence[int], threads: int) -> int:
    """Channels per profile tile: all of a sample's, so each pixel is one contiguous read (blocks of
    64 made the profiles 1.2-2.6× slower: 64-float pieces of every pixel, tile after tile; the W × C
    column sums stay in L2 at every map the spaces make), split only where the batch has fewer
    samples than threads; a multiple of 16 floats (one AVX-512 vector)."""
    return _thread_share(shape[0], shape[1], threads, 16)


def _thread_share(n: int, c: int, threads: int, multiple: int) -> int:
    """Channels per tile so that every thread has a tile where the batch has fewer samples than
    threads (c split into ceil(threads / n) blocks), else all c; rounded up to ``multiple``, at most c."""
    split = -(-threads // n) if 0 < n < threads else 1
    share = -(-c // split)
    return min(c, -(-share // multiple) * multiple)


def _channel_block(shape: Sequence[int], floats: int | None = None) -> int:
    """Channels per tile: about ``floats`` (default ``TILE_FLOATS``) floats per tile buffer, so that
    a tile's few buffers stay in the core's L2 cache; a multiple of 8 (one AVX2 vector) where it can be."""
    block = (TILE_FLOATS if floats is None else floats) // (shape[2] * shape[3])
    block = 8 if block < 8 else block - block % 8
    return min(block, shape[1])


def _forward_block(shape: Sequence[int], threads: int) -> int:
    """The forward's tiles: every output element comes from its own channel alone, so the split
    changes no bit, and whole samples (up to ``FORWARD_TILE_FLOATS`` floats, 2 MB, per buffer) read
    and write the map in place instead of copying narrow tiles in and out (a single pool at 224 px,
    batch 32: 0.6-0.8× the time of 8192-float tiles). Channels are split further only where the
    batch has fewer samples than threads. The backward takes ``TILE_FLOATS``: it reads x and the
    gradient and writes ∂x, with more buffers per tile; its weight gradients are summed per tile,
    so its split sets their rounding."""
    return min(_channel_block(shape, FORWARD_TILE_FLOATS), _thread_share(shape[0], shape[1], threads, 8))
