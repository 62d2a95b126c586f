"""Effective receptive fields (Luo et al., 2016) of a child and of its backbone on the same weights.

The ERF of a layer is the gradient of the centre unit of its output (summed over channels) with
respect to the input, absolute, averaged over real images and normalised to a mass of 1. Its size
is read as the radius, in input pixels around the unit's position, of the smallest centred square
window holding 50 % / 90 % of that mass. The backbone is the child with its enhancers removed
(:func:`rfsearch.graph.wrap.without_enhancers`), so the two differ only by what the search chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rfsearch import data as rfdata
from rfsearch.arch import Arch, PointArch, fixed_arch
from rfsearch.discretize import build_child, read_child
from rfsearch.errors import RfsearchError
from rfsearch.graph.wrap import without_enhancers
from rfsearch.io import read_json, write_json
from rfsearch.space.schema import SpaceConfig
from rfsearch.train import rundir

ERF_FORMAT = "rfsearch-erf/1"
ERF_JSON = "erf.json"
ERF_PNG = "erf.png"
FRACTIONS = (0.5, 0.9)
NETWORKS = ("child", "backbone")


@dataclass(frozen=True)
class ErfMap:
    """The ERF of one layer's centre unit: a (H, W) map over the input that sums to 1 (all zeros
    when no gradient reaches the input), and where that unit sits in input pixels."""

    path: str
    unit: tuple[int, int]
    centre: tuple[int, int]
    mass: Tensor

    def radius(self, fraction: float) -> int | None:
        """Half the side of the smallest square around ``centre`` holding ``fraction`` of the mass
        (0: the centre pixel alone); None when the map is empty."""
        return mass_radius(self.mass, self.centre, fraction)

    def radii(self) -> dict[str, int | None]:
        return {f"r{round(100 * f)}": self.radius(f) for f in FRACTIONS}


def mass_radius(mass: Tensor, centre: tuple[int, int], fraction: float) -> int | None:
    """The smallest Chebyshev radius r such that the pixels within r of ``centre`` hold at least
    ``fraction`` of ``mass`` (a map summing to 1); None for an all-zero map."""
    total = float(mass.sum())
    if total <= 0:
        return None
    rows = torch.arange(mass.shape[0]).view(-1, 1) - centre[0]
    cols = torch.arange(mass.shape[1]).view(1, -1) - centre[1]
    distance = torch.maximum(rows.abs(), cols.abs()).flatten()
    per_ring = torch.zeros(int(distance.max()) + 1, dtype=torch.float64).index_add_(0, distance, mass.flatten().double())
    held = torch.cumsum(per_ring, 0) / total
    return int(torch.searchsorted(held, torch.tensor([fraction - 1e-9], dtype=torch.float64)).clamp(max=len(held) - 1))


def effective_receptive_field(model: nn.Module, images: Tensor, paths: Sequence[str]) -> dict[str, ErfMap]:
    """The ERF of the output of each module in ``paths`` of ``model`` (eval mode, so every image is
    its own sample), from one forward and one gradient per path, averaged over ``images``.

    The centre unit of an (h, w) output is (h // 2, w // 2); it sits at input pixel (S·i, S·j) for
    a network downsampling by S with "same" padding (torchvision's convs and pools)."""
    outputs: dict[str, Tensor] = {}
    hooks = [model.get_submodule(p).register_forward_hook(_keep(outputs, p)) for p in paths]
    was_training = model.training
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            model(x)
            maps = {}
            for i, path in enumerate(paths):
                out = outputs[path]
                if out.dim() != 4:
                    raise RfsearchError(f"the ERF needs a feature map at {path}; its output has shape {tuple(out.shape)}")
                unit = (out.shape[-2] // 2, out.shape[-1] // 2)
                (grad,) = torch.autograd.grad(out[:, :, unit[0], unit[1]].sum(), x, retain_graph=i + 1 < len(paths))
                mass = grad.abs().sum(1).mean(0).double()
                mass = mass / mass.sum() if mass.sum() > 0 else mass
                stride = (round(x.shape[-2] / out.shape[-2]), round(x.shape[-1] / out.shape[-1]))
                maps[path] = ErfMap(path, unit, (unit[0] * stride[0], unit[1] * stride[1]), mass)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return maps


def _keep(outputs: dict[str, Tensor], path: str) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        outputs[path] = output

    return hook


def stage_points(arch: Arch) -> list[PointArch]:
    """The last insertion point of every distinct output resolution: one ERF per stage."""
    last: dict[tuple[int, int], PointArch] = {}
    for point in arch.points:
        last[(point.height, point.width)] = point
    return sorted(last.values(), key=lambda p: p.index)


@dataclass
class ErfStudy:
    """ERFs of a child and of its backbone at some points, under one or more sets of weights
    (``init``, ``trained``): ``maps[weights][network][path]``."""

    arch: Arch
    points: list[PointArch]
    images: int
    maps: dict[str, dict[str, dict[str, ErfMap]]] = field(default_factory=dict)
    weights_from: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What ``erf.json`` holds: per point, the radii of both networks under every set of weights."""
        return {
            "format": ERF_FORMAT,
            "space": self.arch.space,
            "strategy": self.arch.strategy,
            "backbone_name": self.arch.backbone.name,
            "input_size": self.arch.backbone.input_size,
            "images": self.images,
            "weights": self.weights_from,
            "points": [
                {
                    "index": p.index,
                    "path": p.path,
                    "height": p.height,
                    "width": p.width,
                    "choice": p.choice_names,
                    "centre": list(self.maps[next(iter(self.maps))]["child"][p.path].centre),
                    **{w: {n: by_net[n][p.path].radii() for n in NETWORKS} for w, by_net in self.maps.items()},
                }
                for p in self.points
            ],
        }


def study_erf(arch: Arch, children: dict[str, nn.Module], images: Tensor, paths: Sequence[str] | None = None) -> ErfStudy:
    """The ERF of each child in ``children`` (label → child of ``arch``) and of its backbone on the
    same weights, at ``paths`` (default: :func:`stage_points`)."""
    by_path = {p.path: p for p in arch.points}
    unknown = [p for p in paths or [] if p not in by_path]
    if unknown:
        raise RfsearchError(f"no insertion point {unknown[0]!r} in the arch; its points: {', '.join(by_path)}")
    points = [by_path[p] for p in paths] if paths else stage_points(arch)
    study = ErfStudy(arch, points, len(images))
    for label, child in children.items():
        chosen = [p.path for p in points]
        study.maps[label] = {
            "child": effective_receptive_field(child, images, chosen),
            "backbone": effective_receptive_field(without_enhancers(child), images, chosen),
        }
    return study


def sample_images(space: SpaceConfig, count: int) -> Tensor:
    """The first ``count`` images of the space's validation split, as the loaders serve them."""
    loader = rfdata.build_train_loaders(space.data, batch_size=1, seed=space.train.seed, eval_batch_size=count).val
    images, _ = next(iter(loader))
    return images[:count]


def uniform_arch(space: SpaceConfig, op: str) -> Arch:
    """The child of ``space`` with candidate ``op`` at every insertion point (no search)."""
    from rfsearch.train.setup import class_count
    from rfsearch.supernet import build_supernet

    num_classes = class_count(space.backbone, space.data)
    points = build_supernet(space, num_classes).points
    missing = [p.path for p in points if op not in p.candidate_names]
    if missing:
        names = sorted({n for p in points for n in p.candidate_names})
        raise RfsearchError(f"op {op!r} is not a candidate at {missing[0]}{f' and {len(missing) - 1} more points' if len(missing) > 1 else ''}; candidates: {', '.join(names)}")
    return fixed_arch(points, lambda p: [op], backbone=space.backbone, num_classes=num_classes, space=space.name, strategy=f"every point {op}")


@dataclass
class ErfResult:
    study: ErfStudy
    json_path: Path
    png_path: Path | None  # None without matplotlib


def run_erf(
    arch: Arch,
    space: SpaceConfig,
    out_dir: str | Path,
    *,
    trained: str | Path | None = None,
    paths: Sequence[str] | None = None,
    images: int = 32,
) -> ErfResult:
    """ERFs of ``arch``'s child at initialisation (seeded by ``train.seed``: the retrain's own start)
    and, given a child checkpoint ``trained``, with its weights; writes erf.json (and erf.png with
    matplotlib) into ``out_dir``."""
    from rfsearch import plots
    from rfsearch.train.engine import seed_everything

    if images < 1:
        raise RfsearchError(f"the ERF needs at least one image, got images={images}")
    seed_everything(space.train.seed)
    children: dict[str, nn.Module] = {"init": build_child(arch)}
    weights_from = {"init": f"build_child with train.seed={space.train.seed}"}
    if trained is not None:
        saved, children["trained"] = read_child(trained)
        if not saved.same_network(arch):
            raise RfsearchError(f"{trained} holds the child of another architecture than the run's arch.json")
        weights_from["trained"] = str(trained)
    study = study_erf(arch, children, sample_images(space, images), paths)
    study.weights_from = weights_from
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / ERF_JSON, study.to_json())
    png_path = plots.plot_erf(study, out_dir / ERF_PNG) if plots.available() else None
    return ErfResult(study, json_path, png_path)


def trained_child(run_dir: Path) -> Path | None:
    """A retrain run's best child checkpoint, if the run has one."""
    best = run_dir / rundir.BEST
    return best if best.exists() else None


DEFAULT_OP = "avgpool3"  # a space file's child without search: the paper's "Local" row (DESIGN §7)


@dataclass
class ErfSource:
    """What ``rfsearch erf`` measures: the arch, the space (data, seed), trained weights if any, and
    where the results go unless told otherwise (None: a new run directory)."""

    arch: Arch
    space: SpaceConfig
    trained: Path | None
    out_dir: Path | None


def resolve_source(source: str | Path, op: str | None = None, overrides: Sequence[str] = ()) -> ErfSource:
    """A run directory or an arch file (its config.yaml gives the data; a retrain run's best.pt the
    trained weights), or a space file (``op`` at every point, default avgpool3: no search, no weights)."""
    from rfsearch.loading import load_space

    source = Path(source)
    if source.is_dir() or source.suffix == ".json":
        if op is not None:
            raise RfsearchError(f"an op chooses the child of a space file (--op); {source} already holds an arch")
        run_dir = source if source.is_dir() else source.parent
        arch = Arch.load(source, complete=True)
        return ErfSource(arch, rundir.load_run_config(run_dir, overrides), trained_child(run_dir), run_dir)
    space = load_space(source, overrides)
    return ErfSource(uniform_arch(space, op or DEFAULT_OP), space, None, None)


def read_erf(source: str | Path, arch: Arch) -> dict[str, Any] | None:
    """The erf.json beside ``source`` (a run directory or an arch file) when it measured this arch."""
    source = Path(source)
    path = (source if source.is_dir() else source.parent) / ERF_JSON
    if not path.exists():
        return None
    facts = read_json(path)
    choices = arch.choices()
    if facts.get("format") != ERF_FORMAT or any(choices.get(p["path"]) != p["choice"] for p in facts.get("points", [])):
        return None
    return facts
