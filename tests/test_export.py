"""ONNX export through torch's current exporter (dynamo), verified in onnxruntime, and the legacy
exporter taking over where the current one fails."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

from rfsearch import build_child, load_space
from rfsearch.arch import fixed_arch
from rfsearch.export import export_child
from rfsearch.supernet import build_supernet

from tests import tiny


def onnx_run(path: str, x: Tensor) -> Tensor:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(np.asarray(session.run(None, {"input": x.numpy()})[0]))


def opset(path: str) -> int:
    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))


def test_onnx_export_goes_through_the_dynamo_exporter_and_runs_in_onnxruntime(tmp_path) -> None:
    space = load_space("spaces/custom_backbone.yaml", [*tiny.TINY, "post=[batchnorm, hardswish]"])
    choices = [["maxpool3"], ["avgpool5"], ["global"], ["avgpool3", "maxpool3"]]  # a top-2 sum at the last point
    arch = fixed_arch(build_supernet(space, 3).points, lambda p: choices[p.index], backbone=space.backbone, num_classes=3)
    torch.manual_seed(0)
    child = build_child(arch).eval()
    result = export_child(child, tmp_path / "child.onnx", "onnx", input_size=16)
    assert result.fallback is None, result.fallback  # the current exporter wrote it
    assert result.max_abs_diff <= 1e-4
    assert opset(str(result.path)) >= 18  # the legacy path writes opset 17
    assert [p.name for p in tmp_path.iterdir()] == ["child.onnx"]  # weights inside the one file
    x = torch.randn(5, 3, 16, 16)  # a batch size the export never saw
    with torch.no_grad():
        torch.testing.assert_close(onnx_run(str(result.path), x), child(x), rtol=0, atol=1e-4)


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export cannot trace it, the TorchScript tracer records
    the branch taken (always the first for these inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.abs().sum() >= 0:
            return self.conv(x).mean((2, 3))
        return -self.conv(x).mean((2, 3))


def test_the_legacy_exporter_writes_what_the_current_one_cannot(tmp_path, capfd) -> None:
    torch.manual_seed(0)
    model = DataDependent().eval()
    result = export_child(model, tmp_path / "branchy.onnx", "onnx", input_size=8)
    assert result.fallback is not None and "\n" not in result.fallback and "\x1b" not in result.fallback
    assert result.max_abs_diff <= 1e-4 and opset(str(result.path)) == 17
    assert "def forward" not in capfd.readouterr().err  # torch.export's graph dump stays off the console
