"""Load a space from YAML with ``safe_load``; map every validation error back to file, key path and line.

Before anything is built from a file it is checked against limits that no real space comes near:
its size, its nesting depth and its node count with aliases expanded. A billion-laughs file is
refused from its event stream in milliseconds, instead of being walked alias by alias.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from rfsearch.errors import ConfigError, RfsearchWarning
from rfsearch.space.base import KeyedValueError, dotted
from rfsearch.space.schema import SpaceConfig

Loc = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # a space file is a few kilobytes
MAX_DEPTH = 32  # nested mappings and lists; the shipped spaces nest 5 deep
MAX_NODES = 100_000  # keys and values with aliases expanded; the shipped spaces hold a few hundred


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


def read_space(path: str | Path, overrides: Iterable[str] = ()) -> SpaceConfig:
    """Parse, override and validate a space file against the DSL. Every problem is a ConfigError
    (exit code 2). The strategy's options are the strategy's to check: ``rfsearch.load_space``
    reads a file and checks them."""
    path = Path(path)
    source = SourceMap(str(path))
    data, source.lines = parse_yaml(_read_text(path), str(path))
    if not isinstance(data, dict):
        raise ConfigError("a space file must be a mapping of sections (backbone, insert, …)", file=str(path), line=1)
    for item in overrides:
        data = apply_override(data, item, source)
    moved = move_deprecated(data, source)
    space = validate(SpaceConfig, data, source)
    space._source = source
    space.strategy._moved = moved
    return space


DEPRECATED_SEARCH_KEYS = ("arch_optimizer", "arch_warmup_epochs")
"""Keys of ``train.search`` that were PMPL's own and now are its options under ``strategy``."""


def move_deprecated(data: dict[str, Any], source: SourceMap) -> frozenset[str]:
    """``train.search.arch_optimizer`` and ``arch_warmup_epochs`` of an older file move to
    ``strategy`` (a key written there too wins), with a one-line note; their lines move with them,
    so an error in one still points at its line. Returns the keys moved that ``strategy`` did not
    hold: a strategy without such an option ignores them, as the shared recipe did."""
    search = (data.get("train") or {}).get("search") if isinstance(data.get("train"), dict) else None
    if not isinstance(search, dict):
        return frozenset()
    moved = [key for key in DEPRECATED_SEARCH_KEYS if key in search]
    if moved and not isinstance(data.get("strategy"), dict):
        data["strategy"] = {}
    only_old = frozenset(key for key in moved if key not in data.get("strategy", {}))
    for key in moved:
        old, new = ("train", "search", key), ("strategy", key)
        at = source.error(old, "")
        where = ":".join(str(part) for part in (at.file, at.line) if part is not None)
        warnings.warn(RfsearchWarning(f"{where}: {dotted(old)} is deprecated: write it as {dotted(new)}"), stacklevel=3)
        value, written = search.pop(key), data["strategy"].get(key)
        data["strategy"][key] = {**value, **written} if isinstance(value, dict) and isinstance(written, dict) else value if written is None else written
        for table in (source.lines, source.overrides):
            for loc in [loc for loc in table if loc[:3] == old]:
                table.setdefault(new + loc[3:], table.pop(loc))
    return only_old


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"the file holds {path.stat().st_size:,} bytes, more than a space file's limit of {MAX_BYTES:,}", file=str(path))
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError("is a directory, not a space file", file=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read the space file: {err.strerror}", file=str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"not UTF-8 text: byte {raw[err.start]:#04x} at offset {err.start}", file=str(path), line=line) from None


def parse_yaml(text: str, file: str, *, numbered: bool = True) -> tuple[Any, dict[Loc, int]]:
    """``yaml.safe_load`` of ``text`` and the line of every key, after the limits are checked;
    a duplicate key is an error (YAML keeps the last silently). Problems name ``file`` and, if
    ``numbered`` (a file, not a ``--set`` value), the line."""
    try:
        _check_limits(text, file)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            lines = _key_lines(node, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        if isinstance(err, yaml.reader.ReaderError):  # a character YAML refuses: no mark, a position
            character = err.character if isinstance(err.character, str) else chr(err.character)
            line, problem = text.count("\n", 0, err.position) + 1, f"character {character!r} is not allowed"
        else:
            line = mark.line + 1 if mark else None
            problem = ", ".join(p for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p) or str(err).splitlines()[0]
        raise ConfigError(f"malformed YAML: {problem}", file=file, line=line if numbered else None) from None
    return data, lines


def _check_limits(text: str, file: str) -> None:
    """Depth and alias-expanded size from the parser's events (iterative: no recursion, no expansion)."""
    open_sizes: list[list[Any]] = []  # per open collection: its anchor and its expanded size so far
    anchored: dict[str, int] = {}
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            open_sizes.append([event.anchor, 1])
            if len(open_sizes) > MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=event.start_mark.line + 1)
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = open_sizes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, anchored.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            anchored[anchor] = size
        total = size
        if open_sizes:
            open_sizes[-1][1] += size
            total = open_sizes[-1][1]
        if total > MAX_NODES:
            raise ConfigError(f"expands to more than {MAX_NODES:,} keys and values (aliases repeat their anchor's content)", file=file, line=event.start_mark.line + 1)


def validate(model: type[BaseModel], data: Any, source: SourceMap) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, data, source, model) from None


def _first_error(err: ValidationError, data: Any, source: SourceMap, model: type[BaseModel]) -> ConfigError:
    first = err.errors()[0]
    keyed = first.get("ctx", {}).get("error")
    loc = keyed.loc if isinstance(keyed, KeyedValueError) else _data_path(first["loc"], data)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{loc[-1]}'" + _suggest(model, loc)
    elif first["type"] == "missing" and isinstance(first["loc"][-1], int):  # a list or tuple too short
        message = f"item {first['loc'][-1]} is missing"
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


def _key_lines(node: yaml.Node | None, file: str, loc: Loc = ()) -> dict[Loc, int]:
    if node is None:
        return {}
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            child = loc + (key.value,)
            line = key.start_mark.line + 1
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":  # a merge key may repeat
                if key.value in seen:
                    raise ConfigError(f"duplicate key '{key.value}' (first on line {seen[key.value]}); YAML would keep the last one", file=file, path=dotted(child), line=line)
                seen[key.value] = line
            lines.update(_key_lines(value, file, child))
            lines[child] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            lines.update(_key_lines(value, file, loc + (i,)))
    return lines


def apply_override(data: dict[str, Any], item: str, source: SourceMap) -> dict[str, Any]:
    """``train.search.epochs=3`` → data with that key set; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.path=value, got '{item}'", file="--set")
    value, _ = parse_yaml(raw, f"--set {item}", numbered=False)
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
