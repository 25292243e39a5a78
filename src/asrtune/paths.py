"""Where asrtune keeps what it can rebuild (converted models, feature caches), and how folders are written
whole or not at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import platformdirs

__all__ = ["cache_dir", "write_dir_atomically", "file_sha256"]


def cache_dir() -> Path:
    """The cache root: ``$ASRTUNE_CACHE`` if set, else the platform's user cache dir."""
    root = os.environ.get("ASRTUNE_CACHE") or platformdirs.user_cache_dir("asrtune")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh temporary folder with ``write`` and swap it in; a crash leaves the old one whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(staging)
        if target.exists():
            retired = target.with_name(f".{target.name}-old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
