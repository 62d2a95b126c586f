"""Load a space from YAML with ``safe_load``; map every validation error back to file, key path and line."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from rfsearch.errors import ConfigError
from rfsearch.space.schema import SpaceConfig

Loc = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Where each key of a loaded YAML file came from: a line, or a ``--set`` override."""

    file: str
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)

    def error(self, loc: Iterable[str | int], message: str) -> ConfigError:
        loc = tuple(loc)
        path = dotted(loc)
        for key, item in self.overrides.items():  # the override set this key, or created it
            if loc and (key[: len(loc)] == loc or loc[: len(key)] == key):
                return ConfigError(message, file=f"--set {item}", path=path)
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return ConfigError(message, file=self.file, path=path, line=self.lines[loc[:n]])
        return ConfigError(message, file=self.file, path=path)


def dotted(loc: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def load_space(path: str | Path, overrides: Iterable[str] = ()) -> SpaceConfig:
    """Parse, override and validate a space file. Every problem is a ConfigError (exit code 2)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read the space file: {err.strerror}", file=str(path)) from None
    source = SourceMap(str(path))
    try:
        data = yaml.safe_load(text)
        source.lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"malformed YAML: {problem}", file=str(path), line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("a space file must be a mapping of sections (backbone, insert, …)", file=str(path), line=1)
    for item in overrides:
        data = apply_override(data, item, source)
    space = validate(SpaceConfig, data, source)
    space._source = source
    space.strategy_options()
    return space


def validate(model: type[BaseModel], data: Any, source: SourceMap) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, data, source, model) from None


def _first_error(err: ValidationError, data: Any, source: SourceMap, model: type[BaseModel]) -> ConfigError:
    first = err.errors()[0]
    loc = _data_path(first["loc"], data)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{loc[-1]}'" + _suggest(model, loc)
    elif first["type"] == "missing":
        message = f"missing required key '{loc[-1]}'"
    more = len(err.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return source.error(loc, message)


def _data_path(loc: Loc, data: Any) -> Loc:
    """The error's location in the user's data: pydantic adds union-member and validator tags
    ('int', 'function-before[…]') that are not keys; keep only the steps that exist in the data."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict) and not any(isinstance(p, int) for p in loc[i:]):
            path.append(part)  # a missing or unknown key: name it
            break
        else:
            continue
        path.append(part)
    return tuple(path)


def _suggest(model: type[BaseModel], loc: Loc) -> str:
    """'did you mean …' from the fields of the model that owns the misspelt key."""
    owner: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or owner is None:
            continue
        info = getattr(owner, "model_fields", {}).get(part)
        owner = _model_of(info.annotation) if info else None
    fields = list(getattr(owner, "model_fields", {}) or {})
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
    return f"; did you mean '{close[0]}'?" if close else (f"; allowed: {', '.join(fields)}" if fields else "")


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _key_lines(node: yaml.Node | None, loc: Loc = ()) -> dict[Loc, int]:
    if node is None:
        return {}
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (key.value,)
            lines.update(_key_lines(value, child))
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines.update(_key_lines(value, loc + (i,)))
    return lines


def apply_override(data: dict[str, Any], item: str, source: SourceMap) -> dict[str, Any]:
    """``train.search.epochs=3`` → data with that key set; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got '{item}'", file="--set")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"value is not valid YAML: {err}", file=f"--set {item}") from None
    loc: Loc = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    node: Any = data
    for i, part in enumerate(loc[:-1]):
        nxt = loc[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(f"no list item {part} at '{dotted(loc[:i])}'", file=f"--set {item}")
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = [] if isinstance(nxt, int) else {}
        else:
            raise ConfigError(f"'{dotted(loc[:i])}' is a value, not a section", file=f"--set {item}")
        node = node[part]
    last = loc[-1]
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"cannot set '{key}'", file=f"--set {item}")
    source.overrides[loc] = item
    return data
