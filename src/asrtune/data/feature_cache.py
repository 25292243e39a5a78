"""On-disk log-mel feature cache: extract once per audio file and extractor setting, across runs.

The key is the SHA-256 of the audio file's bytes together with everything that shapes the features:
the extractor's settings (mel bins, sampling rate, FFT size, hop, chunk length, padding value),
asrtune's :data:`FEATURE_VERSION` (bumped when decoding or resampling changes) and the soxr version
(the resampler). Change any of them and the old entries are simply never looked up again.
Entries are compressed ``.npz`` files (Whisper pads every input to 30 s, and the padding
compresses to almost nothing), written atomically so a crash never leaves half an entry.
An extractor with dither draws random noise, so its features are never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.errors import AsrtuneError
from asrtune.paths import cache_dir

__all__ = ["FEATURE_VERSION", "FeatureCache", "extractor_settings", "file_digest", "extract_features"]

FEATURE_VERSION = 1


def extractor_settings(extractor) -> dict:
    """What fixes a Whisper feature extractor's output for given audio."""
    return {
        "n_mels": int(extractor.feature_size),
        "sampling_rate": int(extractor.sampling_rate),
        "n_fft": int(extractor.n_fft),
        "hop_length": int(extractor.hop_length),
        "chunk_length": int(extractor.chunk_length),
        "n_samples": int(extractor.n_samples),
        "padding_value": float(extractor.padding_value),
        "dither": float(getattr(extractor, "dither", 0.0) or 0.0),
        "feature_version": FEATURE_VERSION,
        "soxr": soxr.__version__,
    }


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes.

    Raises:
        AsrtuneError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"audio file not found: {path}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureCache:
    """Features of one extractor setting under ``root`` (default: ``<asrtune cache>/features``)."""

    root: Path
    settings_digest: str

    @classmethod
    def for_extractor(cls, extractor, root: Path | None = None) -> FeatureCache | None:
        """The cache for this extractor; None when its features are random (dither) and cannot be cached."""
        settings = extractor_settings(extractor)
        if settings["dither"] != 0.0:
            return None
        blob = json.dumps(settings, sort_keys=True).encode()
        return cls(
            Path(root) if root is not None else cache_dir() / "features",
            hashlib.sha256(blob).hexdigest()[:16],
        )

    def path(self, audio_digest: str) -> Path:
        key = hashlib.sha256(f"{audio_digest}:{self.settings_digest}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.npz"

    def load(self, audio_digest: str) -> tuple[np.ndarray, int] | None:
        """(features (n_mels, frames), audio length in samples at 16 kHz), or None on a miss."""
        path = self.path(audio_digest)
        if not path.is_file():
            return None
        try:
            with np.load(path) as entry:
                return entry["features"], int(entry["n_samples"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None  # unreadable entry: recompute and overwrite it

    def store(self, audio_digest: str, features: np.ndarray, n_samples: int) -> None:
        """Write one entry atomically (a temporary file in the same folder, then a rename)."""
        path = self.path(audio_digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez_compressed(out, features=features, n_samples=np.int64(n_samples))
            os.replace(staging, path)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)


def extract_features(
    path: str | Path, extractor, cache: FeatureCache | None = None
) -> tuple[np.ndarray, int]:
    """Log-mel features of an audio file, from the cache when it holds them.

    Returns:
        (features, n_samples): features float32 (n_mels, frames); the audio's length at 16 kHz.
    """
    digest = file_digest(path) if cache is not None else None
    if digest is not None:
        hit = cache.load(digest)
        if hit is not None:
            return hit
    samples = load_audio(path)
    features = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    features = np.ascontiguousarray(features, dtype=np.float32)
    if digest is not None:
        cache.store(digest, features, len(samples))
    return features, len(samples)
