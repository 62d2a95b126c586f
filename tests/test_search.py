"""The search loop end to end on the embedded dataset at a tiny size: arch file, history,
determinism of ``random``, kill-and-resume equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rfsearch import Arch, build_child, load_space, run_search
from rfsearch.io import load_checkpoint, read_jsonl

from tests import tiny

TINY = [
    *tiny.TINY,
    "train.search.batch_size=16",
    "strategy.arch_optimizer.lr=0.05",
]


def tiny_space(*extra: str):
    return load_space("spaces/custom_backbone.yaml", [*TINY, *extra])


def test_search_writes_a_complete_self_contained_arch(tmp_path: Path) -> None:
    result = run_search(tiny_space("train.search.epochs=2"), tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    assert {"config.yaml", "arch.json", "history.jsonl", "checkpoint.pt", "summary.json"} <= {p.name for p in run.iterdir()}
    arch = Arch.load(run)
    assert arch.complete and arch == result.arch
    assert arch.backbone.name == "examples.custom_backbone:TinyNet" and arch.num_classes is not None
    for point in arch.points:
        assert point.choice_names[0] in point.candidates
        assert abs(sum(point.probs.values()) - 1) < 1e-4
    history = read_jsonl(run / "history.jsonl")
    assert [r["step"] for r in history if "final" not in r] == list(range(1, result.steps + 1))
    assert all(len(r["probs"]) == len(arch.points) for r in history)
    child = build_child(arch)  # from the file alone
    assert child(torch.randn(2, 3, 16, 16)).shape == (2, arch.num_classes)


def test_lr_warmup_ramps_and_arch_warmup_keeps_alpha_still(tmp_path: Path) -> None:
    """``warmup_epochs`` ramps the weight lr linearly (as in the retrain); ``arch_warmup_epochs``
    keeps α where it started for that many epochs, then lets it move."""
    space = tiny_space("train.search.epochs=3", "train.search.warmup_epochs=1", "strategy.arch_warmup_epochs=1", "strategy.rho=null")
    run_search(space, tmp_path / "run", show_progress=False)
    history = [r for r in read_jsonl(tmp_path / "run" / "history.jsonl") if "final" not in r]
    per_epoch = len([r for r in history if r["epoch"] == 0])
    base = space.train.search.optimizer.lr
    ramp = [r["lr"] for r in history[:per_epoch]]
    # each record holds the rate its step used: base / n, 2 base / n, ..., base over the first epoch
    assert ramp == sorted(ramp) and abs(ramp[0] - base / per_epoch) < 1e-9 and abs(ramp[-1] - base) < 1e-9
    assert history[-1]["lr"] < base  # then the cosine decay
    start = history[0]["probs"]
    assert all(r["probs"] == start for r in history[:per_epoch])
    assert history[-1]["probs"] != start


def test_random_is_a_function_of_the_seed(tmp_path: Path) -> None:
    choices = []
    for i, seed in enumerate((3, 3, 4)):
        space = load_space("spaces/custom_backbone.yaml", [*tiny.TINY, "strategy.name=random", f"train.seed={seed}"])
        result = run_search(space, tmp_path / f"r{i}", show_progress=False)
        assert result.steps == 0
        choices.append(result.arch.choices())
    assert choices[0] == choices[1]
    assert choices[0] != choices[2]


def _search_cli(out: Path, *extra: str) -> list[str]:
    sets = [arg for s in [*TINY, "train.search.epochs=4", "strategy.rho=null", *extra] for arg in ("--set", s)]
    return [sys.executable, "-m", "rfsearch", "search", "spaces/custom_backbone.yaml", "--out", str(out), "--quiet", *sets]


def test_killed_search_resumes_to_the_same_arch_and_alpha(tmp_path: Path) -> None:
    """A real SIGKILL after the first epoch's checkpoint, then --resume: same α, same arch as an
    uninterrupted run with the same seed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_search_cli(full), check=True, env=env, timeout=600, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_search_cli(killed, "train.search.epochs=4"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and load_checkpoint(checkpoint)["epoch"] >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the search ended before it could be killed: make the budget larger"
    interrupted_at = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= interrupted_at < 4

    resumed = subprocess.run(
        [sys.executable, "-m", "rfsearch", "search", "--resume", str(killed), "--quiet"], env=env, timeout=600, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    # one whole line, whatever the terminal width or the length of the path (rich never wraps it)
    assert any(line.startswith(f"Resuming {killed} at epoch {interrupted_at}, step ") for line in resumed.stdout.splitlines()), resumed.stdout

    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(checkpoint)
    alphas = [k for k in a["model"] if k.endswith(".alpha")]
    assert alphas
    for key in alphas:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert json.loads((full / "arch.json").read_text()) == json.loads((killed / "arch.json").read_text())
    steps = [r["step"] for r in read_jsonl(killed / "history.jsonl") if "final" not in r]
    assert steps == sorted(set(steps)), "history repeats steps after the resume"


def test_strategy_flag_switches_a_pmpl_space_and_names_what_it_drops(tmp_path: Path) -> None:
    """``--strategy uniform`` on a space written for PMPL (rho set) runs uniform, with a note that
    rho is left out; an unknown name is a config error (exit 2), not a traceback."""
    run = subprocess.run([*_search_cli(tmp_path / "u", "train.search.epochs=1"), "--strategy", "uniform"], timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert any("rho" in line and "left out" in line for line in run.stdout.splitlines()), run.stdout
    assert Arch.load(tmp_path / "u").strategy == "uniform"
    bad = subprocess.run([*_search_cli(tmp_path / "b"), "--strategy", "nope"], timeout=600, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "unknown strategy 'nope'" in bad.stdout + bad.stderr


def test_runs_place_models_and_batches_in_the_memory_format_the_space_asks_for_on_cpu() -> None:
    from rfsearch.space.schema import TrainConfig
    from rfsearch.train.engine import to_device
    from rfsearch.train.setup import RunSetup

    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    for channels_last in (True, False):
        run = RunSetup.start("search", TrainConfig(device="cpu", channels_last=channels_last), None)
        conv = run.place(torch.nn.Conv2d(3, 4, 3))
        x, _ = to_device(batch, run.device, run.channels_last)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_runs_on_cpu_make_grouped_convolutions_pad_first_unless_the_space_says_not() -> None:
    from rfsearch.space.schema import TrainConfig
    from rfsearch.train.cpu_convs import PadFirstConv2d
    from rfsearch.train.setup import RunSetup

    def placed(**train) -> list[type]:
        run = RunSetup.start("retrain", TrainConfig(device="cpu", **train), None)
        return [type(m) for m in run.place(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.nn.Conv2d(4, 4, 3, padding=1)))]

    assert placed() == [PadFirstConv2d, torch.nn.Conv2d]
    assert placed(pad_first=False) == [torch.nn.Conv2d, torch.nn.Conv2d]  # runs from before, bit for bit
