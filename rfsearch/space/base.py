"""The strict base every config model derives from: unknown keys are errors, not silently ignored,
and so are numbers that are not finite (``lr: 1e999`` is YAML's infinity)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True, allow_inf_nan=False)


class KeyedValueError(ValueError):
    """A validator's error that belongs to another key than the one it validates: a value derived
    from a key the user wrote is wrong, and the error names the key written (the loader reads ``loc``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def dotted(loc: Iterable[str | int]) -> str:
    """A key path as the user writes it: ``insert[0].modules``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
