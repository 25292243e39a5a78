"""Long recordings with known boundaries, made by joining utterances with pauses between them.

What forced alignment, timestamp training and timestamp evaluation are measured on: each utterance's speech
(its file trimmed to where its samples rise above 2% of its peak) is placed after a seeded pause, and its
start and end in the joined recording are known exactly. :func:`join_utterances` writes one recording;
:func:`join_into_pieces` writes training pieces of several utterances each, up to a length, with the
utterances as their segments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.data.manifest import Utterance, write_manifest
from asrtune.data.rows import Span
from asrtune.errors import AsrtuneError

__all__ = ["speech_bounds", "join_utterances", "join_into_pieces"]

_LEVEL = 0.02  # share of an utterance's peak above which a sample is speech


def speech_bounds(samples: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample above 2% of the peak (the whole clip when it is silent)."""
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    loud = np.flatnonzero(np.abs(samples) > _LEVEL * peak) if peak > 0 else np.zeros(0, dtype=int)
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(samples))


def _joined(utterances: Sequence[Utterance], rng: random.Random, gaps: tuple[float, float],
            lead: float) -> tuple[np.ndarray, list[Span]]:
    parts = [np.zeros(int(lead * SAMPLE_RATE), dtype=np.float32)]
    cursor = len(parts[0])
    spans = []
    for index, utterance in enumerate(utterances):
        samples = load_audio(utterance.audio)
        first, last = speech_bounds(samples)
        speech = samples[first:last]
        spans.append(Span(text=utterance.text, start=cursor / SAMPLE_RATE, end=(cursor + len(speech)) / SAMPLE_RATE))
        pause = np.zeros(int(rng.uniform(*gaps) * SAMPLE_RATE) if index + 1 < len(utterances) else
                         int(lead * SAMPLE_RATE), dtype=np.float32)
        parts += [speech.astype(np.float32), pause]
        cursor += len(speech) + len(pause)
    return np.concatenate(parts), spans


def join_utterances(utterances: Sequence[Utterance], out: str | Path, *, seed: int = 0,
                    gaps: tuple[float, float] = (0.3, 1.2), lead: float = 0.5) -> list[Span]:
    """Write ``utterances`` joined into one 16 kHz WAV at ``out``; returns each one's span in it (seconds).

    Raises:
        AsrtuneError: no utterances.
    """
    if not utterances:
        raise AsrtuneError("nothing to join: no utterances")
    samples, spans = _joined(utterances, random.Random(seed), gaps, lead)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), samples, SAMPLE_RATE, subtype="PCM_16")
    return spans


def join_into_pieces(utterances: Sequence[Utterance], out_dir: str | Path, *, max_seconds: float = 28.0,
                     seed: int = 0, gaps: tuple[float, float] = (0.3, 1.0), lead: float = 0.2,
                     prefix: str = "piece") -> Path:
    """Training pieces of consecutive utterances of one voice, each at most ``max_seconds``, written under
    ``out_dir/audio/`` with ``out_dir/manifest.jsonl``; each piece's utterances are its ``segments``.

    Returns:
        The manifest path.
    """
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    by_voice: dict[str | None, list[Utterance]] = {}
    for utterance in utterances:
        by_voice.setdefault(utterance.voice, []).append(utterance)
    groups: list[list[Utterance]] = []
    for members in by_voice.values():
        current, seconds = [], 2 * lead
        for utterance in members:
            length = (utterance.duration or sf.info(utterance.audio).duration) + gaps[1]
            if current and seconds + length > max_seconds:
                groups.append(current)
                current, seconds = [], 2 * lead
            current.append(utterance)
            seconds += length
        if current:
            groups.append(current)
    rows = []
    for index, group in enumerate(groups):
        path = out_dir / "audio" / f"{prefix}-{index:05d}.wav"
        spans = join_utterances(group, path, seed=rng.randrange(1 << 30), gaps=gaps, lead=lead)
        duration = sf.info(str(path)).duration
        if duration > 30.0:
            raise AsrtuneError(f"{path}: {duration:.1f} s is over Whisper's 30 s window; lower max_seconds")
        rows.append(Utterance(id=f"{prefix}-{index:05d}", audio=str(path.resolve()), text=" ".join(u.text for u in group),
                              language=group[0].language, duration=duration, voice=group[0].voice,
                              segments=tuple(spans)))
    manifest = out_dir / "manifest.jsonl"
    write_manifest(rows, manifest)
    return manifest
