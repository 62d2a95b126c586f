"""Export a child to a file that runs without rfsearch (ONNX or TorchScript), and prove it does.

ONNX goes through the TorchScript-based exporter (``dynamo=False``): it exists on every torch
from 2.4 on, needs no onnxscript and handles these CNNs; the written file is then run in
onnxruntime, so whichever exporter torch provides, a wrong file cannot pass unnoticed.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch import Tensor, nn

from rfsearch.arch import Arch
from rfsearch.discretize import build_child, read_child
from rfsearch.errors import RfsearchError
from rfsearch.train.rundir import BEST

SUFFIX: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # the formats, and their file endings
TOLERANCE = 1e-4


class ExportMismatch(RfsearchError):
    """The written file computes something else than the PyTorch model."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float


def check_format(fmt: str) -> str:
    if fmt not in SUFFIX:
        raise RfsearchError(f"unknown export format '{fmt}': use {' or '.join(SUFFIX)}")
    return fmt


def default_path(directory: str | Path, fmt: str) -> Path:
    """``child.onnx`` / ``child.torchscript.pt`` in ``directory``."""
    return Path(directory) / f"child{SUFFIX[check_format(fmt)]}"


def export_child(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    *,
    input_size: int,
    in_channels: int = 3,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Write ``model`` (eval mode, CPU, any batch size) to ``path``, then run the file on a random
    batch of another size and compare with PyTorch; ExportMismatch when they differ by > tolerance."""
    check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, in_channels, input_size, input_size, generator=generator)
    with warnings.catch_warnings():  # both formats are deprecated upstream; that is not the user's problem
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        if fmt == "onnx":
            _write_onnx(model, example, path)
        else:
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
    check = torch.randn(2, in_channels, input_size, input_size, generator=generator)
    return ExportResult(path, fmt, verify_export(path, fmt, model, check, tolerance))


def _write_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
    options: dict[str, object] = {
        "input_names": ["input"],
        "output_names": ["logits"],
        "dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}},
        "opset_version": 17,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5; the default turned True in 2.9
        options["dynamo"] = False
    try:
        torch.onnx.export(model, (example,), str(path), **options)
    except ImportError as err:
        raise RfsearchError(f"ONNX export needs the export extras: pip install 'rfsearch[export]' ({err})") from None


def child_for_export(source: str | Path, weights: str | Path | None = None) -> tuple[Arch, nn.Module, Path | None]:
    """The arch of ``source`` (a run directory or an arch file) and its child, with the weights of
    ``weights``, else of the run's ``best.pt``, else freshly initialised (the path returned is None)."""
    source = Path(source)
    arch = Arch.load(source)
    if weights is None:
        best = (source if source.is_dir() else source.parent) / BEST
        if not best.exists():
            return arch, build_child(arch).eval(), None
        weights = best
    saved, model = read_child(weights)
    if saved.choices() != arch.choices() or saved.backbone != arch.backbone:
        raise RfsearchError(f"{weights} holds the child of another architecture than {source}")
    return saved, model, Path(weights)


@torch.no_grad()
def run_exported(path: str | Path, fmt: str, x: Tensor) -> Tensor:
    """The exported file's output on ``x``, computed by onnxruntime or torch.jit (not by rfsearch)."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise RfsearchError("verifying an ONNX export needs onnxruntime: pip install 'rfsearch[export]'") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        return torch.from_numpy(np.asarray(out))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")(x)


@torch.no_grad()
def verify_export(path: str | Path, fmt: str, model: nn.Module, x: Tensor, tolerance: float = TOLERANCE) -> float:
    """Max |file(x) − model(x)| in eval mode; raises ExportMismatch above ``tolerance``."""
    was_training = model.training
    model.eval()
    try:
        expected = model(x)
    finally:
        model.train(was_training)
    got = run_exported(path, fmt, x)
    if got.shape != expected.shape:
        raise ExportMismatch(f"{path}: output shape {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch gives {tuple(expected.shape)}")
    diff = (got.float() - expected.float()).abs().max().item()
    if not diff <= tolerance:  # also catches NaN
        raise ExportMismatch(f"{path}: the exported {fmt} model differs from PyTorch by {diff:.3g} (max abs) > {tolerance:g}")
    return diff
