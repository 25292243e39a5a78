"""Audio decoding: soundfile (libsndfile: wav, flac, ogg, mp3), down-mixed, resampled with soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asrtune.errors import AsrtuneError

__all__ = ["SAMPLE_RATE", "load_audio", "resample"]

SAMPLE_RATE = 16_000


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 samples (soxr, high quality)."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a file to mono float32 at ``target_rate``.

    Returns:
        Samples, shape (T,), in [-1, 1].

    Raises:
        AsrtuneError: the file is missing or libsndfile cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"audio file not found: {path}")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AsrtuneError(f"cannot decode audio {path}: {error}") from error
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return resample(mono, rate, target_rate)
