"""Hallucination and repetition: looping hypotheses, run-on hypotheses, and words on non-speech.

Fine-tuned Whisper is reported to loop ("thank you thank you thank you ...") and to invent text
where nobody speaks. Three measures, all on Whisper-normalised words:

* **loop**: the hypothesis holds an n-gram (1 <= n <= ``max_n``) repeated back to back at least
  ``min_repeats`` times (``min_unigram_repeats`` for single words, since "no no" is ordinary speech)
  and the reference holds no such run of that n-gram.
* **too long**: more than ``max_length_ratio`` (2) times as many words as the reference.
* **refusal**: the hypothesis holds an assistant's refusal or apology ("I'm sorry", "as an AI", "I
  cannot transcribe", ...; :data:`REFUSAL_PATTERNS`) that the reference does not: what fine-tuned
  LLM-based ASR models (Qwen2-Audio, Qwen3-ASR) are reported to answer instead of transcribing.
* **non-speech words**: words emitted on clips with no speech at all (silence, white/pink/brown
  noise, mains hum), generated here with numpy. A faithful model emits none.

The clip kinds are a registry (:data:`NONSPEECH`), so another noise is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import re

import numpy as np
import soundfile as sf

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.manifest import Utterance
from asrtune.evaluation.normalize import normalizer_for
from asrtune.registry import Registry

__all__ = [
    "LoopRule",
    "loop_in",
    "HallucinationStats",
    "hallucination_stats",
    "NONSPEECH",
    "write_nonspeech_clips",
    "NonSpeechStats",
    "nonspeech_stats",
    "DEFAULT_NONSPEECH_SECONDS",
    "REFUSAL_PATTERNS",
    "refusal_in",
]

REFUSAL_PATTERNS = (
    r"\bi(?: am|'m) sorry\b",
    r"\bas an ai\b",
    r"\b(?:ai|language) model\b",
    r"\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to)\b",
    r"\bunable to (?:transcribe|process|understand|hear)\b",
    r"\bno (?:speech|audio) (?:was |is )?(?:detected|provided|found)\b",
    r"\bthe audio (?:does not|doesn't) contain\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS))


def _plain_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("\u2019", "'")).strip()


def refusal_in(hypothesis: str, reference: str = "") -> str | None:
    """The refusal phrase in a hypothesis (lower-cased), or None; a phrase the reference says too is speech."""
    match = _REFUSAL.search(_plain_text(hypothesis))
    if match is None or _REFUSAL.search(_plain_text(reference)):
        return None
    return match.group(0)

NONSPEECH: Registry[Callable[[np.random.Generator, int], np.ndarray]] = Registry("non-speech clip kind")
DEFAULT_NONSPEECH_SECONDS = (4.0,)  # one clip of each kind per length: five clips, cheap enough for every run


@dataclass(frozen=True, kw_only=True)
class LoopRule:
    """When back-to-back repeats of an n-gram count as a loop."""

    max_n: int = 10
    min_repeats: int = 3
    min_unigram_repeats: int = 4


def _longest_runs(words: list[str], max_n: int) -> dict[tuple[str, ...], int]:
    """For every n-gram (n <= max_n) that repeats back to back, its longest run of repeats."""
    runs: dict[tuple[str, ...], int] = {}
    for n in range(1, max_n + 1):
        for start in range(len(words) - 2 * n + 1):
            gram = tuple(words[start : start + n])
            repeats = 1
            while tuple(words[start + repeats * n : start + (repeats + 1) * n]) == gram:
                repeats += 1
            if repeats > 1 and repeats > runs.get(gram, 0):
                runs[gram] = repeats
    return runs


def loop_in(
    hypothesis: list[str], reference: list[str] = (), rule: LoopRule = LoopRule()
) -> tuple[str, ...] | None:
    """The looping n-gram of a hypothesis (as words), or None.

    Args:
        hypothesis: normalised hypothesis words.
        reference: normalised reference words; a run that the reference has too is not a loop.
        rule: thresholds.
    """
    reference_runs = _longest_runs(list(reference), rule.max_n) if reference else {}
    for gram, repeats in sorted(
        _longest_runs(hypothesis, rule.max_n).items(), key=lambda kv: -kv[1] * len(kv[0])
    ):
        needed = rule.min_unigram_repeats if len(gram) == 1 else rule.min_repeats
        if repeats >= needed and repeats > reference_runs.get(gram, 0):
            return gram
    return None


@dataclass(frozen=True, kw_only=True)
class HallucinationStats:
    """Shares of scored hypotheses that loop, run long, refuse, or any of them (``rate``); ``examples`` are
    row indices."""

    n: int
    loops: int
    too_long: int
    flagged: int
    loop_rate: float
    long_rate: float
    rate: float
    examples: tuple[int, ...]
    refusals: int = 0
    refusal_rate: float = 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "examples": list(self.examples)}


def hallucination_stats(
    references: list[str],
    hypotheses: list[str],
    language: str | None = None,
    *,
    rule: LoopRule = LoopRule(),
    max_length_ratio: float = 2.0,
) -> HallucinationStats:
    """Count looping, over-long and refusing hypotheses (rows with an empty normalised reference are skipped)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalise = normalizer_for(language)
    loops = too_long = refusals = 0
    flagged: list[int] = []
    n = 0
    for row, (reference, hypothesis) in enumerate(zip(references, hypotheses, strict=True)):
        ref_words, hyp_words = normalise(reference).split(), normalise(hypothesis).split()
        if not ref_words:
            continue
        n += 1
        looped = loop_in(hyp_words, ref_words, rule) is not None
        long = len(hyp_words) > max_length_ratio * len(ref_words)
        refused = refusal_in(hypothesis, reference) is not None
        loops += looped
        too_long += long
        refusals += refused
        if looped or long or refused:
            flagged.append(row)
    share = (lambda count: count / n) if n else (lambda count: 0.0)
    return HallucinationStats(
        n=n,
        loops=loops,
        too_long=too_long,
        flagged=len(flagged),
        loop_rate=share(loops),
        long_rate=share(too_long),
        rate=share(len(flagged)),
        examples=tuple(flagged[:10]),
        refusals=refusals,
        refusal_rate=share(refusals),
    )


# --- non-speech clips ---------------------------------------------------------------------------------


def _at_rms(signal: np.ndarray, rms: float) -> np.ndarray:
    return (signal * rms / max(float(np.sqrt(np.mean(signal**2))), 1e-12)).astype(np.float32)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1 / f**exponent (0 white, 1 pink, 2 brown), by shaping a white spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, d=1 / SAMPLE_RATE)
    frequencies[0] = frequencies[1]
    return np.fft.irfft(spectrum / frequencies ** (exponent / 2), n=n)


@NONSPEECH.register("silence")
def _silence(rng: np.random.Generator, n: int) -> np.ndarray:
    """Digital silence with a dither far below speech level (-80 dBFS)."""
    return _at_rms(rng.standard_normal(n), 1e-4)


@NONSPEECH.register("white")
def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    return _at_rms(rng.standard_normal(n), 0.03)


@NONSPEECH.register("pink")
def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    return _at_rms(_coloured(rng, n, 1.0), 0.03)


@NONSPEECH.register("brown")
def _brown(rng: np.random.Generator, n: int) -> np.ndarray:
    return _at_rms(_coloured(rng, n, 2.0), 0.03)


@NONSPEECH.register("hum")
def _hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """50 Hz mains hum with its first harmonics, plus a little white noise."""
    t = np.arange(n) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    return _at_rms(tone + 0.05 * rng.standard_normal(n), 0.03)


def write_nonspeech_clips(
    folder: str | Path,
    *,
    seconds: tuple[float, ...] = DEFAULT_NONSPEECH_SECONDS,
    kinds: tuple[str, ...] | None = None,
    seed: int = 0,
    language: str | None = None,
    write: bool = True,
) -> list[Utterance]:
    """Write one 16 kHz clip per (kind, length) into ``folder``; rows have empty text.

    The clips are a pure function of (kind, length, seed), so the base model and every tuned model
    hear the same ones. Existing files are rewritten identically. ``write=False`` only names them
    (the other processes of a run, once the main one has written them).
    """
    folder = Path(folder)
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, kind in enumerate(kinds or tuple(NONSPEECH.names())):
        make = NONSPEECH.get(kind)
        for j, length in enumerate(seconds):
            rng = np.random.default_rng([seed, k, j])
            path = folder / f"{kind}-{j}.wav"
            if write:
                sf.write(str(path), make(rng, int(length * SAMPLE_RATE)), SAMPLE_RATE, subtype="PCM_16")
            rows.append(
                Utterance(
                    id=f"nonspeech-{kind}-{j}",
                    audio=str(path.resolve()),
                    text="",
                    language=language,
                    duration=float(length),
                )
            )
    return rows


@dataclass(frozen=True, kw_only=True)
class NonSpeechStats:
    """Words a model emitted on clips that hold no speech."""

    clips: int
    words: int
    words_per_clip: float
    clips_with_words: int
    share_with_words: float
    by_kind: dict[str, int]

    def as_dict(self) -> dict:
        return asdict(self)


def nonspeech_stats(ids: list[str], hypotheses: list[str], language: str | None = None) -> NonSpeechStats:
    """Count normalised words per clip; ``ids`` like ``nonspeech-<kind>-<j>`` give the per-kind totals."""
    normalise = normalizer_for(language)
    words = [len(normalise(h).split()) for h in hypotheses]
    by_kind: dict[str, int] = {}
    for utt_id, count in zip(ids, words, strict=True):
        kind = utt_id.removeprefix("nonspeech-").rsplit("-", 1)[0]
        by_kind[kind] = by_kind.get(kind, 0) + count
    n = len(words)
    with_words = sum(1 for count in words if count)
    return NonSpeechStats(
        clips=n,
        words=sum(words),
        words_per_clip=sum(words) / n if n else 0.0,
        clips_with_words=with_words,
        share_with_words=with_words / n if n else 0.0,
        by_kind=by_kind,
    )
