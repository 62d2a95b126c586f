"""The architecture file: self-contained, so a child can be rebuilt from it alone (no YAML, no supernet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, PrivateAttr, model_validator

from rfsearch.errors import ConfigError
from rfsearch.graph.points import InsertionPoint
from rfsearch.io import read_json, write_json
from rfsearch.ops.registry import Candidate, get_op
from rfsearch.space.base import StrictModel
from rfsearch.space.base import dotted
from rfsearch.space.loader import SourceMap, validate
from rfsearch.space.schema import BackboneConfig

ARCH_FORMAT = "rfsearch-arch/1"


class OpChoice(StrictModel):
    name: str
    op: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_op(self) -> OpChoice:
        """The op exists and takes these parameters (a kernel of 4 never reaches a child)."""
        get_op(self.op).validate(self.params)
        return self

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.op, dict(self.params))


class PointArch(StrictModel):
    """One insertion point: where, what shape, what was chosen, and how sure the search was."""

    index: int
    path: str
    channels: int
    height: int
    width: int
    candidates: list[str]
    choice: list[OpChoice] | None = Field(None, description="the op, or ops summed (top-2); None while undecided")
    post: list[str] = Field(default_factory=list)
    probs: dict[str, float] = Field(default_factory=dict, description="π at fixing (or now, if undecided); finite, as every float of a StrictModel")
    fixed_step: int | None = None

    @model_validator(mode="after")
    def _choice_is_a_candidate(self) -> PointArch:
        unknown = [c.name for c in self.choice or [] if c.name not in self.candidates]
        if unknown:
            raise ValueError(f"choice {unknown} is not among the point's candidates {self.candidates}")
        return self

    @property
    def choice_names(self) -> list[str]:
        return [c.name for c in self.choice or []]


class Arch(StrictModel):
    format: Literal["rfsearch-arch/1"] = ARCH_FORMAT
    space: str = ""
    strategy: str = ""
    backbone: BackboneConfig
    num_classes: int | None = Field(None, ge=1, description="classifier size used in the search (None: the backbone's default)")
    points: list[PointArch]
    _file: str | None = PrivateAttr(default=None)  # the file it was loaded from, named by its errors

    @property
    def complete(self) -> bool:
        return all(p.choice for p in self.points)

    def __eq__(self, other: object) -> bool:
        """The same choices, shapes and backbone; which file an arch was read from is not part of it."""
        return isinstance(other, Arch) and self.model_dump() == other.model_dump()

    @property
    def file(self) -> str | None:
        """The file this arch was loaded from (None: built in memory)."""
        return self._file

    def error_at(self, loc: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError at a key of this arch, naming its file when it was loaded from one."""
        return ConfigError(message, file=self._file, path=dotted(loc))

    def check_complete(self) -> Arch:
        """The arch, if every point has a choice (a child needs them all)."""
        for i, point in enumerate(self.points):
            if not point.choice:
                raise self.error_at(("points", i, "choice"), f"point '{point.path}' is undecided: the search has not fixed it yet (continue the search with --resume)")
        return self

    def choices(self) -> dict[str, list[str]]:
        return {p.path: p.choice_names for p in self.points}

    def same_network(self, other: Arch) -> bool:
        """Whether ``other`` builds the same child: the same backbone and the same op at every point
        (the check before weights of one are loaded into the other)."""
        return self.choices() == other.choices() and self.backbone == other.backbone

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | Path, *, complete: bool = False) -> Arch:
        """An arch file, or the ``arch.json`` inside a run directory. Every problem is one line naming
        the file and the key; ``complete`` also refuses undecided points (what a child needs)."""
        path = Path(path)
        if path.is_dir():
            path = path / "arch.json"
        data = read_json(path)
        if not isinstance(data, dict):
            raise ConfigError(f"not an rfsearch architecture file: it holds a JSON {type(data).__name__}, not an object", file=str(path))
        arch = validate(cls, data, SourceMap(str(path)))
        arch._file = str(path)
        return arch.check_complete() if complete else arch


def point_arch(point: InsertionPoint, choice: list[str] | None, probs: dict[str, float] | None = None, fixed_step: int | None = None) -> PointArch:
    by_name = {c.name: c for c in point.candidates}
    return PointArch(
        index=point.index,
        path=point.path,
        channels=point.channels,
        height=point.height,
        width=point.width,
        candidates=point.candidate_names,
        choice=[OpChoice(**by_name[n].to_dict()) for n in choice] if choice else None,
        post=list(point.post),
        probs=probs or {},
        fixed_step=fixed_step,
    )


def arch_of(supernet: Any, *, backbone: BackboneConfig, num_classes: int | None, space: str = "", strategy: str = "") -> Arch:
    """Snapshot of a supernet: the choice of every fixed point, π of every point."""
    points = []
    for point in supernet.points:
        mixed = supernet.mixed_ops[point.path]
        probs = mixed.fixed_probs if mixed.is_fixed else tuple(mixed.probs().tolist())
        points.append(point_arch(point, list(mixed.choice) if mixed.choice else None, dict(zip(mixed.names, probs)), mixed.fixed_step))
    return Arch(space=space, strategy=strategy, backbone=backbone, num_classes=num_classes, points=points)


def fixed_arch(
    points: list[InsertionPoint],
    choose: Callable[[InsertionPoint], list[str]],
    *,
    backbone: BackboneConfig,
    num_classes: int | None,
    space: str = "",
    strategy: str = "",
) -> Arch:
    """An arch chosen by a rule, without search: all ``global``, the smallest child, a fixed baseline."""
    return Arch(
        space=space,
        strategy=strategy,
        backbone=backbone,
        num_classes=num_classes,
        points=[point_arch(p, choose(p)) for p in points],
    )


def apply_arch(supernet: Any, arch: Arch) -> None:
    """Fix a supernet's points as an arch says (before loading a checkpoint's weights into it)."""
    for point in arch.points:
        if point.choice:
            mixed = supernet.mixed_ops[point.path]
            if not mixed.is_fixed:
                supernet.fix(point.path, *point.choice_names, step=point.fixed_step)
            mixed.fixed_probs = tuple(point.probs[n] for n in mixed.names)
