"""The search-space DSL: one pydantic model per YAML section, validated before any compute.

A space says which backbone, where enhancers go (``insert`` rules), which candidates each point
mixes, and how to search and retrain. Unknown keys are errors everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rfsearch.errors import ConfigError
from rfsearch.imports import import_object, is_import_path
from rfsearch.ops.registry import Candidate, expand_candidates
from rfsearch.space.base import KeyedValueError, StrictModel, dotted
from rfsearch.space.data_config import DataConfig


def _expand_group(entry: Any) -> list[Candidate]:
    if isinstance(entry, list):  # the serialised form of an expanded entry
        return [c for item in entry for c in _expand_group(item)]
    if isinstance(entry, Candidate):
        return [entry]
    return expand_candidates(entry)


CandidateGroup = Annotated[
    list[Candidate],
    BeforeValidator(_expand_group),
    PlainSerializer(lambda group: [c.to_dict() for c in group], return_type=list),
]
"""One YAML candidate entry (``avgpool: {k: [3, 5, 7]}``) and the candidates it expands to."""

PostLayer = Literal["batchnorm", "hardswish", "relu", "relu6"]

PAPER_CANDIDATES: list[Any] = ["skip", {"avgpool": {"k": [3, 5, 7]}}, {"maxpool": {"k": [3, 5, 7]}}, "global"]


def flatten(groups: list[list[Candidate]]) -> list[Candidate]:
    """The candidates of a list of entries, in order, names checked unique."""
    flat = [c for group in groups for c in group]
    names = [c.name for c in flat]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate candidate names {duplicates}: give one of them an explicit 'name'")
    return flat


class BackboneConfig(StrictModel):
    """The network to enhance: a torchvision model by name or any callable by import path."""

    name: str = Field(description="torchvision model name (mobilenet_v2, …) or 'package.module:callable'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the constructor")
    input_size: int = Field(224, ge=8, description="square input resolution used to trace shapes and count MACs")
    in_channels: int = Field(3, ge=1)
    max_downsample: int | None = Field(
        None,
        ge=1,
        description="turn the earliest stride-2 stages into stride 1 until the total downsampling is at most "
        "this (small inputs such as 32-64 px keep a usable final feature map)",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if is_import_path(name):
            if not callable(import_object(name)):
                raise ValueError(f"'{name}' is not callable")
            return name
        from torchvision.models import list_models

        known = list_models()
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown backbone '{name}': not a torchvision model nor an import path 'pkg.module:callable'{hint}")
        return name


class InsertRule(StrictModel):
    """Select modules and put an enhancer after each one's output.

    A module is selected when it matches any ``modules`` glob (dotted path; ``*`` is one path
    segment, ``**`` any number) and, if given, any ``types`` name; ``index`` then keeps a
    slice of the matches in execution order. Later rules override earlier ones point by point.
    """

    name: str | None = None
    modules: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)
    index: int | str | list[int] | None = Field(None, description="'1:', '0:8:2', 3, or [0, 2, 5] over the matches")
    candidates: list[CandidateGroup] | None = Field(None, min_length=1, description="default: the space's candidates")
    post: list[PostLayer] | None = Field(None, description="layers after the mix; default: the space's post")

    @field_validator("modules", "types", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("index")
    @classmethod
    def _slice(cls, index: int | str | list[int] | None) -> int | str | list[int] | None:
        if isinstance(index, str):
            parts = index.split(":")
            if len(parts) > 3 or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
                raise ValueError(f"index '{index}' is not a slice such as '1:', ':8', '0:16:2'")
        return index

    @field_validator("candidates")
    @classmethod
    def _unique(cls, groups: list[list[Candidate]] | None) -> list[list[Candidate]] | None:
        if groups is not None:
            flatten(groups)
        return groups

    @model_validator(mode="after")
    def _selects_something(self) -> InsertRule:
        if not self.modules and not self.types:
            raise ValueError("a rule needs 'modules' (path globs) or 'types' (class names)")
        return self


class StrategyConfig(BaseModel):
    """``name`` picks the strategy; the other keys are that strategy's options. They are checked
    against the strategy's own ``Options`` by ``rfsearch.strategies.resolve_strategy`` (which
    ``rfsearch.load_space`` runs): the DSL knows no strategy."""

    model_config = ConfigDict(extra="allow")
    name: str = "pmpl"
    _moved: frozenset[str] = PrivateAttr(default=frozenset())  # options moved here from an older layout

    @property
    def options(self) -> dict[str, Any]:
        """The options as written (not validated)."""
        return dict(self.model_extra or {})


class WeightOptimizer(StrictModel):
    """SGD for the network weights (the paper's values)."""

    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0)
    nesterov: bool = False


class SearchRecipe(StrictModel):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (default: one pass over the weight split)")
    optimizer: WeightOptimizer = WeightOptimizer()
    grad_clip: float | None = Field(None, gt=0)
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up before the cosine decay")


class RetrainRecipe(StrictModel):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    optimizer: WeightOptimizer = WeightOptimizer()
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    warmup_epochs: int = Field(0, ge=0, description="linear learning-rate warm-up before the cosine decay")
    eval_every: int = Field(1, ge=1, description="validate every N epochs and after the last (a full test split can cost as much as an epoch)")


class TrainConfig(StrictModel):
    search: SearchRecipe = SearchRecipe()
    retrain: RetrainRecipe = RetrainRecipe()
    device: str = Field("auto", description="auto (cuda if present, else cpu), cpu, cuda, cuda:1, …")
    amp: bool = Field(True, description="bfloat16/float16 autocast on CUDA; ignored on CPU")
    channels_last: bool = Field(True, description="NHWC memory format for models and batches, on CUDA and CPU alike (measured faster on CPU: docs/performance.md)")
    pad_first: bool = Field(
        True,
        description="on CPU, grouped convolutions pad their input themselves on maps where every window overlaps the padding "
        "(oneDNN's weight gradient there is 4-23x slower; the gradients' last bits move): false repeats runs from before 2026-12-05",
    )
    keep_freed_memory: bool = Field(
        True,
        description="on Linux with glibc, freed host memory stays with the process for the next tensors instead of going back "
        "to the kernel (no page faults on reuse: the 224 px batch-32 eval forward 2.6x faster on CPU in python -m benchmarks --only child; training steps did not gain there; 4-16 % more resident memory); "
        "glibc's MALLOC_* variables or GLIBC_TUNABLES, when set, stand instead",
    )
    seed: int = 0
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    sync_bn: bool = Field(False, description="SyncBatchNorm under torchrun")


class SpaceConfig(StrictModel):
    """A whole search-space file."""

    name: str = "space"
    description: str = ""
    backbone: BackboneConfig
    candidates: list[CandidateGroup] = Field(
        default_factory=lambda: [_expand_group(e) for e in PAPER_CANDIDATES],
        min_length=1,
        description="default candidates of every rule",
    )
    post: list[PostLayer] = Field(default_factory=list, description="default post-mix layers (the authors': [batchnorm, hardswish])")
    insert: list[InsertRule] = Field(min_length=1)
    strategy: StrategyConfig = StrategyConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    _source: Any = PrivateAttr(default=None)  # the loader's SourceMap: file and line of every key

    @model_validator(mode="after")
    def _data_follows_the_model(self) -> SpaceConfig:
        """The data is served at the resolution (and, for grey images, the channels) the backbone expects."""
        for field, source in (("resolution", "input_size"), ("channels", "in_channels")):
            if getattr(self.data, field) is None:
                try:
                    setattr(self.data, field, getattr(self.backbone, source))
                except ValidationError as err:  # the user wrote the backbone's key, not the data's
                    raise KeyedValueError(("backbone", source), f"data.{field} follows it: {err.errors()[0]['msg']}") from None
        return self

    def error_at(self, loc: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError at a key of this space, with file and line when it was loaded from YAML."""
        if self._source is not None:
            return self._source.error(loc, message)
        return ConfigError(message, path=dotted(loc))

    @field_validator("candidates")
    @classmethod
    def _unique(cls, groups: list[list[Candidate]]) -> list[list[Candidate]]:
        flatten(groups)
        return groups

    def rule_candidates(self, rule: InsertRule) -> list[Candidate]:
        return flatten(rule.candidates if rule.candidates is not None else self.candidates)

    def rule_post(self, rule: InsertRule) -> list[str]:
        return list(rule.post if rule.post is not None else self.post)
