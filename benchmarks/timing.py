"""Side-by-side timing: alternate the variants, rotate their order, take medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Seconds per call of one variant over the measured rounds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """Interquartile range (25th, 75th percentile) in seconds; min and max under 4 samples."""
        if len(self.samples) < 4:
            return min(self.samples), max(self.samples)
        q = statistics.quantiles(self.samples, n=4)
        return q[0], q[2]

    def to_dict(self) -> dict[str, float | int]:
        lo, hi = self.spread
        return {"median_s": self.median, "low_s": lo, "high_s": hi, "rounds": len(self.samples)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(fns: dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device) -> dict[str, Timing]:
    """Time every function ``rounds`` times, alternating between them; round r starts with
    variant r mod k, so no variant always runs right after the same other one."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    synchronize(device)
    out = {name: Timing() for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            out[name].samples.append(time.perf_counter() - start)
    return out
