"""Where generated data is cached."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RFSEARCH_CACHE"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``override`` (the config's ``data.root``), else ``$RFSEARCH_CACHE``, else ``~/.cache/rfsearch``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rfsearch"
