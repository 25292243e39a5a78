"""Long audio: cut rows into pieces Whisper can take (at most 30 s) where their timing is known.

Whisper's encoder sees 30 s; longer audio is truncated and its transcript then describes speech
the model never hears. A row is cut from its file when the corpus says where it lies (Kaldi
``segments``, NeMo ``offset``); a row longer than 30 s is split at word boundaries when it has word
timestamps; without either it cannot be split honestly and is dropped with the reason ``too_long``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asrtune.data.audio import RawAudio
from asrtune.data.rows import SourceRow, Word

__all__ = [
    "Piece",
    "Plan",
    "plan_pieces",
    "split_words",
    "timing_problem",
    "too_long_detail",
    "stretch_seconds",
    "TIMING_TOLERANCE",
]

TIMING_TOLERANCE = 0.05  # seconds a segment or word may run past the end of its file (rounding)


@dataclass(frozen=True, kw_only=True)
class Piece:
    """One utterance to keep or drop: the whole stretch of a row, or a part of it.

    Attributes:
        id: the row's id, or ``<row id>-<k>`` for the k-th piece of a split row.
        text: the row's transcript, or the piece's words joined by spaces.
        raw: the piece's samples as stored, shape (frames, channels), at ``rate``.
        rate: sample rate of ``raw``.
        start: start within the file, seconds.
        cut: True when the piece is not a whole file (it is written out as a file of its own).
    """

    id: str
    text: str
    raw: np.ndarray
    rate: int
    start: float
    cut: bool

    @property
    def seconds(self) -> float:
        return self.raw.shape[0] / self.rate


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What segmentation made of one row: pieces, and stretches it could not keep (with why)."""

    pieces: tuple[Piece, ...] = ()
    too_long: tuple[tuple[str, str, float], ...] = ()  # (id, detail, seconds)
    split: bool = False  # split at word boundaries


def stretch_seconds(row: SourceRow, file_seconds: float) -> float:
    """How long the row's stretch of its file is, given the file's length."""
    end = file_seconds if row.end is None else min(row.end, file_seconds)
    return max(0.0, end - (row.start or 0.0))


def too_long_detail(row: SourceRow, seconds: float, max_seconds: float) -> str:
    """The reason text for a row too long for Whisper and without timing to split it."""
    where = "segment" if row.is_segment else "file"
    return (
        f"{where} is {seconds:.1f} s > {max_seconds:g} s and the corpus gives no timing inside it "
        "to split it "
        "(Kaldi segments, NeMo offsets or word timestamps)"
    )


def timing_problem(row: SourceRow, file_seconds: float) -> str | None:
    """Why the row's segment or word times do not fit a file of ``file_seconds``, or None when they do."""
    limit = file_seconds + TIMING_TOLERANCE
    if row.start is not None and row.start >= file_seconds:
        return f"segment starts at {row.start:.2f} s, but the file is {file_seconds:.2f} s long"
    if row.end is not None and row.end > limit:
        return f"segment ends at {row.end:.2f} s, but the file is {file_seconds:.2f} s long"
    low = row.start or 0.0
    high = min(row.end if row.end is not None else file_seconds, file_seconds) + TIMING_TOLERANCE
    for word in row.words:
        if word.start < low - TIMING_TOLERANCE or word.end > high:
            return (
                f"word {word.text!r} at {word.start:.2f}-{word.end:.2f} s lies outside the utterance "
                f"({low:.2f}-{high - TIMING_TOLERANCE:.2f} s)"
            )
    if any(b.start < a.start for a, b in zip(row.words, row.words[1:])):
        return "word timestamps are not in order"
    return None


def split_words(words: tuple[Word, ...], max_seconds: float, pad: float = 0.1) -> list[tuple[Word, ...]]:
    """Group consecutive words greedily so each group spans at most ``max_seconds`` with ``pad`` either side.

    A single word longer than that forms a group of its own (and is then dropped as too long).
    """
    groups: list[list[Word]] = []
    for word in words:
        if groups and word.end - groups[-1][0].start + 2 * pad <= max_seconds:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [tuple(group) for group in groups]


def _slice(audio: RawAudio, start: float, end: float) -> np.ndarray:
    """Samples of ``[start, end)`` seconds of the file from a stretch read at ``audio.start_frame``."""
    first = max(0, int(round(start * audio.rate)) - audio.start_frame)
    last = max(first, int(round(end * audio.rate)) - audio.start_frame)
    return audio.samples[first:last]


def plan_pieces(row: SourceRow, audio: RawAudio, max_seconds: float) -> Plan:
    """The pieces of ``row`` (decoded as ``audio``, the row's stretch of its file).

    * at most ``max_seconds``: one piece, the whole stretch (``cut`` when it is not the whole file);
    * longer, with word timestamps: one piece per group of words (:func:`split_words`);
    * longer, without: nothing, and the stretch is reported as too long.
    """
    start = audio.start_frame / audio.rate
    whole_file = audio.start_frame == 0 and audio.samples.shape[0] == audio.file_frames
    if audio.seconds <= max_seconds:
        piece = Piece(
            id=row.id, text=row.text, raw=audio.samples, rate=audio.rate, start=start, cut=not whole_file
        )
        return Plan(pieces=(piece,))
    if not row.words:
        return Plan(too_long=((row.id, too_long_detail(row, audio.seconds, max_seconds), audio.seconds),))
    end = start + audio.seconds
    pad = 0.1
    pieces, too_long = [], []
    groups = split_words(row.words, max_seconds, pad)
    for k, group in enumerate(groups):
        piece_id = f"{row.id}-{k:03d}"
        # Pad into the silence around the words, never into the next group's words.
        before = groups[k - 1][-1].end if k else start
        after = groups[k + 1][0].start if k + 1 < len(groups) else end
        span = group[-1].end - group[0].start
        if span > max_seconds:
            too_long.append(
                (piece_id, f"the word {group[0].text!r} alone spans {span:.1f} s > {max_seconds:g} s", span)
            )
            continue
        room = min(pad, (max_seconds - span) / 2)
        lo = max(before, start, group[0].start - room)
        hi = min(after, end, group[-1].end + room)
        text = " ".join(word.text for word in group if word.text)
        pieces.append(
            Piece(id=piece_id, text=text, raw=_slice(audio, lo, hi), rate=audio.rate, start=lo, cut=True)
        )
    return Plan(pieces=tuple(pieces), too_long=tuple(too_long), split=True)
