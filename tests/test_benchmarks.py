"""The benchmark harness: ``--set`` reaches the space that the step and search parts measure."""

from __future__ import annotations

import pytest

from benchmarks.cases import build_pair, load
from benchmarks.cli import parse, settings_of


def test_set_overrides_the_measured_space_before_each_parts_own_overrides() -> None:
    wide = settings_of(parse(["--set", "backbone.kwargs.width_mult=1.0", "--set", "strategy.rho=0.3"]))
    space = load(wide, "strategy.rho=null")  # the search part's own override comes last and wins
    assert space.backbone.kwargs["width_mult"] == 1.0 and space.strategy.model_extra["rho"] is None
    default = settings_of(parse([]))
    assert load(default).backbone.kwargs["width_mult"] == 0.5
    sizes = [sum(p.numel() for p in build_pair(s)[0].parameters()) for s in (default, wide)]
    assert sizes[1] > 2 * sizes[0]


def test_a_wrong_key_or_space_stops_the_run_with_the_loaders_line(tmp_path) -> None:
    with pytest.raises(SystemExit, match="backbone.widht"):
        settings_of(parse(["--set", "backbone.widht=1"]))
    with pytest.raises(SystemExit, match="cannot read the space file"):
        settings_of(parse(["--space", str(tmp_path / "missing.yaml")]))
    with pytest.raises(SystemExit, match="--resolutions takes image sizes"):
        settings_of(parse(["--resolutions", "28px"]))


def test_space_and_resolutions_choose_the_geometry_measured() -> None:
    from pathlib import Path

    fashion = Path(__file__).resolve().parent.parent / "spaces" / "mbv2_metapool_fashion.yaml"
    s = settings_of(parse(["--space", str(fashion), "--resolutions", "28,56"]))
    assert s.resolutions == (28, 56)
    space = load(s)
    assert (space.name, space.backbone.input_size, space.backbone.max_downsample) == ("mbv2_metapool_fashion", 28, 16)
    assert settings_of(parse([])).resolutions == (32, 64)


def test_peak_memory_on_cpu_prints_no_profiler_log_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """The CPU peak is read through torch.profiler, whose backend (Kineto) logs to the process's
    stderr unless told not to: `python -m benchmarks` output holds the tables only."""
    import torch

    from benchmarks.memory import peak_bytes

    conv = torch.nn.Conv2d(3, 8, 3)
    assert peak_bytes(lambda: conv(torch.randn(2, 3, 16, 16)).sum().backward(), torch.device("cpu")) > 0
    assert capfd.readouterr().err == ""


def _run(ratio_num: float, den: float, name: str = "train step 32px bs32") -> dict:
    from benchmarks.cases import Row

    row = Row("step", name, "supernet", "backbone", ratio_num, den, "s", target=1.5)
    machine = {"cpu": "CPU X", "cpus": 2, "torch": "2.14.1", "threads": 1}
    return {"meta": {"machine": machine, "command": "python -m benchmarks"}, "rows": [row.to_dict()]}


def test_compare_prints_two_runs_row_by_row(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    import json

    from benchmarks.cli import _read_run, render_comparison

    old = _run(0.6, 0.25)  # 2.40×
    new = _run(0.3, 0.25)  # 1.20×, the numerator twice as fast
    new["rows"].append(_run(1.0, 1.0, "only in this run")["rows"][0])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    render_comparison(new, _read_run(path), "old.json")
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    step = next(line for line in lines if "train step 32px bs32" in line)
    assert "1.20× (300.0 ms)" in step and "2.40× (600.0 ms)" in step and step.rstrip(" │").endswith("0.50×")
    only = next(line for line in lines if "only in this run" in line)
    assert "1.00×" in only and "-" in only.split("│")[3]

    path.write_text("{}")
    with pytest.raises(SystemExit, match="not a benchmark --json file"):
        _read_run(path)


def test_benchmark_process_prints_no_c10_warnings_of_the_profiler() -> None:
    """A CPU peak reading frees blocks allocated before the profiler started; c10 warns about each
    one on stderr unless benchmarks sets its log level before torch loads."""
    import subprocess
    import sys

    code = (
        "import benchmarks, torch\n"
        "from benchmarks.memory import peak_bytes\n"
        "conv = torch.nn.Conv2d(3, 8, 3); x = torch.randn(2, 3, 16, 16); conv(x).sum().backward()\n"
        "def step():\n    conv.weight.grad = None\n    conv(x).sum().backward()\n"
        "assert peak_bytes(step, torch.device('cpu')) > 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert "CPUAllocator" not in run.stderr and run.stderr.strip() == ""


def test_child_part_reports_folded_and_onnx_rows_for_every_child() -> None:
    import math

    import torch

    from benchmarks.cases import child_rows

    s = settings_of(parse(["--rounds", "1"]))
    s.warmup, s.latency_batches, s.latency_resolution, s.child_train_resolution, s.batch = 0, (2,), 32, 32, 2
    torch.manual_seed(0)
    rows = child_rows(s, None, lambda line: None)
    names = {r.name: r for r in rows}
    for kid in ("every op twice", "all global"):
        assert names[f"latency 32px bs2: {kid}"].denominator == "backbone"
        assert names[f"latency 32px bs2: {kid}, BN folded"].denominator == "backbone, BN folded"
        assert f"train step 32px bs2: {kid}" in names
        both = names[f"latency 32px bs2: {kid}, both in onnxruntime"]  # what a deployment compares
        assert (both.numerator, both.denominator) == (f"child ({kid}), onnxruntime", "backbone, onnxruntime")
    onnx = names["latency 32px bs2: all global, ONNX"]
    assert (onnx.numerator, onnx.denominator, onnx.target) == ("child (all global), onnxruntime", "child (all global)", 1.0)
    assert all(r.num > 0 and r.den > 0 and math.isfinite(r.ratio) for r in rows)


def test_layout_part_times_each_model_in_both_memory_formats_and_with_either_grouped_conv_side_by_side() -> None:
    import math

    from benchmarks.cases import layout_steps

    s = settings_of(parse(["--rounds", "1", "--set", "backbone.kwargs.width_mult=0.25"]))
    s.warmup, s.resolutions, s.batch = 0, (16,), 2
    rows = layout_steps(s, lambda line: None)
    assert [(r.name, r.numerator, r.denominator) for r in rows] == [
        ("train step 16px bs2: backbone, NHWC / NCHW", "backbone NHWC", "backbone NCHW"),
        ("train step 16px bs2: supernet, NHWC / NCHW", "supernet NHWC", "supernet NCHW"),
        ("train step 16px bs2: backbone, grouped convs padded first / torch's", "backbone NHWC", "backbone NHWC, torch's grouped convs"),
        ("train step 16px bs2: supernet, grouped convs padded first / torch's", "supernet NHWC", "supernet NHWC, torch's grouped convs"),
    ]
    assert all(r.num > 0 and r.den > 0 and math.isfinite(r.ratio) for r in rows)


@pytest.mark.filterwarnings("ignore:.*candidates that coincide")
def test_families_part_times_each_candidate_family_against_the_backbone() -> None:
    import math

    from benchmarks.cases import FAMILIES, family_steps

    s = settings_of(parse(["--rounds", "1", "--set", "backbone.kwargs.width_mult=0.25", "--set", "backbone.input_size=16"]))
    s.warmup, s.resolutions, s.batch = 0, (16,), 2
    rows = family_steps(s, lambda line: None)
    assert [(r.name, r.numerator, r.denominator) for r in rows] == [
        (f"train step 16px bs2: {name}", name, "backbone") for name in ["supernet", *(f"supernet, {f}" for f in FAMILIES)]
    ]
    assert all(r.num > 0 and r.den > 0 and math.isfinite(r.ratio) for r in rows)


@pytest.mark.filterwarnings("ignore:.*candidates that coincide")
def test_pmpl_step_part_compares_the_papers_order_with_reuse_on_one_row() -> None:
    import math

    from benchmarks.cases import pmpl_steps

    s = settings_of(parse(["--rounds", "1", "--set", "backbone.kwargs.width_mult=0.25", "--set", "backbone.input_size=16"]))
    s.warmup, s.batch = 0, 2
    [row] = pmpl_steps(s, lambda line: None)
    assert (row.name, row.numerator, row.denominator) == ("PMPL step 16px bs2, weight gradient at the new α / reused", "after_alpha", "reuse")
    assert row.num > 0 and row.den > 0 and math.isfinite(row.ratio)


@pytest.mark.filterwarnings("ignore:.*candidates that coincide")
def test_compile_adds_compiled_steps_beside_the_eager_ones() -> None:
    """``--compile BACKEND`` times the same backbone and supernet under torch.compile (here the
    ``eager`` backend: dynamo's capture without code generation, fast enough for a test)."""
    import math

    from benchmarks.cases import supernet_steps

    s = settings_of(parse(["--rounds", "1", "--compile", "eager", "--set", "backbone.kwargs.width_mult=0.25", "--set", "backbone.input_size=16"]))
    assert parse(["--compile"]).compile == "inductor" and parse([]).compile is None
    s.warmup, s.resolutions, s.batch = 1, (16,), 2
    rows = {r.name: r for r in supernet_steps(s, lambda line: None)}
    both = rows["train step 16px bs2, both compiled"]
    assert (both.numerator, both.denominator, both.target) == ("supernet, compiled", "backbone, compiled", 1.5)
    for model in ("backbone", "supernet"):
        row = rows[f"train step 16px bs2: {model}, compiled / eager"]
        assert (row.numerator, row.denominator) == (f"{model}, compiled", model)
    assert all(r.num > 0 and r.den > 0 and math.isfinite(r.ratio) for r in rows.values())
