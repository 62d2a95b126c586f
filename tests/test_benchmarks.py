"""The benchmark harness: ``--set`` reaches the space that the step and search parts measure."""

from __future__ import annotations

import pytest

from benchmarks.cases import build_pair, load
from benchmarks.cli import parse, settings_of
from rfsearch import ConfigError


def test_set_overrides_the_measured_space_before_each_parts_own_overrides() -> None:
    wide = settings_of(parse(["--set", "backbone.kwargs.width_mult=1.0", "--set", "strategy.rho=0.3"]))
    space = load(wide, "strategy.rho=null")  # the search part's own override comes last and wins
    assert space.backbone.kwargs["width_mult"] == 1.0 and space.strategy.model_extra["rho"] is None
    default = settings_of(parse([]))
    assert load(default).backbone.kwargs["width_mult"] == 0.5
    sizes = [sum(p.numel() for p in build_pair(s)[0].parameters()) for s in (default, wide)]
    assert sizes[1] > 2 * sizes[0]


def test_a_wrong_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="backbone.widht"):
        load(settings_of(parse(["--set", "backbone.widht=1"])))


def test_peak_memory_on_cpu_prints_no_profiler_log_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """The CPU peak is read through torch.profiler, whose backend (Kineto) logs to the process's
    stderr unless told not to: `python -m benchmarks` output holds the tables only."""
    import torch

    from benchmarks.memory import peak_bytes

    conv = torch.nn.Conv2d(3, 8, 3)
    assert peak_bytes(lambda: conv(torch.randn(2, 3, 16, 16)).sum().backward(), torch.device("cpu")) > 0
    assert capfd.readouterr().err == ""
