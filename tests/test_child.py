"""The child network: built from the arch file alone, equal to the fixed supernet, reloaded,
exported, sized against its backbone, retrained from scratch and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from rfsearch import data as rfdata
from rfsearch.arch import Arch, arch_of, fixed_arch
from rfsearch.discretize import build_child, discretize, load_child, read_child, save_child
from rfsearch.errors import RfsearchError
from rfsearch.export import ExportMismatch, child_for_export, export_child, verify_export
from rfsearch.graph.backbone import build_backbone
from rfsearch.graph.points import InsertionPoint, discover_points
from rfsearch.graph.wrap import Enhanced, Summed
from rfsearch.inference import fold_batchnorm
from rfsearch.io import load_checkpoint, read_json, read_jsonl, save_checkpoint
from rfsearch.report import child_report, cost, count_params
from rfsearch.loading import load_space
from rfsearch.space.schema import SpaceConfig
from rfsearch.supernet import MixedOp, Supernet, build_supernet
from rfsearch.train import rundir
from rfsearch.train.engine import evaluate
from rfsearch.train.retrain import run_retrain

from tests.cli_run import exit_code

ROOT = Path(__file__).resolve().parents[1]
MBV2 = {"name": "mobilenet_v2", "kwargs": {"width_mult": 0.25}, "input_size": 16, "max_downsample": 4}
AFTER_DW = [{"modules": "features.*.conv.1", "types": "Conv2dNormActivation"}]
POST = ["batchnorm", "hardswish"]
TINY_DATA = {"embedded": {"image_size": 16, "train_size": 64, "test_size": 32}}
TINY_RETRAIN = {"epochs": 3, "batch_size": 16, "optimizer": {"lr": 0.1}}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: intra-op threads gain nothing, and on shared, busy cores their
    spin-waits made this file ~8× slower (100 s against 12 s at load 5 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class PowerCut(RuntimeError):
    """The machine dies in the middle of an epoch."""


class TinyNet(nn.Module):
    """A custom backbone by import path. Counts its training forwards and can fail after N of them,
    which interrupts a retrain the way a crash does."""

    forwards = 0
    crash_after: int | None = None

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            TinyNet.forwards += 1
            if TinyNet.crash_after is not None and TinyNet.forwards > TinyNet.crash_after:
                raise PowerCut(f"power cut after {TinyNet.crash_after} training steps")
        return self.head(self.block(self.stem(x)))


def every_kind(point: InsertionPoint) -> list[str]:
    """Each kind of choice in turn: skip, a local pool, the global op, top-2 summed."""
    return [["skip"], ["avgpool5"], ["global"], ["global", "maxpool3"]][point.index % 4]


def mbv2_space(post: list[str] | None = None) -> SpaceConfig:
    return SpaceConfig.model_validate({"backbone": MBV2, "insert": AFTER_DW, "post": post or []})


def mbv2_arch(post: list[str] | None = None) -> Arch:
    space = mbv2_space(post)
    points = discover_points(build_backbone(space.backbone, 10), space)
    return fixed_arch(points, every_kind, backbone=space.backbone, num_classes=10)


def tiny_space() -> SpaceConfig:
    return SpaceConfig.model_validate(
        {
            "name": "tiny",
            "backbone": {"name": f"{TinyNet.__module__}:TinyNet", "input_size": 16},
            "insert": [{"modules": ["stem", "block"]}],
            "data": TINY_DATA,
            "train": {"device": "cpu", "retrain": TINY_RETRAIN},
        }
    )


def tiny_arch(space: SpaceConfig) -> Arch:
    points = discover_points(build_backbone(space.backbone), space)
    return fixed_arch(points, lambda p: [["global", "avgpool3"], ["maxpool3"]][p.index], backbone=space.backbone, num_classes=None)


def settle_bn(model: nn.Module, size: int) -> None:
    """Move every BatchNorm's running statistics away from their initial values."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(3 * torch.randn(4, 3, size, size) + 1)
    model.eval()


@pytest.mark.parametrize("post", [[], POST], ids=["no-post", "post"])
def test_child_from_arch_equals_the_fixed_supernet(post: list[str]) -> None:
    space = mbv2_space(post)
    torch.manual_seed(0)
    supernet = build_supernet(space, 10)
    for point in supernet.points:
        supernet.fix(point.path, *every_kind(point))
    settle_bn(supernet, 16)
    arch = Arch.model_validate_json(arch_of(supernet, backbone=space.backbone, num_classes=10).model_dump_json())

    child = build_child(arch)  # from the arch alone: fresh weights
    child.load_state_dict(discretize(supernet).state_dict())  # strict: same modules, same buffers
    child.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(child(x), supernet(x), rtol=0, atol=1e-6)

    assert not any(isinstance(m, (MixedOp, Supernet)) for m in child.modules())
    assert not any("alpha" in name or ".ops." in name for name in child.state_dict())
    for point in supernet.points:
        module = child.get_submodule(point.path)
        choice = every_kind(point)
        if choice == ["skip"]:
            assert isinstance(module, Enhanced) == bool(post)  # nothing at all unless post-mix layers are on
        elif len(choice) == 2:
            assert isinstance(module.enhancer, Summed) and list(module.enhancer) == ["0", "1"]
    plain = build_backbone(space.backbone, 10)
    ops = sum(count_params(c.candidate().build(p.channels)) for p in arch.points for c in p.choice or [])
    posts = sum(2 * p.channels for p in arch.points if p.post)  # BatchNorm's weight and bias
    assert count_params(child) == count_params(plain) + ops + posts


def test_child_needs_a_complete_arch() -> None:
    arch = mbv2_arch()
    arch.points[3].choice = None
    with pytest.raises(RfsearchError, match=r"points\[3\]\.choice: point 'features\.\d+\.conv\.1' is undecided"):
        build_child(arch)


def test_saved_child_reloads_to_identical_outputs(tmp_path: Path) -> None:
    arch = mbv2_arch(POST)
    child = build_child(arch)
    settle_bn(child, 16)
    save_child(tmp_path / "child.pt", arch, child)

    reloaded = load_child(tmp_path / "child.pt")
    assert not reloaded.training
    assert any(isinstance(m, Summed) for m in reloaded.modules())  # top-2 points reload too
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(x), child(x))

    save_checkpoint(tmp_path / "search.pt", {"arch": arch.model_dump(mode="json"), "model": {}})
    with pytest.raises(RfsearchError, match="not a child checkpoint.*retrain"):
        load_child(tmp_path / "search.pt")


def test_export_runs_without_rfsearch_and_matches_pytorch(tmp_path: Path) -> None:
    arch = mbv2_arch(POST)
    child = build_child(arch)
    settle_bn(child, 16)
    assert any(isinstance(m, Summed) for m in child.modules())  # top-2 points export too
    files = {}
    for fmt in ("onnx", "torchscript"):
        result = export_child(child, tmp_path / f"child.{fmt}", fmt, input_size=16)
        assert result.max_abs_diff <= 1e-4
        files[fmt] = str(result.path)

    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = child(x)
    np.save(tmp_path / "x.npy", x.numpy())
    script = f"""
import sys
sys.modules["rfsearch"] = None  # importing rfsearch now fails: the files must stand alone
import numpy as np, onnxruntime, torch
x = np.load({str(tmp_path / "x.npy")!r})
onnx_out = onnxruntime.InferenceSession({files["onnx"]!r}, providers=["CPUExecutionProvider"]).run(None, {{"input": x}})[0]
ts_out = torch.jit.load({files["torchscript"]!r})(torch.from_numpy(x)).detach().numpy()
np.save({str(tmp_path / "onnx.npy")!r}, onnx_out)
np.save({str(tmp_path / "ts.npy")!r}, ts_out)
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name in ("onnx", "ts"):
        got = torch.from_numpy(np.load(tmp_path / f"{name}.npy"))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    with torch.no_grad():  # the check must notice a file that computes something else
        child.classifier[-1].bias.add_(1.0)
    with pytest.raises(ExportMismatch, match="differs from PyTorch"):
        verify_export(files["torchscript"], "torchscript", child, x)


def test_folded_child_computes_the_same_with_no_batchnorm_after_a_convolution() -> None:
    arch = mbv2_arch(POST)
    child = build_child(arch)
    settle_bn(child, 16)
    child.double().train()
    before = {k: v.clone() for k, v in child.state_dict().items()}
    folded = fold_batchnorm(child)

    assert child.training and all(torch.equal(v, before[k]) for k, v in child.state_dict().items())  # left as it was
    assert not folded.training
    bns = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(name.endswith(".post.0") for name in bns), "only the post-mix BNs (after an enhancer, not a conv) remain"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in child.modules()) > 3 * len(bns)
    globals_ = [p.path for p in arch.points if p.choice_names == ["global"]]
    assert globals_ and all(isinstance(folded.get_submodule(path).enhancer.reduce[1], nn.Identity) for path in globals_)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), child.eval()(x), rtol=1e-9, atol=1e-10)


def test_paper_reference_sizes_at_224() -> None:
    # the paper space at 224 px with post-mix layers off (DESIGN §3)
    space = load_space(ROOT / "spaces" / "mbv2_metapool_imagenet.yaml", ["post=[]", "data.dataset=embedded"])
    points = discover_points(build_backbone(space.backbone), space)
    assert len(points) == 16

    report = child_report(fixed_arch(points, lambda p: ["global"], backbone=space.backbone, num_classes=None))
    assert report["backbone"]["params"] == 3_504_872
    assert abs(report["backbone"]["macs"] - 300.8e6) <= 0.1e6
    assert report["child"]["params"] == 3_950_648
    assert abs(report["child"]["macs"] - 306.7e6) <= 0.1e6
    assert sum(p["params"] for p in report["points"]) == report["added"]["params"]
    assert sum(p["macs"] for p in report["points"]) == report["added"]["macs"]
    assert report["choice_counts"] == {"global": 16}
    assert [(p["channels"], p["height"]) for p in report["points"][:2]] == [(96, 56), (144, 56)]

    skip = build_child(fixed_arch(points, lambda p: ["skip"], backbone=space.backbone, num_classes=None))
    assert not any(isinstance(m, Enhanced) for m in skip.modules())
    sizes = cost(skip, 224)
    assert sizes["params"] == 3_504_872 and abs(sizes["macs"] - 300.8e6) <= 0.1e6


def test_retrain_lowers_the_loss_and_writes_a_reloadable_run(tmp_path: Path) -> None:
    space = tiny_space()
    result = run_retrain(space, tiny_arch(space), tmp_path / "run", show_progress=False)
    run = result.run_dir
    for name in ("config.yaml", "arch.json", "best.pt", "checkpoint.pt", "metrics.json", "report.json", "history.jsonl"):
        assert (run / name).exists(), name

    history = read_jsonl(run / rundir.HISTORY)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    rates = [r["lr"] for r in history]  # each epoch's last step: cosine, still above zero at the end
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    metrics = read_json(run / rundir.METRICS)
    assert metrics["finished"] and metrics["per_epoch"] == history
    assert metrics["best"]["top1"] == max(r["top1"] for r in history)
    assert metrics["final"]["top1"] == history[-1]["top1"] and 0 <= history[-1]["top1"] <= 100
    assert history[-1]["top5"] is None and metrics["final"]["top5"] is None  # 3 classes: every label is in the top 5

    # the last checkpoint reloads alone (arch inside) and scores exactly what the run measured
    last = load_child(run / rundir.CHECKPOINT)
    assert metrics["params"] == count_params(last) == read_json(run / rundir.REPORT)["child"]["params"]
    assert last.head[-1].out_features == rfdata.num_classes(space.data)  # classifier fitted to the data
    val = rfdata.build_train_loaders(space.data, batch_size=16, seed=0, device=torch.device("cpu")).val
    scores = evaluate(last, val, torch.device("cpu"))
    assert round(scores["top1"], 3) == history[-1]["top1"] and round(scores["loss"], 5) == history[-1]["val_loss"]
    best_arch, _ = read_child(run / rundir.BEST)
    assert best_arch.choices() == result.arch.choices()

    _, _, weights = child_for_export(run)  # export defaults to the run's best checkpoint …
    assert weights == run / rundir.BEST
    assert child_for_export(run / "arch.json")[2] == run / rundir.BEST
    result.arch.save(tmp_path / "bare" / "arch.json")
    assert child_for_export(tmp_path / "bare")[2] is None  # … and to random init without one


def test_eval_every_skips_validation_between_and_trains_the_same(tmp_path: Path) -> None:
    space = tiny_space()
    arch = tiny_arch(space)
    every = run_retrain(space, arch, tmp_path / "every", show_progress=False)
    sparse_space = space.model_copy(deep=True)
    sparse_space.train.retrain.eval_every = 2
    sparse = run_retrain(sparse_space, arch, tmp_path / "sparse", show_progress=False)

    assert [r["top1"] is not None for r in sparse.history] == [False, True, True]  # epoch 2, and always the last
    assert sparse.history[0]["val_loss"] is None and sparse.history[0]["top5"] is None
    assert [r["train_loss"] for r in sparse.history] == [r["train_loss"] for r in every.history]  # validation draws nothing
    assert sparse.history[1:] == every.history[1:]
    assert sparse.best["epoch"] in (2, 3) and sparse.final == every.final
    assert read_json(sparse.run_dir / rundir.METRICS)["final"]["top1"] == every.final["top1"]


def test_resumed_retrain_continues_and_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    space = tiny_space()
    arch = tiny_arch(space)
    TinyNet.forwards = 0
    whole = run_retrain(space, arch, tmp_path / "whole", show_progress=False)
    steps_per_epoch = TinyNet.forwards // 3
    assert steps_per_epoch >= 2

    TinyNet.forwards, TinyNet.crash_after = 0, steps_per_epoch + 1  # dies during epoch 2
    try:
        with pytest.raises(PowerCut):
            run_retrain(space, arch, tmp_path / "cut", show_progress=False)
    finally:
        TinyNet.crash_after = None
    assert load_checkpoint(tmp_path / "cut" / rundir.CHECKPOINT)["epoch"] == 1

    TinyNet.forwards = 0
    resumed = run_retrain(rundir.load_run_config(tmp_path / "cut"), Arch.load(tmp_path / "cut"), resume=tmp_path / "cut", show_progress=False)
    assert TinyNet.forwards == 2 * steps_per_epoch  # epochs 2 and 3 only, not from zero
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut" / rundir.HISTORY)] == [1, 2, 3]
    assert resumed.history == whole.history and resumed.best == whole.best

    end_whole = load_checkpoint(whole.run_dir / rundir.CHECKPOINT)
    end_resumed = load_checkpoint(resumed.run_dir / rundir.CHECKPOINT)
    assert end_whole["model"].keys() == end_resumed["model"].keys()
    for key, tensor in end_whole["model"].items():
        assert torch.equal(tensor, end_resumed["model"][key]), key


def test_cli_retrain_reads_the_search_run_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    space = tiny_space()
    search_run = tmp_path / "search"
    rundir.save_config(search_run, space)  # what a search run directory holds
    tiny_arch(space).save(search_run / "arch.json")

    out = tmp_path / "retrain"
    code = exit_code(monkeypatch, "retrain", str(search_run), "--epochs", "1", "--set", "train.retrain.batch_size=32", "--out", str(out), "--quiet")
    assert code == 0
    saved = rundir.load_run_config(out)
    assert saved.train.retrain.epochs == 1 and saved.train.retrain.batch_size == 32
    assert read_json(out / rundir.METRICS)["epochs"] == 1

    capsys.readouterr()
    assert exit_code(monkeypatch, "report", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out) == read_json(out / rundir.REPORT)

    bare = tmp_path / "elsewhere" / "arch.json"
    Arch.load(search_run).save(bare)
    assert exit_code(monkeypatch, "retrain", str(bare)) == 2
    assert "--space" in capsys.readouterr().err
    assert exit_code(monkeypatch, "export", str(bare), "--format", "tflite") == 2
    assert "unknown export format" in capsys.readouterr().err

