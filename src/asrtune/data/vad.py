"""Where speech is: WebRTC's voice activity detector (``webrtcvad``) over 16 kHz audio, frame by frame.

Forced alignment uses it to tell a word's sound from the pause that cross-attention timing gives to the word
before it (the DTW path is contiguous: a pause belongs to some word), and cutting uses it to prefer pauses.
"""

from __future__ import annotations

import numpy as np

from asrtune.data.audio import SAMPLE_RATE

__all__ = ["FRAME_SECONDS", "speech_frames", "pauses", "trim_to_speech"]

FRAME_SECONDS = 0.01  # webrtcvad takes 10, 20 or 30 ms frames; 10 ms resolves word edges
_MODE = 2  # webrtcvad aggressiveness, 0 (keeps most) .. 3 (drops most non-speech)


def speech_frames(samples: np.ndarray, mode: int = _MODE) -> np.ndarray:
    """One flag per 10 ms frame of 16 kHz mono ``samples`` (T,): True where the VAD hears speech.

    Returns:
        (ceil(T / 160),) booleans; a partial last frame is zero-padded.
    """
    import webrtcvad

    step = int(SAMPLE_RATE * FRAME_SECONDS)
    count = -(-len(samples) // step)
    pcm = np.zeros(count * step, dtype=np.int16)
    pcm[: len(samples)] = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    detector = webrtcvad.Vad(mode)
    raw = pcm.tobytes()
    width = 2 * step
    return np.fromiter((detector.is_speech(raw[i * width : (i + 1) * width], SAMPLE_RATE) for i in range(count)),
                       dtype=bool, count=count)


def pauses(speech: np.ndarray, min_pause: float = 0.1) -> np.ndarray:
    """The stretches of non-speech at least ``min_pause`` long, as (k, 2) [start, end) seconds, in order."""
    padded = np.concatenate([[True], speech.astype(bool), [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))  # alternating: speech stops, speech resumes
    runs = edges.reshape(-1, 2) * FRAME_SECONDS
    return runs[runs[:, 1] - runs[:, 0] >= min_pause - 1e-9]


def trim_to_speech(speech: np.ndarray, start: float, end: float, min_pause: float = 0.1) -> tuple[float, float]:
    """``[start, end]`` (seconds) with a leading or trailing stretch of non-speech of at least ``min_pause`` cut off.

    A span with no speech frame at all is returned as it is: the caller decides what that means.
    """
    first = max(0, int(np.floor(start / FRAME_SECONDS)))
    last = min(len(speech), int(np.ceil(end / FRAME_SECONDS)))
    inside = np.flatnonzero(speech[first:last])
    if not len(inside):
        return start, end
    onset = (first + inside[0]) * FRAME_SECONDS
    offset = (first + inside[-1] + 1) * FRAME_SECONDS
    new_start = onset if onset - start >= min_pause else start
    new_end = offset if end - offset >= min_pause else end
    return new_start, max(new_start, new_end)
