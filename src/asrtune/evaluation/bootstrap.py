"""Per-utterance word-error counts and bootstrap confidence intervals for corpus WER.

Corpus WER is a ratio of sums, ``sum(S + D + I) / sum(reference words)``, so a confidence interval
resamples whole utterances (with replacement) and recomputes the ratio: the percentile bootstrap.
A change against a base model is resampled *paired* (the same utterances for both), which is far
tighter than two independent intervals because both models face the same hard utterances.

The counts come from jiwer's alignments after Whisper's normaliser, exactly as
:func:`asrtune.evaluation.metrics.score` computes them, so ``counts.wer == score(...).wer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer
import numpy as np

from asrtune.evaluation.normalize import normalizer_for

__all__ = ["UtteranceCounts", "utterance_counts", "bootstrap_wer", "paired_bootstrap_delta", "bootstrap_ratio",
           "paired_bootstrap_ratio_delta"]


@dataclass(frozen=True, eq=False)
class UtteranceCounts:
    """Word-level edit counts per scored utterance.

    Utterances whose reference is empty after normalisation are left out (as in ``score``).

    Attributes:
        substitutions, deletions, insertions: (N,) integer counts per utterance.
        reference_words: (N,) words in each normalised reference (>= 1).
        hypothesis_words: (N,) words in each normalised hypothesis.
        rows: (N,) index of each scored utterance in the lists given to :func:`utterance_counts`.
    """

    substitutions: np.ndarray
    deletions: np.ndarray
    insertions: np.ndarray
    reference_words: np.ndarray
    hypothesis_words: np.ndarray
    rows: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        """(N,) substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return float(self.errors.sum() / self.reference_words.sum())

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def utterance_counts(
    references: list[str], hypotheses: list[str], language: str | None = None
) -> UtteranceCounts:
    """Align each (reference, hypothesis) pair after normalisation and count its edits.

    Raises:
        ValueError: the lists differ in length, or no reference has a word after normalisation.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalise = normalizer_for(language)
    pairs = [
        (i, normalise(r).strip(), normalise(h).strip())
        for i, (r, h) in enumerate(zip(references, hypotheses, strict=True))
    ]
    kept = [p for p in pairs if p[1]]
    if not kept:
        raise ValueError("no reference has any words after normalisation")
    output = jiwer.process_words([p[1] for p in kept], [p[2] for p in kept])
    counts = np.zeros((len(kept), 3), dtype=np.int64)  # S, D, I
    column = {"substitute": 0, "delete": 1, "insert": 2}
    for row, chunks in enumerate(output.alignments):
        for chunk in chunks:
            if chunk.type == "insert":
                counts[row, 2] += chunk.hyp_end_idx - chunk.hyp_start_idx
            elif chunk.type in column:
                counts[row, column[chunk.type]] += chunk.ref_end_idx - chunk.ref_start_idx
    return UtteranceCounts(
        substitutions=counts[:, 0],
        deletions=counts[:, 1],
        insertions=counts[:, 2],
        reference_words=np.array([len(words) for words in output.references], dtype=np.int64),
        hypothesis_words=np.array([len(words) for words in output.hypotheses], dtype=np.int64),
        rows=np.array([p[0] for p in kept], dtype=np.int64),
    )


def _draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) utterance indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_wer(
    counts: UtteranceCounts, *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of corpus WER.

    Args:
        counts: per-utterance counts (N utterances).
        resamples: bootstrap replicates B.
        level: coverage, e.g. 0.95.
        seed: the draws are a pure function of (seed, N, B).

    Returns:
        (low, high) WER bounds.
    """
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    index = _draws(len(counts), resamples, seed)  # (B, N)
    replicates = counts.errors[index].sum(axis=1) / counts.reference_words[index].sum(axis=1)
    return _interval(replicates, level)


def paired_bootstrap_delta(
    base: UtteranceCounts,
    tuned: UtteranceCounts,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Confidence interval of ``WER(tuned) - WER(base)`` on the same utterances, resampled together.

    Raises:
        ValueError: the two were not scored on the same utterances.
    """
    if not np.array_equal(base.rows, tuned.rows) or not np.array_equal(
        base.reference_words, tuned.reference_words
    ):
        raise ValueError("paired bootstrap needs both models scored on the same utterances")
    index = _draws(len(base), resamples, seed)
    words = base.reference_words[index].sum(axis=1)
    delta = (tuned.errors[index].sum(axis=1) - base.errors[index].sum(axis=1)) / words
    return _interval(delta, level)


def bootstrap_ratio(
    numerators: np.ndarray,
    denominators: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of a ratio of per-utterance sums, ``sum(num) / sum(den)``.

    The same resampling as :func:`bootstrap_wer` (whole utterances, with replacement), for any corpus
    ratio, e.g. term recall (term hits over term occurrences). Replicates whose denominator sums to 0
    are left out.

    Args:
        numerators, denominators: (N,) per-utterance counts.

    Returns:
        (low, high), or None when no replicate has a denominator (nothing to estimate).
    """
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    numerators, denominators = np.asarray(numerators), np.asarray(denominators)
    if numerators.shape != denominators.shape or numerators.ndim != 1 or not len(numerators):
        raise ValueError("bootstrap_ratio needs two (N,) arrays of the same length, N >= 1")
    index = _draws(len(numerators), resamples, seed)
    tops, bottoms = numerators[index].sum(axis=1), denominators[index].sum(axis=1)
    kept = bottoms > 0
    if not kept.any():
        return None
    return _interval(tops[kept] / bottoms[kept], level)


def paired_bootstrap_ratio_delta(
    base: np.ndarray,
    tuned: np.ndarray,
    denominators: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Interval of ``sum(tuned) / sum(den) - sum(base) / sum(den)``, the same utterances resampled together.

    For a ratio with a shared denominator (term recall before and after: the references' term
    occurrences). None when no replicate has a denominator.
    """
    base, tuned, denominators = np.asarray(base), np.asarray(tuned), np.asarray(denominators)
    if not base.shape == tuned.shape == denominators.shape or base.ndim != 1 or not len(base):
        raise ValueError("paired_bootstrap_ratio_delta needs three (N,) arrays of the same length, N >= 1")
    # sum(tuned)/sum(den) - sum(base)/sum(den) = sum(tuned - base)/sum(den): one ratio, resampled as one
    return bootstrap_ratio(tuned - base, denominators, resamples=resamples, level=level, seed=seed)
