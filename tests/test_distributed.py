"""Two CPU processes under torchrun (gloo): one α for all ranks, the same result as one process
with the same global batch, resume, rank-0-only files and reduced metrics.

Three torchrun launches (each costs a few seconds of imports per process):

1. ``torchrun -m rfsearch search`` (the CLI), PMPL on a GroupNorm net with pooling candidates. A
   test strategy (``ProbePMPL``: PMPL plus a hook) makes every rank write its own α after every
   step into a file of the test, so the ranks' agreement is checked from their own values, not
   from rank 0's checkpoint alone. The same search in this process with batch 2·B must give the
   same α: the loaders hand N processes of batch B the same global batches as one process of
   batch N·B (docs/multi_gpu.md), DDP averages θ's gradients, ``reduce_grads`` averages α's, and
   GroupNorm (per sample) removes the one term that differs, per-rank batch statistics.
2. This file as a driver script under torchrun, through the Python API: a search interrupted after
   the first epoch's checkpoint then resumed (bitwise the α of launch 1); a run directory without
   ``out`` (the same path on both ranks); a user error on rank 0 that must stop both ranks; the
   uniform strategy (single paths through DDP with unused parameters, scores averaged).
3. ``torchrun -m rfsearch retrain`` of a child with BatchNorm: files once, metrics over the whole
   validation set, equal to a one-process evaluation of the saved checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from rfsearch.strategies.pmpl import PMPL
from rfsearch.strategies.uniform import UniformSampling

from tests import tiny

REPO = Path(__file__).resolve().parents[1]
MODULE = "tests.test_distributed"
PROBE_ENV, CRASH_ENV = "RFSEARCH_TEST_PROBE", "RFSEARCH_TEST_CRASH_AT"
EPOCHS, STEPS_PER_EPOCH = 4, 3  # 48 weight images / global batch 16
RESUME_AT = 2 * STEPS_PER_EPOCH  # the last checkpoint before the interruption (a point is fixed by then)
CRASH_AT = RESUME_AT + 1

PROBE_SPACE = f"""
name: ddp_probe
backbone:
  name: {MODULE}:GroupNormTinyNet
  kwargs: {{width: 8}}
  input_size: 16
insert:
  - name: after_depthwise
    modules: "blocks.*.depthwise"
    candidates: [skip, {{avgpool: {{k: [3, 5, 7]}}}}, {{maxpool: {{k: [3, 5, 7]}}}}]
strategy: {{name: "{MODULE}:ProbePMPL", rho: 0.06, weight_grad: reuse, arch_optimizer: {{lr: 0.1}}}}  # see docs/multi_gpu.md: after_alpha drifts by 1e-3
data:
  augment: false
  embedded: {{image_size: 16, train_size: 96, test_size: 32}}
train:
  device: cpu
  search: {{epochs: {EPOCHS}, batch_size: 8}}
"""

TINY = [  # the shared tiny space, BatchNorm included, B = 8 per process
    *tiny.TINY,
    "train.search.batch_size=8",
    "train.search.arch_optimizer.lr=0.05",  # the older layout: PMPL's option, ignored by random and uniform
    "train.device=cpu",
]


# ----------------------------------------------------------------------------- test hooks


def GroupNormTinyNet(num_classes: int = 10, width: int = 16) -> nn.Module:
    """examples/custom_backbone.py's TinyNet with GroupNorm for BatchNorm: statistics per sample,
    so a batch split over ranks computes exactly what the whole batch computes in one process."""
    from examples.custom_backbone import TinyNet

    net = TinyNet(num_classes, width)
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(4, child.num_features))
    return net


class _Probe:
    """Records this rank's α and choices after every step and its weights at the end, into
    ``$RFSEARCH_TEST_PROBE/rank<RANK>.json``; ``$RFSEARCH_TEST_CRASH_AT`` stops the run with an
    exception before that step (an interruption after the last epoch's checkpoint)."""

    def _snapshot(self, step: int) -> dict[str, Any]:
        mixed = self.supernet.mixed_ops  # type: ignore[attr-defined]
        return {"step": step, "alpha": {p: m.alpha.detach().tolist() for p, m in mixed.items()}, "choices": self.supernet.choices()}  # type: ignore[attr-defined]

    def step(self, ctx, batch, meta_batch):  # type: ignore[no-untyped-def]
        if os.environ.get(CRASH_ENV) == str(ctx.step):
            raise RuntimeError(f"probe crash at step {ctx.step}")
        return super().step(ctx, batch, meta_batch)  # type: ignore[misc]

    def decide(self, ctx):  # type: ignore[no-untyped-def]
        fixings = super().decide(ctx)  # type: ignore[misc]
        self.__dict__.setdefault("records", []).append(self._snapshot(ctx.step + 1))
        return fixings

    def finalize(self, ctx, meta_batches):  # type: ignore[no-untyped-def]
        fixings = super().finalize(ctx, meta_batches)  # type: ignore[misc]
        records = self.__dict__.setdefault("records", [])
        records.append({**self._snapshot(ctx.step), "final": True})
        weights = [p.detach().double().sum().item() for p in self.supernet.weight_parameters()]  # type: ignore[attr-defined]
        if os.environ.get(PROBE_ENV):
            path = Path(os.environ[PROBE_ENV]) / f"rank{os.environ.get('RANK', '0')}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"records": records, "weights": weights}))
        return fixings


class ProbePMPL(_Probe, PMPL):
    pass


class ProbeUniform(_Probe, UniformSampling):
    pass


# ----------------------------------------------------------------------------- launching


def _torchrun(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Two processes on this machine; the rendezvous picks a free port on 127.0.0.1."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), **env}
    proc = subprocess.run([*launcher, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"torchrun {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _probe(directory: Path) -> list[dict[str, Any]]:
    return [json.loads((directory / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp")
    (path / "probe.yaml").write_text(PROBE_SPACE)
    return path


@pytest.fixture(scope="module")
def cli_search(work: Path) -> dict[str, Any]:
    """Launch 1: the CLI search on two ranks, run from an empty directory."""
    cwd = work / "cli_cwd"
    cwd.mkdir()
    proc = _torchrun(["-m", "rfsearch", "search", str(work / "probe.yaml"), "--out", str(work / "search"), "--quiet"], cwd, **{PROBE_ENV: str(work / "probe-cli")})
    return {"run": work / "search", "cwd": cwd, "ranks": _probe(work / "probe-cli"), "stdout": proc.stdout}


@pytest.fixture(scope="module")
def driver(work: Path) -> dict[str, Any]:
    """Launch 2: this file as a script on two ranks (see ``_drive``)."""
    cwd = work / "driver_cwd"
    cwd.mkdir()
    _torchrun([str(Path(__file__).resolve()), str(work)], cwd)
    return {"cwd": cwd, "ranks": [json.loads((work / f"driver-rank{r}.json").read_text()) for r in (0, 1)]}


# ----------------------------------------------------------------------------- one process


def test_one_process_gets_a_group_of_one_whose_collectives_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from rfsearch.distributed import Dist, init_distributed
    from rfsearch.errors import RfsearchError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, device = init_distributed("auto")
    assert dist == Dist() and device == "auto" and dist.is_main and not dist.enabled
    grads = [torch.ones(2)]
    dist.mean_(grads)
    assert grads[0].tolist() == [1.0, 1.0]
    assert dist.mean_stats({"loss": 0.5}, torch.device("cpu")) == {"loss": 0.5}
    assert dist.on_main(lambda: "path") == dist.broadcast_object("path") == "path"
    dist.assert_same("α", [1.0])
    model = nn.BatchNorm2d(2)
    assert dist.convert_sync_bn(model, torch.device("cpu"), True) is model
    # SyncBatchNorm (CUDA runs) converts in place below the root: the supernet's MixedOps stay its own
    from rfsearch import build_supernet, load_space

    supernet = build_supernet(load_space(REPO / "spaces/custom_backbone.yaml", TINY), num_classes=3)
    mixed = supernet.mixed_ops
    supernet.net = Dist(0, 2, 0).convert_sync_bn(supernet.net, torch.device("cuda", 0), True)  # conversion only, no GPU needed
    modules = {id(m) for m in supernet.net.modules()}
    assert all(id(m) in modules for m in mixed.values())
    assert not any(isinstance(m, nn.BatchNorm2d) and not isinstance(m, nn.SyncBatchNorm) for m in supernet.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for op in mixed.values() for m in op.modules())  # the global op's BN
    if not torch.cuda.is_available():  # a CUDA device asked for under torchrun on a machine without one
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RfsearchError, match="CUDA is not available"):
            init_distributed("cuda")


# ----------------------------------------------------------------------------- launch 1


def test_every_rank_holds_the_same_alpha_at_every_step(cli_search: dict[str, Any]) -> None:
    from rfsearch import Arch
    from rfsearch.io import load_checkpoint, read_jsonl

    rank0, rank1 = cli_search["ranks"]
    assert len(rank0["records"]) == EPOCHS * STEPS_PER_EPOCH + 1
    assert rank0 == rank1  # α (exact floats), choices after every step, and the final weights
    steps_fixed = [next(r["step"] for r in rank0["records"] if r["choices"][p]) for p in rank0["records"][-1]["choices"]]
    assert min(steps_fixed) < EPOCHS * STEPS_PER_EPOCH, "no point was fixed before the end: DDP's re-wrap went untested"

    run = cli_search["run"]
    state = load_checkpoint(run / "checkpoint.pt")
    final = rank0["records"][-1]
    for path, alpha in final["alpha"].items():
        assert state["model"][f"net.{path}.enhancer.alpha"].tolist() == alpha
    assert Arch.load(run).choices() == {p: c for p, c in final["choices"].items()}
    # rank 0 alone wrote: one history line per step, nothing in the working directory, one printout
    history = read_jsonl(run / "history.jsonl")
    assert [r["step"] for r in history if "final" not in r] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert sorted(p.name for p in run.iterdir()) == ["arch.json", "checkpoint.pt", "config.yaml", "history.jsonl", "summary.json"]
    assert list(cli_search["cwd"].iterdir()) == []
    assert cli_search["stdout"].count("architecture (") == 1 and cli_search["stdout"].count("done ") == 1


def test_two_ranks_match_one_process_with_the_same_global_batch(cli_search: dict[str, Any], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rfsearch import load_space, run_search
    from rfsearch.io import read_jsonl

    monkeypatch.chdir(REPO)
    monkeypatch.setenv(PROBE_ENV, str(work / "probe-single"))
    monkeypatch.delenv("RANK", raising=False)
    space = load_space(work / "probe.yaml", ["train.search.batch_size=16"])  # 2 ranks × 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the torchrun processes
    try:
        single = run_search(space, work / "single", show_progress=False)
    finally:
        torch.set_num_threads(threads)
    (one,) = [json.loads((work / "probe-single" / "rank0.json").read_text())]
    two = cli_search["ranks"][0]

    assert [r["step"] for r in one["records"]] == [r["step"] for r in two["records"]]
    for a, b in zip(one["records"], two["records"]):
        for path in a["alpha"]:
            torch.testing.assert_close(torch.tensor(a["alpha"][path]), torch.tensor(b["alpha"][path]), rtol=0, atol=2e-4)
        assert a["choices"] == b["choices"], f"step {a['step']}: the fixing decisions differ"
    assert single.arch.choices() == {p: c for p, c in two["records"][-1]["choices"].items()}
    torch.testing.assert_close(torch.tensor(one["weights"]), torch.tensor(two["weights"]), rtol=1e-3, atol=1e-3)
    # history holds the loss averaged over ranks: the loss of the same 16 images in one process
    h1 = [r for r in read_jsonl(work / "single" / "history.jsonl") if "final" not in r]
    h2 = [r for r in read_jsonl(cli_search["run"] / "history.jsonl") if "final" not in r]
    for key in ("loss", "meta_loss", "acc", "meta_acc"):
        torch.testing.assert_close(torch.tensor([r[key] for r in h1]), torch.tensor([r[key] for r in h2]), rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------- launch 2


def _drive(work: Path) -> None:
    """Runs on every rank of launch 2 and writes what it saw to ``driver-rank<RANK>.json``."""
    from rfsearch import load_space, run_search
    from rfsearch.errors import RfsearchError
    from rfsearch.train.rundir import load_run_config

    torch.set_num_threads(1)
    seen: dict[str, Any] = {}
    # an interruption after the first epoch's checkpoint, then --resume (saved config, no out)
    os.environ[CRASH_ENV] = str(CRASH_AT)
    try:
        run_search(load_space(work / "probe.yaml"), work / "interrupted", show_progress=False)
        seen["crashed"] = False
    except RuntimeError as err:
        seen["crashed"] = "probe crash" in str(err)
    del os.environ[CRASH_ENV]
    os.environ[PROBE_ENV] = str(work / "probe-resumed")
    resumed = run_search(load_run_config(work / "interrupted"), resume=work / "interrupted", show_progress=False)
    seen["resumed_steps"] = resumed.steps
    # no out: rank 0 names the run directory, every rank gets that path
    random = run_search(load_space(REPO / "spaces/custom_backbone.yaml", [*TINY, "strategy.name=random"]), show_progress=False)
    seen["random_run_dir"] = str(random.run_dir.resolve())
    seen["random_choices"] = random.arch.choices()
    # a user error on rank 0 (the directory holds a run) reaches every rank instead of a hang
    try:
        run_search(load_space(REPO / "spaces/custom_backbone.yaml", [*TINY, "strategy.name=random"]), random.run_dir, show_progress=False)
    except RfsearchError as err:
        seen["error"] = str(err)
    # uniform: single paths drawn from the same seed on every rank, scores averaged over ranks
    os.environ[PROBE_ENV] = str(work / "probe-uniform")
    uniform = run_search(
        load_space(REPO / "spaces/custom_backbone.yaml", [*TINY, f"strategy.name={MODULE}:ProbeUniform", "train.search.epochs=1"]),
        work / "uniform",
        show_progress=False,
    )
    seen["uniform_choices"] = uniform.arch.choices()
    (work / f"driver-rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


def test_an_interrupted_two_rank_search_resumes_to_the_same_alpha(driver: dict[str, Any], cli_search: dict[str, Any], work: Path) -> None:
    from rfsearch.io import load_checkpoint, read_jsonl

    assert all(r["crashed"] for r in driver["ranks"])
    assert [r["resumed_steps"] for r in driver["ranks"]] == [EPOCHS * STEPS_PER_EPOCH] * 2
    a, b = load_checkpoint(cli_search["run"] / "checkpoint.pt"), load_checkpoint(work / "interrupted" / "checkpoint.pt")
    assert b["world_size"] == 2
    alphas = [k for k in a["model"] if k.endswith(".alpha")]
    for key in alphas:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert json.loads((cli_search["run"] / "arch.json").read_text()) == json.loads((work / "interrupted" / "arch.json").read_text())
    rank0, rank1 = _probe(work / "probe-resumed")
    assert rank0 == rank1
    assert rank0["records"][0]["step"] == RESUME_AT + 1  # resumed at the last epoch's checkpoint
    uninterrupted = cli_search["ranks"][0]
    assert any(uninterrupted["records"][RESUME_AT - 1]["choices"].values()), "resume from a checkpoint with a fixed point"
    assert rank0 == {"records": uninterrupted["records"][RESUME_AT:], "weights": uninterrupted["weights"]}  # bitwise, step by step
    steps = [r["step"] for r in read_jsonl(work / "interrupted" / "history.jsonl") if "final" not in r]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))


def test_run_directory_and_user_errors_are_shared_by_all_ranks(driver: dict[str, Any]) -> None:
    rank0, rank1 = driver["ranks"]
    assert rank0["random_run_dir"] == rank1["random_run_dir"]
    run_dir = Path(rank0["random_run_dir"])
    assert run_dir.parent == (driver["cwd"] / "runs").resolve() and (run_dir / "arch.json").exists()
    assert [p.name for p in (driver["cwd"] / "runs").iterdir()] == [run_dir.name]  # one directory, made by rank 0
    assert rank0["random_choices"] == rank1["random_choices"]
    assert "already holds a run" in rank0["error"] and rank0["error"] == rank1["error"]


def test_uniform_sampling_agrees_across_ranks(driver: dict[str, Any], work: Path) -> None:
    rank0, rank1 = _probe(work / "probe-uniform")
    assert rank0 == rank1  # same final weights after single-path steps; same choices
    assert driver["ranks"][0]["uniform_choices"] == driver["ranks"][1]["uniform_choices"]
    assert all(driver["ranks"][0]["uniform_choices"].values())


# ----------------------------------------------------------------------------- launch 3


def test_two_rank_retrain_writes_once_and_reports_whole_validation_metrics(driver: dict[str, Any], work: Path) -> None:
    from rfsearch import Arch, build_child
    from rfsearch import data as rfdata
    from rfsearch.io import load_checkpoint, read_jsonl
    from rfsearch.train.engine import evaluate
    from rfsearch.train.rundir import load_run_config

    source, out = Path(driver["ranks"][0]["random_run_dir"]), work / "retrain"
    cwd = work / "retrain_cwd"
    cwd.mkdir()
    sets = ["train.retrain.epochs=2", "train.retrain.batch_size=8", "data.augment=false"]
    proc = _torchrun(["-m", "rfsearch", "retrain", str(source), "--out", str(out), "--quiet", *_sets(sets)], cwd)
    assert proc.stdout.count("done ") == 1 and list(cwd.iterdir()) == []
    names = sorted(p.name for p in out.iterdir())
    assert names == ["arch.json", "best.pt", "checkpoint.pt", "config.yaml", "history.jsonl", "metrics.json", "report.json"]
    history = read_jsonl(out / "history.jsonl")
    assert [r["epoch"] for r in history] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["top1"] == history[-1]["top1"] and metrics["epochs"] == 2

    # the saved child (averaged BN statistics), evaluated here on the whole validation split
    space = load_run_config(out)
    child = build_child(Arch.load(out))
    child.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    val = rfdata.build_train_loaders(space.data, batch_size=8, seed=space.train.seed).val
    here = evaluate(child, val, torch.device("cpu"))
    assert here["samples"] == 32
    assert here["top1"] == pytest.approx(history[-1]["top1"], abs=1e-3)
    assert here["loss"] == pytest.approx(history[-1]["val_loss"], abs=1e-4)


if __name__ == "__main__":  # launch 2: torchrun tests/test_distributed.py WORK
    _drive(Path(sys.argv[1]))
