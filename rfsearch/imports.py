"""Resolve ``package.module:attr`` import paths: how users plug in backbones, ops and strategies."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def is_import_path(text: str) -> bool:
    return ":" in text and all(part.strip() for part in text.split(":", 1))


def import_object(path: str) -> Any:
    """Import ``module:attr`` (attr may be dotted). The working directory is importable, as with
    ``python -m``, so a user's ``mypkg`` next to their YAML works without installation."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"'{path}' is not an import path of the form 'package.module:attr'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ImportError, but also errors raised while the module executes
        raise ValueError(f"cannot import module '{module_name}' of '{path}': {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj
