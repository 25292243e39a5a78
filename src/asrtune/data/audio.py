"""Audio decoding: soundfile (libsndfile: wav, flac, ogg, mp3), down-mixed, resampled with soxr."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asrtune.errors import AsrtuneError

__all__ = ["SAMPLE_RATE", "load_audio", "resample", "RawAudio", "read_raw", "to_mono"]

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


@dataclass(frozen=True, kw_only=True)
class RawAudio:
    """A stretch of a file as stored: every channel, the file's own rate.

    Attributes:
        samples: shape (frames, channels), float32 as libsndfile decodes it (NaN and inf kept).
        rate: the file's sample rate.
        file_frames: frames in the whole file (what libsndfile reports).
        start_frame: where ``samples`` begins in the file.
        subtype: libsndfile's sample format (``PCM_16``, ``FLOAT``, ...).
    """

    samples: np.ndarray
    rate: int
    file_frames: int
    start_frame: int = 0
    subtype: str = ""

    @property
    def file_seconds(self) -> float:
        return self.file_frames / self.rate

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.rate


def read_raw(path: str | Path, start: float | None = None, end: float | None = None) -> RawAudio:
    """Decode ``[start, end)`` seconds of a file (the whole file by default) without converting it.

    Reading stops at the end of the file: a stretch that runs past it comes back shorter, and
    ``file_frames`` tells by how much.

    Raises:
        AsrtuneError: the file is missing or libsndfile cannot decode it.
    """
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(str(path)) as handle:
            rate, total = handle.samplerate, handle.frames
            first = min(total, int(round((start or 0.0) * rate)))
            last = total if end is None else min(total, int(round(end * rate)))
            if first:
                handle.seek(first)
            samples = handle.read(max(0, last - first), dtype="float32", always_2d=True)
            subtype = handle.subtype
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise AsrtuneError(f"cannot decode audio {path}: {error}") from error
    return RawAudio(samples=samples, rate=rate, file_frames=total, start_frame=first, subtype=subtype)


def to_mono(samples: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(frames, channels) at ``rate`` -> (T,) mono float32 at ``target_rate``, as :func:`load_audio` does."""
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if mono.shape[0] == 0:
        return mono.astype(np.float32)
    return resample(mono, rate, target_rate)
