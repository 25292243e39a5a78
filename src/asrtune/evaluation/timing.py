"""Timestamp quality: how far a transcript's segment (and word) boundaries are from known ones.

Every reference segment has a start and an end; each is matched to the nearest hypothesis boundary of the same
kind (a start to the nearest segment start, an end to the nearest end), and the absolute distance is its error,
as ``benchmarks/deploy.py longform`` measured segment ends. A hypothesis that splits a segment in two still has
the reference's boundaries, so the counts of segments are reported beside the errors. Words: a reference word's
start and end against those of the hypothesis word the text alignment pairs it with (jiwer's, after the
normaliser WER uses), where both sides have word times.

Intervals are percentile bootstraps over boundaries (:mod:`asrtune.evaluation.bootstrap`); the paired one
resamples the same reference boundaries for two hypotheses.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np

from asrtune.evaluation.bootstrap import _draws, _interval
from asrtune.evaluation.normalize import normalizer_for

__all__ = ["boundary_errors", "word_boundary_errors", "error_summary", "paired_difference"]


def _nearest(targets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    if not len(candidates):
        return np.full(len(targets), np.inf)
    return np.abs(targets[:, None] - candidates[None, :]).min(axis=1)


def boundary_errors(reference: Sequence, hypothesis: Sequence) -> np.ndarray:
    """Seconds from each reference boundary to the nearest hypothesis boundary of its kind.

    Args:
        reference: segments with ``.start`` and ``.end`` (seconds), R of them.
        hypothesis: the transcript's segments, H of them.

    Returns:
        (2R,) errors: the R starts' then the R ends' (inf for every one when H is 0).
    """
    ref_starts = np.array([s.start for s in reference], dtype=np.float64)
    ref_ends = np.array([s.end for s in reference], dtype=np.float64)
    hyp_starts = np.array([s.start for s in hypothesis], dtype=np.float64)
    hyp_ends = np.array([s.end for s in hypothesis], dtype=np.float64)
    return np.concatenate([_nearest(ref_starts, hyp_starts), _nearest(ref_ends, hyp_ends)])


def word_boundary_errors(reference: Sequence, hypothesis: Sequence, language: str | None = "en") -> np.ndarray:
    """Seconds between the starts and ends of reference words and the hypothesis words paired with them.

    Args:
        reference, hypothesis: words with ``.text`` (or ``.word``), ``.start``, ``.end``.

    Returns:
        (2M,) errors for the M pairs jiwer's alignment finds equal after normalisation (starts, then ends).
    """
    normalise = normalizer_for(language)

    def tokens(words: Sequence) -> tuple[list[str], list[int]]:
        texts, owners = [], []
        for index, word in enumerate(words):
            for piece in normalise(getattr(word, "text", None) or getattr(word, "word", "")).split():
                texts.append(piece)
                owners.append(index)
        return texts, owners

    ref_tokens, ref_owner = tokens(reference)
    hyp_tokens, hyp_owner = tokens(hypothesis)
    if not ref_tokens or not hyp_tokens:
        return np.zeros(0)
    output = jiwer.process_words(" ".join(ref_tokens), " ".join(hyp_tokens))
    starts, ends = [], []
    for chunk in output.alignments[0]:
        if chunk.type != "equal":
            continue
        for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
            ref = reference[ref_owner[chunk.ref_start_idx + offset]]
            hyp = hypothesis[hyp_owner[chunk.hyp_start_idx + offset]]
            starts.append(abs(ref.start - hyp.start))
            ends.append(abs(ref.end - hyp.end))
    return np.array(starts + ends, dtype=np.float64)


def error_summary(errors: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean and median absolute error (seconds) with 95% bootstrap intervals, the count, and shares within
    0.2 and 0.5 s."""
    errors = np.asarray(errors, dtype=np.float64)
    if not len(errors):
        return {"n": 0, "mean": None, "median": None, "mean_ci95": None, "median_ci95": None,
                "within_0.2s": None, "within_0.5s": None}
    index = _draws(len(errors), resamples, seed)
    finite = np.isfinite(errors)
    return {
        "n": int(len(errors)),
        "mean": float(errors.mean()) if finite.all() else float("inf"),
        "median": float(np.median(errors)),
        "mean_ci95": list(_interval(errors[index].mean(axis=1), 0.95)) if finite.all() else None,
        "median_ci95": list(_interval(np.median(errors[index], axis=1), 0.95)),
        "within_0.2s": float((errors <= 0.2).mean()),
        "within_0.5s": float((errors <= 0.5).mean()),
    }


def paired_difference(base: np.ndarray, tuned: np.ndarray, *, resamples: int = 1000, seed: int = 0) -> dict:
    """``median(tuned) - median(base)`` over the same reference boundaries, with a paired 95% interval."""
    base, tuned = np.asarray(base, dtype=np.float64), np.asarray(tuned, dtype=np.float64)
    if len(base) != len(tuned) or not len(base):
        raise ValueError("paired errors need the same, non-empty, boundaries")
    index = _draws(len(base), resamples, seed)
    replicates = np.median(tuned[index], axis=1) - np.median(base[index], axis=1)
    return {"median_delta": float(np.median(tuned) - np.median(base)),
            "median_delta_ci95": list(_interval(replicates, 0.95))}
