"""Long audio: cut rows into pieces Whisper can take (at most 30 s) where their timing is known.

Whisper's encoder sees 30 s; longer audio is truncated and its transcript then describes speech
the model never hears. A row is cut from its file when the corpus says where it lies (Kaldi
``segments``, NeMo ``offset``); a row longer than 30 s is split at word boundaries when it has word
timestamps (from the corpus, or from forced alignment), or at cue boundaries when it has timed spans
(subtitle cues); without any it cannot be split honestly and is dropped with the reason ``too_long``.

Cuts go where the speech pauses: of the boundaries that keep a piece within the window (and at least a
third of it full), the one with the longest gap. Each piece carries its segments (times relative to the
piece): its cues, its sentences (split at sentence ends and pauses), or, for a row cut whole, the row itself.
Those are what timestamp training (``data.timestamps``) turns into Whisper's timestamp tokens.

Words found by forced alignment carry a score and whether the audio holds them: words it does not hold
become pieces of their own, dropped with the reason ``alignment``, as are pieces whose score is below the
threshold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asrtune.data.audio import RawAudio
from asrtune.data.rows import SourceRow, Span, Word

__all__ = [
    "Piece",
    "Plan",
    "plan_pieces",
    "split_words",
    "group_at_pauses",
    "sentence_segments",
    "piece_score",
    "SEGMENT_PAUSE",
    "timing_problem",
    "too_long_detail",
    "stretch_seconds",
    "TIMING_TOLERANCE",
]

TIMING_TOLERANCE = 0.05  # seconds a segment or word may run past the end of its file (rounding)
SEGMENT_PAUSE = 0.5  # a pause this long inside a piece starts a new segment
_SENTENCE_END = re.compile(r"[.!?…。！？][\"')\]]*$")


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
        segments: timed stretches of its text, seconds from the piece's start (empty: no timing known).
        score: forced alignment's score of its words (None: not aligned).
    """

    id: str
    text: str
    raw: np.ndarray
    rate: int
    start: float
    cut: bool
    segments: tuple[Span, ...] = ()
    score: float | None = None

    @property
    def seconds(self) -> float:
        return self.raw.shape[0] / self.rate


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What segmentation made of one row: pieces, and stretches it could not keep (with why)."""

    pieces: tuple[Piece, ...] = ()
    too_long: tuple[tuple[str, str, float], ...] = ()  # (id, detail, seconds)
    split: bool = False  # split at word boundaries
    unaligned: tuple[tuple[str, str, float], ...] = ()  # (id, detail, seconds): dropped with reason alignment


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
    for span in row.spans:
        if span.start < low - TIMING_TOLERANCE or span.end > high:
            return (f"cue {span.text[:40]!r} at {span.start:.2f}-{span.end:.2f} s lies outside the file "
                    f"({low:.2f}-{high - TIMING_TOLERANCE:.2f} s)")
    if any(b.start < a.start for a, b in zip(row.spans, row.spans[1:])):
        return "cues are not in order"
    return None


def group_at_pauses(items: Sequence[Word | Span], max_seconds: float, pad: float = 0.1,
                    min_fill: float = 1 / 3) -> list[tuple]:
    """Consecutive timed items (words, cues) in groups that each span at most ``max_seconds`` with ``pad`` either
    side, cut where the gap between two items is longest.

    From each group's first item, every boundary that keeps the group within the window (and, when any does, at
    least ``min_fill`` of it full) is a candidate; the one before the longest gap wins, the later on a tie (so
    evenly spaced items fill each group). An item longer than the window forms a group of its own.
    """
    groups: list[tuple] = []
    first = 0
    while first < len(items):
        last = first
        while last + 1 < len(items) and items[last + 1].end - items[first].start + 2 * pad <= max_seconds:
            last += 1
        if last + 1 < len(items):
            floor = items[first].start + min_fill * max_seconds
            candidates = [k for k in range(first, last + 1) if items[k].end >= floor] or list(range(first, last + 1))
            # gaps compared at the VAD's 10 ms: equal pauses are equal, whatever the float rounding
            last = max(candidates, key=lambda k: (round(items[k + 1].start - items[k].end, 2), k))
        groups.append(tuple(items[first : last + 1]))
        first = last + 1
    return groups


def split_words(words: tuple[Word, ...], max_seconds: float, pad: float = 0.1) -> list[tuple[Word, ...]]:
    """Words in groups of at most ``max_seconds`` (with ``pad`` either side), cut at pauses
    (:func:`group_at_pauses`). A single word longer than that forms a group of its own (dropped as too long)."""
    return group_at_pauses(words, max_seconds, pad)


def sentence_segments(words: Sequence[Word], offset: float, pause: float = SEGMENT_PAUSE) -> tuple[Span, ...]:
    """A piece's words as segments (times minus ``offset``): a new one after a sentence end or a pause."""
    segments, current = [], []
    for k, word in enumerate(words):
        current.append(word)
        following = words[k + 1] if k + 1 < len(words) else None
        if following is None or _SENTENCE_END.search(word.text) or following.start - word.end >= pause:
            segments.append(Span(text=" ".join(w.text for w in current), start=max(0.0, current[0].start - offset),
                                 end=max(0.0, current[-1].end - offset)))
            current = []
    return tuple(segments)


def piece_score(words: Sequence[Word]) -> float | None:
    """The geometric mean of the words' alignment scores (None when they have none)."""
    scores = [w.score for w in words if w.score is not None]
    if not scores:
        return None
    return float(math.exp(np.mean([math.log(max(s, 1e-12)) for s in scores])))


def _slice(audio: RawAudio, start: float, end: float) -> np.ndarray:
    """Samples of ``[start, end)`` seconds of the file from a stretch read at ``audio.start_frame``."""
    first = max(0, int(round(start * audio.rate)) - audio.start_frame)
    last = max(first, int(round(end * audio.rate)) - audio.start_frame)
    return audio.samples[first:last]


def _runs(words: tuple[Word, ...]) -> list[tuple[bool, tuple[Word, ...]]]:
    """Maximal runs of words the audio holds (True) and of words it does not (False), in order."""
    runs: list[tuple[bool, list[Word]]] = []
    for word in words:
        if runs and runs[-1][0] == word.heard:
            runs[-1][1].append(word)
        else:
            runs.append((word.heard, [word]))
    return [(heard, tuple(group)) for heard, group in runs]


def _unheard_detail(group: tuple[Word, ...]) -> str:
    text = " ".join(w.text for w in group)
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"{len(group)} word(s) of the transcript the audio does not contain: {shown!r}"


def _pieces_of(row: SourceRow, audio: RawAudio, items: Sequence[Word | Span], max_seconds: float,
               min_score: float, numbering: list[int]) -> tuple[list[Piece], list, list]:
    """Pieces of consecutive timed items (words or cues); padded into the silence around them."""
    start = audio.start_frame / audio.rate
    end = start + audio.seconds
    pad = 0.1
    pieces, too_long, unaligned = [], [], []
    groups = group_at_pauses(items, max_seconds, pad)
    for k, group in enumerate(groups):
        piece_id = f"{row.id}-{numbering[0]:03d}"
        numbering[0] += 1
        before = groups[k - 1][-1].end if k else start
        after = groups[k + 1][0].start if k + 1 < len(groups) else end
        span = group[-1].end - group[0].start
        if span > max_seconds:
            too_long.append((piece_id, f"the {'word' if isinstance(group[0], Word) else 'cue'} {group[0].text[:40]!r} alone spans {span:.1f} s > {max_seconds:g} s", span))
            continue
        room = min(pad, (max_seconds - span) / 2)
        lo = max(before, start, group[0].start - room)
        hi = min(after, end, group[-1].end + room)
        text = " ".join(item.text for item in group if item.text)
        words = [item for item in group if isinstance(item, Word)]
        score = piece_score(words) if row.aligned else None
        if score is not None and score < min_score:
            unaligned.append((piece_id, f"alignment score {score:.3f} < {min_score:g}", hi - lo))
            continue
        segments = sentence_segments(words, lo) if words else tuple(
            Span(text=c.text, start=max(0.0, c.start - lo), end=max(0.0, c.end - lo)) for c in group)
        pieces.append(Piece(id=piece_id, text=text, raw=_slice(audio, lo, hi), rate=audio.rate, start=lo, cut=True,
                            segments=segments, score=score))
    return pieces, too_long, unaligned


def plan_pieces(row: SourceRow, audio: RawAudio, max_seconds: float, min_score: float = 0.0) -> Plan:
    """The pieces of ``row`` (decoded as ``audio``, the row's stretch of its file).

    * timed spans (subtitle cues): pieces of whole cues, each cue a segment;
    * at most ``max_seconds``: one piece, the whole stretch (``cut`` when it is not the whole file; a cut
      stretch is one segment);
    * longer, with word timestamps: pieces of words cut at pauses (forced alignment's unheard words, and
      pieces scored below ``min_score``, are dropped with the reason ``alignment``);
    * longer, without: nothing, and the stretch is reported as too long.
    """
    start = audio.start_frame / audio.rate
    whole_file = audio.start_frame == 0 and audio.samples.shape[0] == audio.file_frames
    if row.spans:
        pieces, too_long, _ = _pieces_of(row, audio, row.spans, max_seconds, 0.0, [0])
        return Plan(pieces=tuple(pieces), too_long=tuple(too_long), split=True)
    if audio.seconds <= max_seconds and not row.aligned:
        segments = (Span(text=row.text, start=0.0, end=audio.seconds),) if not whole_file else ()
        piece = Piece(id=row.id, text=row.text, raw=audio.samples, rate=audio.rate, start=start, cut=not whole_file,
                      segments=segments)
        return Plan(pieces=(piece,))
    if not row.words:
        return Plan(too_long=((row.id, too_long_detail(row, audio.seconds, max_seconds), audio.seconds),))
    pieces, too_long, unaligned, numbering = [], [], [], [0]
    for heard, group in _runs(row.words):
        if not heard:
            unaligned.append((f"{row.id}-{numbering[0]:03d}", _unheard_detail(group), 0.0))
            numbering[0] += 1
            continue
        made, long, low = _pieces_of(row, audio, group, max_seconds, min_score, numbering)
        pieces += made
        too_long += long
        unaligned += low
    return Plan(pieces=tuple(pieces), too_long=tuple(too_long), split=True, unaligned=tuple(unaligned))
