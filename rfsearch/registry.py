"""One mechanism for named extension points (ops, strategies): built-ins register by name, users
name theirs by import path (``pkg.module:attr``) with no change here, and both list by pattern."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rfsearch.imports import import_object, is_import_path

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name. ``from_import`` turns what an import path names into an
    entry (raising ValueError when it does not fit); duplicates are refused."""

    def __init__(self, kind: str, from_import: Callable[[str, Any], T]) -> None:
        self.kind = kind
        self._from_import = from_import
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """A registered entry, or a user's by import path; an unknown name lists the known ones."""
        if name in self._entries:
            return self._entries[name]
        if is_import_path(name):
            return self._from_import(name, import_object(name))
        raise ValueError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._entries))}, or an import path 'pkg.module:attr'")

    def entries(self, pattern: str = "*") -> dict[str, T]:
        """The registered entries whose name matches the shell-style ``pattern``, by name."""
        return {name: self._entries[name] for name in sorted(self._entries) if fnmatch.fnmatchcase(name, pattern)}
