"""Peak memory of one call: the most bytes of tensor memory that were live at once during the
call, counting only what the call allocated (the model, its optimizer state and the input batch
exist before and are not counted; gradients made by the call are).

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
allocated before the call.

CPU: PyTorch has no CPU allocator statistics, and the process's RSS is useless for this (glibc
keeps freed memory, Python and the libraries share it, and the high-water mark cannot be reset).
Instead the call runs under ``torch.profiler`` with ``profile_memory=True``: c10's CPU allocator
then reports every allocation and free of tensor storage, each event carrying the running total
of bytes allocated *since profiling started* and still alive. The maximum of that running total
is the peak. This covers every CPU tensor (activations kept for the backward, gradients,
temporaries, optimizer updates); memory that libraries allocate for themselves outside PyTorch's
allocator (oneDNN scratch space, for instance) is not seen, for both variants alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from benchmarks.timing import synchronize


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by ``fn`` and alive at one time (None if it cannot be measured)."""
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable[[], object]) -> int | None:
    from torch.profiler import ProfilerActivity, profile

    # Kineto, the profiler's backend, logs to stderr (ERROR: a failed GPU probe; USDT: start and
    # stop) at levels up to 5; 6 silences it. It reads the variable once, when the process's first
    # profile starts (tests/test_activations.py counts its clones without the profiler for that).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the allocation events, with the allocator's running total (private but stable since 2.0)
        from torch._C._profiler import _EventType

        tree = prof.profiler.kineto_results.experimental_event_tree()
    except Exception:
        return _peak_from_function_events(prof)
    totals: list[tuple[int, int]] = []
    stack = list(tree)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if getattr(getattr(fields, "device", None), "type", "cpu") == "cpu":
                totals.append((node.start_time_ns, int(fields.total_allocated)))
        stack.extend(node.children)
    if not totals:
        return _peak_from_function_events(prof)
    return max(total for _, total in totals)


def _peak_from_function_events(prof) -> int | None:
    """Fallback: each op's net self allocation, summed in start order (misses peaks inside ops)."""
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    running = peak = 0
    for event in events:
        running += getattr(event, "self_cpu_memory_usage", 0) or 0
        peak = max(peak, running)
    return peak or None
