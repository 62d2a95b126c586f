"""The ablation's rows as data (what each fixes, what it searches) and the spaces and archs they
run: adding a row is one ``Row`` in ``ROWS``, with no change elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rfsearch.arch import Arch, fixed_arch
from rfsearch.errors import RfsearchError
from rfsearch.ops.registry import Candidate, expand_candidates
from rfsearch.space.schema import SpaceConfig
from rfsearch.strategies import switched_to

THREE_ENHANCERS: tuple[Any, ...] = ("skip", {"avgpool": {"k": 3}}, "global")
"""Table 3's three enhancers: no, local (average pooling, k = 3), global."""


@dataclass(frozen=True)
class Row:
    """One row of the ablation, as data: which candidates every point gets and who chooses.

    ``candidates``: entries in the space's own candidate syntax (a candidate the space also has,
    by name, keeps the space's parameters); ``kinds``: the space's candidates of these ops; neither:
    the space's candidates. One candidate and no ``strategy`` is a fixed row (no search).
    ``plain``: no post layers either, so the row is the backbone itself. ``baseline``: the row the
    others are compared with, seed by seed. ``learns_pi``: its search learns π (plotted per point and highlighted).
    """

    name: str
    label: str
    candidates: tuple[Any, ...] | None = None
    kinds: tuple[str, ...] | None = None
    strategy: str | None = None
    plain: bool = False
    baseline: bool = False
    learns_pi: bool = False

    @property
    def searched(self) -> bool:
        return self.strategy is not None


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row("no", "No (skip everywhere: the backbone)", candidates=("skip",), plain=True, baseline=True),
        Row("local", "Local (avgpool3 everywhere)", candidates=({"avgpool": {"k": 3}},)),
        Row("global", "Global (spatial separable pooling everywhere)", candidates=("global",)),
        Row("random", "Random (skip / avgpool3 / global per point)", candidates=THREE_ENHANCERS, strategy="random"),
        Row("pmpl", "PMPL", strategy="pmpl", learns_pi=True),
        Row("pmpl3", "PMPL over skip / avgpool3 / global", candidates=THREE_ENHANCERS, strategy="pmpl", learns_pi=True),
        Row("random8", "random choice among the space's candidates", strategy="random"),
        Row("pmpl-local", "PMPL over the local candidates", kinds=("skip", "avgpool", "maxpool"), strategy="pmpl", learns_pi=True),
        Row("uniform", "uniform sampling", strategy="uniform"),
        Row("se", "SE (r = 16)", candidates=("se",)),
        Row("se-mnv3", "MobileNetV3's SE block", candidates=("se_mnv3",)),
        Row("cbam", "CBAM", candidates=("cbam",)),
        Row("coordatt", "CoordAttention", candidates=("coordatt",)),
    )
}
DEFAULT_ROWS: tuple[str, ...] = ("no", "local", "global", "random", "pmpl3", "pmpl")
(BASELINE,) = (r.name for r in ROWS.values() if r.baseline)


def parse_rows(text: str | Iterable[str]) -> list[str]:
    """``"no,random,pmpl"`` → the row names, checked, in the order given, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in items if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise RfsearchError(f"unknown ablation row(s) {unknown}; known: {', '.join(ROWS)}")
    if not names:
        raise RfsearchError(f"no ablation rows given; known: {', '.join(ROWS)}")
    return list(dict.fromkeys(names))


def _variant(space: SpaceConfig, edit: Callable[[dict[str, Any]], None]) -> SpaceConfig:
    """A re-validated copy of ``space`` after ``edit`` changed its plain-data form."""
    data = space.model_dump(mode="json")
    edit(data)
    return SpaceConfig.model_validate(data)


def seed_space(space: SpaceConfig, seed: int) -> SpaceConfig:
    """The space with ``train.seed = seed`` (search and retrain); the data's own seed is untouched."""
    return _variant(space, lambda d: d["train"].__setitem__("seed", seed))


def row_candidates(space: SpaceConfig, row: Row, own: list[Candidate]) -> list[Candidate]:
    """The candidates ``row`` puts where the space has ``own`` (the space's list or a rule's)."""
    if row.kinds is not None:
        kept = [c for c in own if c.op in row.kinds]
        if len(kept) < 2:
            raise RfsearchError(f"row '{row.name}' needs at least two candidates of {list(row.kinds)}; the space has {[c.name for c in own]}")
        return kept
    if row.candidates is None:
        return own
    known = {c.name: c for group in space.candidates for c in group} | {c.name: c for c in own}
    return [known.get(c.name, c) for entry in row.candidates for c in expand_candidates(entry)]


def search_space(space: SpaceConfig, row: Row) -> SpaceConfig:
    """The space a searched row runs: its strategy (keeping the options that strategy accepts) and
    the row's candidates at every point."""
    assert row.strategy is not None
    strategy = switched_to(space.strategy, row.strategy).model_dump(mode="json")

    def group(own: list[Candidate]) -> list[list[dict[str, Any]]]:
        return [[c.to_dict() for c in row_candidates(space, row, own)]]

    def edit(data: dict[str, Any]) -> None:
        data["strategy"] = strategy
        data["candidates"] = group([c for g in space.candidates for c in g])
        for rule, original in zip(data["insert"], space.insert):
            if original.candidates is not None:
                rule["candidates"] = group([c for g in original.candidates for c in g])

    return _variant(space, edit)


def fixed_row_arch(space: SpaceConfig, row: Row, num_classes: int | None) -> Arch:
    """The arch of a fixed row: its one candidate at every insertion point of ``space``."""
    from rfsearch.graph.backbone import build_space_backbone
    from rfsearch.graph.points import discover_points

    assert not row.searched
    backbone = build_space_backbone(space, num_classes)
    points = discover_points(backbone, space)
    fixed = []
    for p in points:
        (cand,) = row_candidates(space, row, list(p.candidates))
        fixed.append(dataclasses.replace(p, candidates=(cand,), post=() if row.plain else p.post))
    return fixed_arch(fixed, lambda p: [p.candidates[0].name], backbone=space.backbone, num_classes=num_classes, space=space.name, strategy=row.name)


