"""Cleaning rules: each registered with a name, a stage and an explanation; each drop counts.

Rules run per row in stage order, cheapest first, and the first rule a row fails names its
reason (one reason per row):

``read`` (the format reader) -> ``row`` (text and file, before decoding) -> ``audio`` (after
decoding) -> ``segment`` (timing; long rows are cut or split here) -> ``piece`` (each piece that
would become a training row).

:func:`check_row` returns the pieces to keep and a :class:`~asrtune.data.rows.Dropped` for
everything else, so every source row is accounted for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from asrtune.data.audio import RawAudio, read_raw, to_mono
from asrtune.data.charset import foreign_characters
from asrtune.data.rows import Dropped, SourceRow, Word
from asrtune.data.segment import Piece, plan_pieces, stretch_seconds, timing_problem, too_long_detail
from asrtune.errors import AsrtuneError
from asrtune.registry import Registry

if TYPE_CHECKING:  # the tokenizer side pulls in transformers; the CLI's help must not wait for it
    from asrtune.data.labels import LabelBudget

__all__ = [
    "Rule",
    "RULES",
    "STAGES",
    "CleanSettings",
    "CleanContext",
    "RowOutcome",
    "check_row",
    "rules_in_order",
    "Aligner",
    "spoken_characters",
]

STAGES = ("read", "row", "audio", "segment", "piece")
# Forced alignment, given by the caller (asrtune.inference.align through ``prepare --align``): a row and its
# stretch of audio (16 kHz mono) in, its words with times from the start of the file out.
Aligner = Callable[[SourceRow, np.ndarray], tuple[Word, ...]]
_ORDER = itertools.count()


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One cleaning rule.

    Attributes:
        name: the reason recorded for rows it drops.
        stage: when it runs (see :data:`STAGES`).
        explanation: what it catches, for the report and ``asrtune prepare --help``.
        check: returns a detail string when the subject fails, None when it passes; None for rules
            whose drops come from elsewhere (the format readers, the decoder, the splitter).
        option: the :class:`CleanSettings` flag that turns an optional rule on (None: always on).
    """

    name: str
    stage: str
    explanation: str
    check: Callable[..., str | None] | None = None
    option: str | None = None
    order: int = 0


RULES: Registry[Rule] = Registry("cleaning rule")


def rule(name: str, stage: str, explanation: str, *, option: str | None = None) -> Callable:
    """Register the decorated function (or None via :func:`declare`) as the rule ``name``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")

    def decorate(check: Callable[..., str | None] | None) -> Callable[..., str | None] | None:
        RULES.register(name)(
            Rule(
                name=name,
                stage=stage,
                explanation=explanation,
                check=check,
                option=option,
                order=next(_ORDER),
            )
        )
        return check

    return decorate


def declare(name: str, stage: str, explanation: str) -> None:
    """Register a reason whose drops another part produces (reader, decoder, splitter)."""
    rule(name, stage, explanation)(None)


@dataclass(frozen=True, kw_only=True)
class CleanSettings:
    """Thresholds of the cleaning rules.

    Attributes:
        min_seconds: shorter pieces are dropped (too_short).
        max_seconds: longer rows are split or dropped (Whisper's window: 30 s).
        min_chars_per_second: slower speech (letters and digits per second) is dropped (speaking_rate).
        max_chars_per_second: faster speech is dropped (speaking_rate).
        charset: drop transcripts with characters outside their language's script (charset).
        language: language of rows that name none.
        align: long rows without timing are force-aligned to their transcript (``prepare --align``).
        min_alignment_score: forced alignment's pieces scored below this are dropped (alignment).
    """

    min_seconds: float = 0.2
    max_seconds: float = 30.0
    min_chars_per_second: float = 1.0
    max_chars_per_second: float = 25.0
    charset: bool = False
    language: str | None = None
    align: bool = False
    min_alignment_score: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.min_alignment_score < 1:
            raise AsrtuneError("need 0 <= min alignment score < 1")
        if not 0 <= self.min_seconds < self.max_seconds:
            raise AsrtuneError("need 0 <= min duration < max duration")
        if not 0 <= self.min_chars_per_second < self.max_chars_per_second:
            raise AsrtuneError("need 0 <= min chars/s < max chars/s")


@dataclass
class CleanContext:
    """Settings, the model's label budget, what has been seen (for duplicates), and the forced aligner that cuts
    long rows with no timing (None: they are too long)."""

    settings: CleanSettings
    budget: LabelBudget | None = None
    seen: dict[str, str] = field(default_factory=dict)
    aligner: Aligner | None = None

    def language(self, row_language: str | None) -> str | None:
        return row_language or self.settings.language


def rules_in_order(stage: str | None = None, settings: CleanSettings | None = None) -> list[Rule]:
    """Registered rules (of one stage, and enabled by ``settings`` when given) in the order they run."""
    rules = sorted(
        (RULES.get(name) for name in RULES.names()), key=lambda r: (STAGES.index(r.stage), r.order)
    )
    if stage is not None:
        rules = [r for r in rules if r.stage == stage]
    if settings is not None:
        rules = [r for r in rules if r.option is None or getattr(settings, r.option)]
    return rules


def spoken_characters(text: str) -> int:
    """Letters and digits: what a speaker says (punctuation and spaces are not spoken)."""
    return sum(ch.isalnum() for ch in text)


# --- read ------------------------------------------------------------------------------------------------

declare("invalid_line", "read", "corpus line unusable (bad JSON/CSV, missing field, Kaldi pipe)")


# --- row: the text and the file, before decoding ----------------------------------------------------------


@rule("empty_text", "row", "the transcript is empty or only whitespace")
def empty_text(row: SourceRow, ctx: CleanContext) -> str | None:
    if row.text.strip():
        return None
    return "transcript is empty" if not row.text else f"transcript is only whitespace ({row.text!r})"


@rule("unknown_language", "row", "the model has no token for the row's language")
def unknown_language(row: SourceRow, ctx: CleanContext) -> str | None:
    language = ctx.language(row.language)
    if (
        ctx.budget is None
        or not ctx.budget.multilingual
        or language is None
        or language in ctx.budget.languages
    ):
        return None
    return f"the model has no language token <|{language}|>"


@rule("charset", "row", "characters outside the language's script (--charset)", option="charset")
def charset(row: SourceRow, ctx: CleanContext) -> str | None:
    language = ctx.language(row.language)
    bad = foreign_characters(row.text, language or "")
    if not bad:
        return None
    shown = " ".join(repr(ch) for ch in bad[:8]) + (" ..." if len(bad) > 8 else "")
    return f"characters outside {language}'s script: {shown}"


@rule("missing_file", "row", "the audio file does not exist")
def missing_file(row: SourceRow, ctx: CleanContext) -> str | None:
    path = Path(row.audio)
    if path.is_file():
        return None
    return f"no such file: {path}" if not path.exists() else f"not a file: {path}"


# --- audio: after decoding --------------------------------------------------------------------------------

declare("unreadable", "audio", "libsndfile cannot decode it (corrupt or not audio)")


@rule("zero_length", "audio", "the file holds no samples")
def zero_length(audio: RawAudio, ctx: CleanContext) -> str | None:
    return "the file holds 0 samples" if audio.file_frames == 0 else None


@rule("non_finite", "audio", "NaN or infinite samples")
def non_finite(audio: RawAudio, ctx: CleanContext) -> str | None:
    bad = int(np.count_nonzero(~np.isfinite(audio.samples)))
    return f"{bad} of {audio.samples.size} samples are NaN or infinite" if bad else None


# --- segment: timing; long rows are cut or split ------------------------------------------------------------


@rule("bad_timing", "segment", "segment or word times outside the file, or out of order")
def bad_timing(row: SourceRow, file_seconds: float, ctx: CleanContext) -> str | None:
    return timing_problem(row, file_seconds)


declare("too_long", "segment", "over --max-duration (30 s) with no timing to split it at (see --align)")
rule("alignment", "segment", "forced alignment (--align): transcript text the audio does not contain, or a "
     "piece scored below --min-alignment-score", option="align")(None)


# --- piece: each utterance that would be written ------------------------------------------------------------


@rule("too_short", "piece", "shorter than --min-duration")
def too_short(piece: Piece, mono: np.ndarray, ctx: CleanContext) -> str | None:
    if piece.seconds >= ctx.settings.min_seconds:
        return None
    return f"{piece.seconds:.3f} s < {ctx.settings.min_seconds:g} s"


@rule("token_length", "piece", "transcript longer than the decoder's 448 positions")
def token_length(piece: Piece, mono: np.ndarray, ctx: CleanContext) -> str | None:
    if ctx.budget is None:
        return None
    positions = ctx.budget.positions(piece.text)
    if positions <= ctx.budget.limit:
        return None
    return f"transcript takes {positions} decoder positions > {ctx.budget.limit}"


@rule("speaking_rate", "piece", "implausible characters/s: truncated audio or wrong label")
def speaking_rate(piece: Piece, mono: np.ndarray, ctx: CleanContext) -> str | None:
    if piece.seconds <= 0:
        return None
    rate = spoken_characters(piece.text) / piece.seconds
    low, high = ctx.settings.min_chars_per_second, ctx.settings.max_chars_per_second
    if low <= rate <= high:
        return None
    return (
        f"{rate:.1f} characters/s ({spoken_characters(piece.text)} in {piece.seconds:.2f} s) is outside "
        f"{low:g}-{high:g}"
    )


@rule("duplicate", "piece", "same audio content and text as an earlier row")
def duplicate(piece: Piece, mono: np.ndarray, ctx: CleanContext) -> str | None:
    digest = hashlib.sha256(np.ascontiguousarray(mono, dtype=np.float32).tobytes())
    digest.update(b"\0" + piece.text.strip().encode("utf-8"))
    key = digest.hexdigest()
    first = ctx.seen.get(key)
    if first is not None:
        return f"same audio and text as {first}"
    ctx.seen[key] = piece.id
    return None


# --- one row through every stage ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RowOutcome:
    """What became of one source row: kept pieces (with 16 kHz mono samples) and dropped entries."""

    kept: tuple[tuple[Piece, np.ndarray], ...] = ()
    dropped: tuple[Dropped, ...] = ()
    split: bool = False
    aligned: tuple[Word, ...] = ()  # the row's words, when forced alignment timed them
    aligned_seconds: float = 0.0


def _first_failure(rules: list[Rule], *subject) -> tuple[str, str] | None:
    for candidate in rules:
        if candidate.check is not None:
            detail = candidate.check(*subject)
            if detail is not None:
                return candidate.name, detail
    return None


_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError)


def _header_seconds(row: SourceRow) -> float | None:
    """The file's length from its header alone, or None when the header cannot be read."""
    try:
        return float(sf.info(row.audio).duration)
    except _DECODE_ERRORS:
        return None


def _drop(row: SourceRow, reason: str, detail: str, seconds: float = 0.0) -> RowOutcome:
    return RowOutcome(dropped=(Dropped.of(row, reason, detail, seconds=seconds),))


def _piece_dropped(row: SourceRow, piece_id: str, reason: str, detail: str, seconds: float) -> Dropped:
    return Dropped(
        reason=reason,
        detail=detail,
        id=piece_id,
        line=row.line,
        source=row.source,
        audio=row.audio,
        seconds=seconds,
    )


def _before_decoding(row: SourceRow, ctx: CleanContext) -> RowOutcome | None:
    """Row rules, and long rows with no timing to split them (judged from the header: no hour is decoded)."""
    file_seconds = _header_seconds(row)
    seconds = stretch_seconds(row, file_seconds) if file_seconds else 0.0
    failure = _first_failure(rules_in_order("row", ctx.settings), row, ctx)
    if failure:
        return _drop(row, *failure, seconds=seconds)
    untimed = not row.words and not row.spans and ctx.aligner is None
    if file_seconds is not None and untimed and seconds > ctx.settings.max_seconds:
        failure = _first_failure(rules_in_order("segment", ctx.settings), row, file_seconds, ctx)
        return _drop(
            row,
            *(failure or ("too_long", too_long_detail(row, seconds, ctx.settings.max_seconds))),
            seconds=seconds,
        )
    return None


def _check_pieces(row: SourceRow, audio: RawAudio, ctx: CleanContext) -> RowOutcome:
    """Cut or split the decoded stretch into pieces and run the piece rules on each."""
    plan = plan_pieces(row, audio, ctx.settings.max_seconds, ctx.settings.min_alignment_score)
    dropped = [
        _piece_dropped(row, piece_id, "too_long", detail, seconds)
        for piece_id, detail, seconds in plan.too_long
    ] + [_piece_dropped(row, piece_id, "alignment", detail, seconds) for piece_id, detail, seconds in plan.unaligned]
    kept = []
    piece_rules = rules_in_order("piece", ctx.settings)
    for piece in plan.pieces:
        try:
            mono = to_mono(piece.raw, piece.rate)
        except (
            ValueError,
            RuntimeError,
        ) as error:  # soxr refusing an exotic rate: this piece only, explained
            dropped.append(
                _piece_dropped(
                    row,
                    piece.id,
                    "unreadable",
                    f"cannot resample from {piece.rate} Hz: {error}",
                    piece.seconds,
                )
            )
            continue
        failure = _first_failure(piece_rules, piece, mono, ctx)
        if failure:
            dropped.append(_piece_dropped(row, piece.id, *failure, piece.seconds))
        else:
            kept.append((piece, mono))
    return RowOutcome(kept=tuple(kept), dropped=tuple(dropped), split=plan.split)


def check_row(row: SourceRow, ctx: CleanContext) -> RowOutcome:
    """Run every enabled rule on one row, decoding its audio at most once.

    Returns:
        The kept pieces and a ``Dropped`` for the row or for each piece of it left out.
    """
    early = _before_decoding(row, ctx)
    if early is not None:
        return early
    try:
        audio = read_raw(row.audio, row.start, row.end)
    except AsrtuneError as error:
        return _drop(row, "unreadable", str(error))
    failure = _first_failure(rules_in_order("audio", ctx.settings), audio, ctx) or _first_failure(
        rules_in_order("segment", ctx.settings), row, audio.file_seconds, ctx
    )
    if failure:
        return _drop(row, *failure, seconds=audio.seconds)
    if ctx.aligner is not None and not row.words and not row.spans and audio.seconds > ctx.settings.max_seconds:
        try:
            words = ctx.aligner(row, to_mono(audio.samples, audio.rate))
        except AsrtuneError as error:
            return _drop(row, "alignment", f"forced alignment failed: {error}", seconds=audio.seconds)
        row = dataclasses.replace(row, words=words, aligned=True)
        outcome = _check_pieces(row, audio, ctx)
        return dataclasses.replace(outcome, aligned=words, aligned_seconds=audio.seconds)
    return _check_pieces(row, audio, ctx)
