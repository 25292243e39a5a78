"""Forced alignment: a recording of any length and its known transcript in, every word's time out.

The transcript is fed to the model window by window (30 s for real Whisper), teacher-forced: the words not yet
placed go into the window starting where the last placed word ended, cross-attention DTW times them
(:func:`asrtune.models.whisper_timing.teacher_forced_timing`), and the words that end before the window's last
``guard`` seconds are placed; the rest wait for the next window. So no 30 s boundary cuts a word, and the text
never has to be split in advance.

DTW's path is contiguous, so a pause belongs to the word before (or after) it; WebRTC's VAD trims a word's
leading or trailing non-speech (:mod:`asrtune.data.vad`).

Text the audio does not contain is detected, not forced: DTW gives such words (almost) no time and the model
finds them unlikely. The transcript is judged sentence by sentence (``.?!`` or a line break; chunks of
:data:`UNIT_WORDS` words where it has no punctuation): a sentence most of whose words get at most
``squeeze_seconds`` and whose mean token log-probability is below ``min_logprob`` is marked not heard, and the
window is aligned again without it, so its neighbours' times are not bent around it. Each word keeps a score,
the geometric mean of its tokens' probabilities (punctuation tokens aside).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.rows import Word
from asrtune.data.vad import pauses, speech_frames, trim_to_speech
from asrtune.errors import AsrtuneError
from asrtune.models.load import LoadedModel
from asrtune.models.whisper import prefix_ids
from asrtune.models.whisper_timing import WindowEncoding, encoder_output, ensure_alignment_heads, teacher_forced_timing
from asrtune.strategies.prompt import soft_prompt_length

__all__ = ["AlignOptions", "Alignment", "align_transcript", "row_aligner", "transcript_words", "UNIT_WORDS"]

UNIT_WORDS = 12  # words per judged unit where the transcript has no sentence punctuation
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"')\]]*$")


@dataclass(frozen=True, kw_only=True)
class AlignOptions:
    """How forced alignment runs.

    Attributes:
        language: the transcript's language (multilingual models; None: English).
        guard: words ending in a window's last ``guard`` seconds wait for the next window (unless it is the last).
        token_budget: most text tokens fed per window (Whisper's decoder holds 448 positions).
        min_pause: a non-speech stretch at least this long at a word's edge is trimmed off it.
        squeeze_seconds: a word DTW gives at most this much time has (almost) no audio of its own.
        min_logprob: a sentence whose tokens' mean log-probability is below this, with most of its words
            squeezed, is not in the audio.
        max_word_seconds: a word still longer than this after trimming covers speech the transcript lacks.
    """

    language: str | None = None
    guard: float = 2.0
    token_budget: int = 220
    min_pause: float = 0.1
    squeeze_seconds: float = 0.04
    min_logprob: float = -2.0
    max_word_seconds: float = 3.0


@dataclass(frozen=True, kw_only=True)
class Alignment:
    """A transcript's words in order, each with its time in the recording (seconds) and score.

    Words the audio does not contain have ``heard=False``, zero length, at the time their neighbours leave them.
    """

    duration: float
    words: tuple[Word, ...]
    windows: int = 0
    unheard_units: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {"duration": round(self.duration, 3), "windows": self.windows,
                "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                           "score": None if w.score is None else round(w.score, 4), "heard": w.heard}
                          for w in self.words],
                "not_heard": list(self.unheard_units)}


def transcript_words(text: str) -> list[str]:
    """The transcript's words as written (punctuation stays on its word)."""
    return text.split()


def _units(text: str) -> list[int]:
    """The unit (sentence or chunk) index of each word: units end at ``.?!`` or a line break."""
    units, current, length = [], 0, 0
    for line in text.splitlines():
        for word in line.split():
            units.append(current)
            length += 1
            if _SENTENCE_END.search(word) or length >= UNIT_WORDS * 3:
                current, length = current + 1, 0
        if length:
            current, length = current + 1, 0
    if len(set(units)) == 1 and len(units) > 2 * UNIT_WORDS:  # no punctuation, one line: chunks
        units = [i // UNIT_WORDS for i in range(len(units))]
    return units


@dataclass
class _Text:
    """The transcript tokenised once: each word's tokens and which of them are scored (not punctuation)."""

    words: list[str]
    tokens: list[list[int]]
    scored: list[np.ndarray]
    units: list[int]


def _tokenise(loaded: LoadedModel, text: str) -> _Text:
    tokenizer = loaded.processor.tokenizer
    words = transcript_words(text)
    tokens = [tokenizer.encode(" " + word, add_special_tokens=False) for word in words]
    scored = []
    for ids in tokens:
        pieces = [tokenizer.decode([i]) for i in ids]
        mask = np.array([any(ch.isalnum() for ch in piece) for piece in pieces], dtype=bool)
        scored.append(mask if mask.any() else np.ones(len(ids), dtype=bool))
    return _Text(words=words, tokens=tokens, scored=scored, units=_units(text))


@dataclass
class _Placed:
    start: float
    end: float
    logprob: float  # mean over scored tokens
    heard: bool = True


class _Window:
    """One window's audio as the model sees it."""

    def __init__(self, loaded: LoadedModel, samples: np.ndarray, start: float, seconds: float) -> None:
        extractor = loaded.processor.feature_extractor
        first = int(round(start * SAMPLE_RATE))
        chunk = samples[first : first + int(round(seconds * SAMPLE_RATE))]
        parameter = next(loaded.model.parameters())
        inputs = extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        self.features = WindowEncoding(encoder_output(loaded.model, inputs.input_features.to(parameter.device,
                                                                                             parameter.dtype)))
        self.frames = max(2, min(inputs.input_features.shape[-1], -(-len(chunk) // extractor.hop_length)))
        self.start, self.seconds = start, len(chunk) / SAMPLE_RATE


class _Aligner:
    def __init__(self, loaded: LoadedModel, samples: np.ndarray, text: _Text, options: AlignOptions) -> None:
        self.loaded, self.samples, self.text, self.options = loaded, samples, text, options
        self.speech = speech_frames(samples)
        self.pauses = pauses(self.speech, options.min_pause)
        self.prompt = [loaded.model.generation_config.decoder_start_token_id,
                       *prefix_ids(loaded.processor, multilingual=loaded.multilingual,
                                   language=options.language, task="transcribe")]
        self.skip = soft_prompt_length(loaded.model)
        self.window_seconds = float(loaded.processor.feature_extractor.chunk_length)

    def time(self, window: _Window, indices: list[int]) -> dict[int, _Placed]:
        """Teacher-force the words at ``indices`` over ``window``; their times in the file (trimmed to speech)."""
        flat = [t for i in indices for t in self.text.tokens[i]]
        timing = teacher_forced_timing(self.loaded.model, window.features, self.prompt, flat, window.frames,
                                       skip_positions=self.skip)
        placed, offset = {}, 0
        for i in indices:
            count = len(self.text.tokens[i])
            start = window.start + float(timing.starts[offset])
            end = window.start + float(timing.ends[offset + count - 1])
            logprob = float(timing.logprobs[offset : offset + count][self.text.scored[i]].mean())
            placed[i] = _Placed(start=start, end=end, logprob=logprob)
            offset += count
        self.snap(placed, indices)
        return placed

    def snap(self, placed: dict[int, _Placed], indices: list[int]) -> None:
        """Move boundaries between words onto pauses, and trim the outer words' silence.

        DTW's boundary is approximate and hands a pause to one of its two words. Each pause between two words'
        sounds goes to the boundary nearest it (at most ``max_shift`` away), nearest pairs first, so a pause that
        the last word of a sentence swallowed ends that word instead of splitting an earlier pair.
        """
        margin, max_shift = 0.05, 0.5
        candidates = []
        for k, (a, b) in enumerate(zip(indices, indices[1:])):
            left, right = placed[a], placed[b]
            if left.end - left.start <= self.options.squeeze_seconds:
                continue
            inside = self.pauses[(self.pauses[:, 0] > left.start + margin) & (self.pauses[:, 1] < right.end - margin)]
            for pause_start, pause_end in inside:
                distance = max(0.0, pause_start - left.end, left.end - pause_end)
                if distance <= max_shift:
                    candidates.append((distance, k, float(pause_start), float(pause_end)))
        taken_boundaries, taken_pauses = set(), set()
        for _, k, pause_start, pause_end in sorted(candidates):
            if k in taken_boundaries or (pause_start, pause_end) in taken_pauses:
                continue
            taken_boundaries.add(k)
            taken_pauses.add((pause_start, pause_end))
            placed[indices[k]].end, placed[indices[k + 1]].start = pause_start, pause_end
        for i in (indices[0], indices[-1]):
            word = placed[i]
            if word.end - word.start > self.options.min_pause:
                word.start, word.end = trim_to_speech(self.speech, word.start, word.end, self.options.min_pause)

    def unheard(self, placed: dict[int, _Placed], judged: list[int], earlier: list[_Placed | None]) -> set[int]:
        """Words of the judged units that the audio does not contain (see the module docstring); a unit begun in
        an earlier window is judged with its words placed there."""
        by_unit: dict[int, list[_Placed]] = {}
        members: dict[int, list[int]] = {}
        for i in judged:
            unit = self.text.units[i]
            members.setdefault(unit, []).append(i)
            by_unit.setdefault(unit, []).append(placed[i])
        for i in range(min(judged) - 1, -1, -1):
            if self.text.units[i] not in by_unit or earlier[i] is None:
                break
            by_unit[self.text.units[i]].append(earlier[i])
        missing: set[int] = set()
        for unit, words in by_unit.items():
            squeezed = sum(w.end - w.start <= self.options.squeeze_seconds for w in words)
            logprob = float(np.mean([w.logprob for w in words]))
            if squeezed * 2 >= len(words) and logprob < self.options.min_logprob:
                missing.update(members[unit])
        return missing

    def feed(self, cursor: int, rate: float) -> list[int]:
        """The words fed to a window from ``cursor``: what ``rate`` words a second suggests, and then some."""
        want = math.ceil(1.5 * rate * self.window_seconds) + 8
        indices, tokens = [], 0
        for i in range(cursor, len(self.text.words)):
            tokens += len(self.text.tokens[i])
            if indices and (tokens > self.options.token_budget or len(indices) >= want):
                break
            indices.append(i)
        return indices

    def run(self, progress: bool) -> tuple[list[_Placed | None], int]:
        duration = len(self.samples) / SAMPLE_RATE
        n = len(self.text.words)
        result: list[_Placed | None] = [None] * n
        rate = n / max(duration, 1.0)
        cursor, start, windows = 0, 0.0, 0
        bar = tqdm(total=n, desc="align", unit="word", disable=not progress, leave=False)
        while cursor < n:
            fed = self.feed(cursor, rate)
            last_window = start + self.window_seconds >= duration - 1e-6 and fed[-1] == n - 1
            window = _Window(self.loaded, self.samples, start, min(self.window_seconds, duration - start))
            windows += 1
            placed = self.time(window, fed)
            limit = math.inf if last_window else window.start + window.seconds - self.options.guard
            judged = _leading(fed, lambda i: placed[i].end <= limit)
            missing = self.unheard(placed, judged, result) if judged else set()
            if missing:  # align again without them, so their neighbours' times are not bent around them
                kept = [i for i in fed if i not in missing]
                placed = {**(self.time(window, kept) if kept else {}), **{i: placed[i] for i in missing}}
                judged = _leading(fed, lambda i: i in missing or placed[i].end <= limit)
            if not last_window:
                judged = _at_pause(judged, placed, missing, window.start + window.seconds / 2)
            first = placed[fed[0]]
            if (not last_window and fed[0] not in missing and first.end - first.start > self.options.max_word_seconds
                    and first.end < limit):
                start = max(start + 1.0, first.end - 1.5)  # untranscribed speech ahead of the text: move on
                continue
            if not judged:
                start = max(start + 1.0, first.start - 0.5) if not last_window else duration
                if start >= duration:  # nothing left to hear: the rest of the text is not in the audio
                    judged = list(range(cursor, n))
                    for i in judged:
                        placed.setdefault(i, _Placed(start=duration, end=duration, logprob=-math.inf))
                        placed[i] = _Placed(start=duration, end=duration, logprob=placed[i].logprob, heard=False)
                else:
                    continue
            end = None
            for i in judged:
                word = placed[i]
                if i in missing:
                    word.heard = False
                elif word.end - word.start > self.options.max_word_seconds:
                    word.heard = False  # it spans speech the transcript does not have
                result[i] = word
                if word.heard:
                    end = word.end
            cursor = judged[-1] + 1
            bar.update(len(judged))
            heard_seconds = (end or start) - start
            if heard_seconds > 5:
                rate = max(rate, sum(result[i].heard for i in judged) / heard_seconds)
            start = max(start, end if end is not None else start)
            if start >= duration:
                start = duration
        bar.close()
        return result, windows


def _at_pause(judged: list[int], placed: dict[int, _Placed], missing: set[int], not_before: float) -> list[int]:
    """``judged`` up to the last heard word followed by a pause that ends after ``not_before``, so the next window
    starts in silence, not inside a word (all of ``judged`` when there is none)."""
    for k in range(len(judged) - 2, -1, -1):
        here, after = judged[k], judged[k + 1]
        if here in missing or after in missing:
            continue
        if placed[here].end < placed[after].start and placed[here].end >= not_before:
            return judged[: k + 1]
    return judged


def _leading(indices: list[int], ok: Callable[[int], bool]) -> list[int]:
    """The longest prefix of ``indices`` whose every member is ``ok``."""
    prefix = []
    for i in indices:
        if not ok(i):
            break
        prefix.append(i)
    return prefix


def _words(text: _Text, placed: list[_Placed | None], duration: float) -> tuple[Word, ...]:
    """Words in order; an unheard word sits, with no length, where the last heard word before it ended."""
    words, last_end = [], 0.0
    for index, word in enumerate(placed):
        if word is None:  # cannot happen: every word is judged; kept as a guard against an endless loop's exit
            raise AsrtuneError(f"internal error: word {index} ({text.words[index]!r}) was not aligned")
        score = math.exp(word.logprob) if math.isfinite(word.logprob) else 0.0
        if word.heard:
            start = min(max(word.start, last_end), duration)
            end = min(max(word.end, start), duration)
            last_end = end
        else:
            start = end = last_end
        words.append(Word(text=text.words[index], start=start, end=end, score=score, heard=word.heard))
    return tuple(words)


def _unit_texts(text: _Text, words: tuple[Word, ...]) -> tuple[str, ...]:
    units: dict[int, list[str]] = {}
    for unit, word in zip(text.units, words, strict=True):
        if not word.heard:
            units.setdefault(unit, []).append(word.text)
    return tuple(" ".join(members) for members in units.values())


def align_transcript(loaded: LoadedModel, samples: np.ndarray, text: str,
                     options: AlignOptions = AlignOptions(), *, progress: bool = False) -> Alignment:
    """Every word of ``text`` with its time in ``samples`` (16 kHz mono), window by window.

    Args:
        loaded: a Whisper model (alignment heads are added from openai/whisper's table when it has none).
        samples: the recording, (T,) float32 at 16 kHz.
        text: its transcript (any length; words are split at whitespace and kept as written).
        options: see :class:`AlignOptions`.
        progress: show a bar in words.

    Raises:
        AsrtuneError: a model of another family, an empty transcript or empty audio.
    """
    if not loaded.family.long_form:
        raise AsrtuneError(f"forced alignment runs Whisper models; {loaded.source} is a "
                           f"{loaded.family.display_name} model")
    if not transcript_words(text):
        raise AsrtuneError("the transcript is empty")
    if len(samples) < SAMPLE_RATE // 10:
        raise AsrtuneError("the audio is shorter than 0.1 s")
    ensure_alignment_heads(loaded.model)
    tokenised = _tokenise(loaded, text)
    aligner = _Aligner(loaded, np.asarray(samples, dtype=np.float32), tokenised, options)
    with torch.no_grad():
        placed, windows = aligner.run(progress)
    duration = len(samples) / SAMPLE_RATE
    words = _words(tokenised, placed, duration)
    return Alignment(duration=duration, words=words, windows=windows, unheard_units=_unit_texts(tokenised, words))


def row_aligner(loaded: LoadedModel, options: AlignOptions = AlignOptions()):
    """The forced aligner ``asrtune prepare --align`` gives the data layer: a row and its stretch of audio
    (16 kHz mono) in, the row's words out, timed from the start of its file."""

    def align_row(row, samples: np.ndarray) -> tuple[Word, ...]:
        row_options = dataclasses.replace(options, language=row.language or options.language)
        alignment = align_transcript(loaded, samples, row.text, row_options)
        offset = row.start or 0.0
        return tuple(dataclasses.replace(w, start=w.start + offset, end=w.end + offset) for w in alignment.words)

    return align_row
