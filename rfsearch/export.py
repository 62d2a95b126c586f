"""Export a child to a file that runs without rfsearch (ONNX or TorchScript), and prove it does.

ONNX goes through torch's current exporter (``torch.onnx.export(..., dynamo=True)``: torch.export
and onnxscript), with the deprecated TorchScript-based one (``dynamo=False``) as the fallback where
the current one fails (an older torch, no onnxscript, an op it cannot translate); the result says
which one wrote the file. The written file is then run in onnxruntime, so whichever exporter
wrote it, a wrong file cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch import Tensor, nn

from rfsearch.arch import Arch
from rfsearch.discretize import build_child, read_child
from rfsearch.errors import RfsearchError
from rfsearch.inference import fold_batchnorm
from rfsearch.io import atomic_write, writing
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
    fallback: str | None = None  # why the legacy ONNX exporter wrote the file (None: the current one did)


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
    """Write ``model`` (eval mode, CPU, any batch size, BN folded into its convolutions) to ``path``,
    then run the file on a random batch of another size and compare with the unfolded PyTorch
    model; ExportMismatch when they differ by > tolerance."""
    check_format(fmt)
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    folded = fold_batchnorm(model)  # what the file holds: BN folded into the convolutions
    generator = torch.Generator().manual_seed(0)
    # batch 2: torch.export specialises a dimension of size 1, so the batch would not stay dynamic
    example = torch.randn(2, in_channels, input_size, input_size, generator=generator)
    fallback = None
    with writing(path), warnings.catch_warnings():  # TorchScript and the legacy exporter are deprecated upstream; not the user's problem
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        if fmt == "onnx":
            fallback = _write_onnx(folded, example, path)
        else:
            traced = torch.jit.trace(folded, example, check_trace=False)
            atomic_write(path, lambda handle: torch.jit.save(traced, handle))
    check = torch.randn(3, in_channels, input_size, input_size, generator=generator)
    return ExportResult(path, fmt, verify_export(path, fmt, model, check, tolerance), fallback)


def _write_onnx(model: nn.Module, example: Tensor, path: Path) -> str | None:
    """The current exporter, else the legacy one; returns None, or why the current one failed.
    The current one's diagnostics (graph dumps on stderr, torch's log) are kept off the console."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            program.save(str(path), external_data=False)  # one self-contained file
        return None
    except Exception as err:  # its failures span torch.export, onnxscript and import errors: all mean "use the legacy one"
        reason = _one_line(err)
    finally:
        torch_log.setLevel(level)
    _write_legacy_onnx(model, example, path)
    return reason


def _one_line(err: BaseException) -> str:
    """The innermost cause of an exporter error, as one plain line (its messages carry colours)."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _write_legacy_onnx(model: nn.Module, example: Tensor, path: Path) -> None:
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
    arch = Arch.load(source, complete=True)
    if weights is None:
        best = (source if source.is_dir() else source.parent) / BEST
        if not best.exists():
            return arch, build_child(arch).eval(), None
        weights = best
    saved, model = read_child(weights)
    if saved.points != arch.points or saved.backbone != arch.backbone:  # every point: its path, shape and choice
        raise RfsearchError(f"{weights} holds the child of another architecture than {arch.file}")
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
