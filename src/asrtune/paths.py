"""Where asrtune keeps what it can rebuild (converted models, feature caches)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache root: ``$ASRTUNE_CACHE`` if set, else the platform's user cache dir."""
    root = os.environ.get("ASRTUNE_CACHE") or platformdirs.user_cache_dir("asrtune")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
