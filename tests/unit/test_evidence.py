"""Per-utterance counts, bootstrap intervals, per-set reports and the forgetting-budget choice."""

from __future__ import annotations

import numpy as np
import pytest

from asrtune.evaluation.bootstrap import bootstrap_wer, paired_bootstrap_delta, utterance_counts
from asrtune.evaluation.forgetting import (
    Transcripts,
    checkpoint_rank,
    forgetting_of,
    is_better,
    within_budget,
)
from asrtune.evaluation.metrics import score
from asrtune.training.evidence import GENERAL, NONSPEECH_SET, TARGET, set_report

REFS = ["the cat sat on the mat", "open the door", "good morning", "[music]"]
HYPS = ["the cat sat on a mat today", "open door", "good morning", "la la"]


def test_counts_by_hand_and_equal_to_score():
    counts = utterance_counts(REFS, HYPS, "en")
    assert counts.rows.tolist() == [0, 1, 2]  # the empty reference is left out, as score() does
    assert counts.substitutions.tolist() == [1, 0, 0]  # the -> a
    assert counts.insertions.tolist() == [1, 0, 0]  # today
    assert counts.deletions.tolist() == [0, 1, 0]  # the
    assert counts.reference_words.tolist() == [6, 3, 2] and counts.hypothesis_words.tolist() == [7, 2, 2]
    scores = score(REFS, HYPS, "en")
    assert counts.wer == pytest.approx(scores.wer) == pytest.approx(3 / 11)
    assert (int(counts.substitutions.sum()), int(counts.deletions.sum()), int(counts.insertions.sum())) == (
        scores.substitutions,
        scores.deletions,
        scores.insertions,
    )


def test_bootstrap_interval_by_hand():
    # Two utterances, WER 0 and 1, one word each: replicates are 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
    counts = utterance_counts(["a", "b"], ["a", "x"], "en")
    assert bootstrap_wer(counts, resamples=2000) == (0.0, 1.0)
    assert bootstrap_wer(counts, resamples=2000, level=0.4) == (0.5, 0.5)
    many = utterance_counts(REFS * 20, HYPS * 20, "en")
    low, high = bootstrap_wer(many, seed=1)
    assert low < many.wer < high and high - low < 0.2
    assert bootstrap_wer(many, seed=1) == (low, high)  # seeded


def test_paired_delta_interval():
    refs = [f"word{i} common text here" for i in range(30)]
    base = utterance_counts(refs, [r.replace("common", "x") for r in refs])  # 1 error in 4 everywhere
    better = utterance_counts(refs, [r if i % 2 else r.replace("common", "x") for i, r in enumerate(refs)])
    low, high = paired_bootstrap_delta(base, better)
    assert high < 0 and low >= -0.25  # better on half the utterances, never worse
    assert paired_bootstrap_delta(base, base) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap_delta(base, utterance_counts(refs[:3], refs[:3]))


def test_set_report_against_the_base():
    ids = [f"u{i}" for i in range(4)]
    tuned = Transcripts(ids, REFS, HYPS, "en")
    base = Transcripts(
        list(reversed(ids)), list(reversed(REFS)), ["", "", "", "the cat sat on the mat"], "en"
    )
    report = set_report(TARGET, tuned, base, resamples=200)
    # The base is matched by id: u0 right, u1 and u2 empty (3 + 2 deletions); u3 has no words to score.
    assert report["wer"] == pytest.approx(3 / 11) and report["base"]["wer"] == pytest.approx(5 / 11)
    assert report["base"]["deletions"] == 5
    assert report["delta_wer"] == pytest.approx(-2 / 11)
    assert report["relative_wer_change"] == pytest.approx(-2 / 5)
    low, high = report["delta_wer_ci95"]  # tuned is worse on u0, better on u1: the interval spans 0
    assert low < report["delta_wer"] < high and low < 0 < high
    assert (report["substitutions"], report["insertions"], report["deletions"]) == (1, 1, 1)
    assert report["hallucination"]["n"] == 3


def test_nonspeech_report():
    tuned = Transcripts(["nonspeech-white-0", "nonspeech-hum-0"], ["", ""], ["thank you", ""], None)
    base = Transcripts(["nonspeech-white-0", "nonspeech-hum-0"], ["", ""], ["", ""], None)
    report = set_report(NONSPEECH_SET, tuned, base)
    assert (report["words"], report["words_per_clip"], report["base"]["words"]) == (2, 1.0, 0)
    assert report["delta_words_per_clip"] == 1.0


def test_forgetting_is_measured_on_the_same_utterances():
    base = Transcripts(["a", "b"], ["one word", "two words"], ["one word", "xx yy"], "en")
    tuned = Transcripts(["b"], ["two words"], ["two words"], "en")  # a subset (eval_limit)
    assert forgetting_of({GENERAL: tuned}, {GENERAL: base}) == {GENERAL: -1.0}


def test_checkpoint_rank_under_a_budget():
    budget = 0.03
    assert within_budget(None, budget) and within_budget(0.03, budget) and not within_budget(0.031, budget)
    inside_bad, inside_good = checkpoint_rank(0.5, 0.0, budget), checkpoint_rank(0.4, 0.03, budget)
    outside_best = checkpoint_rank(0.1, 0.2, budget)
    outside_less = checkpoint_rank(0.6, 0.05, budget)
    assert is_better(inside_good, inside_bad) and is_better(inside_bad, outside_best)
    assert is_better(outside_less, outside_best)  # outside the budget, the one that forgot least wins
    assert is_better(outside_best, None)
    assert not is_better(inside_good, inside_good)  # a tie keeps the earlier checkpoint
    assert sorted([outside_best, inside_bad, outside_less, inside_good]) == [
        inside_good,
        inside_bad,
        outside_less,
        outside_best,
    ]
    assert np.isfinite(checkpoint_rank(0.2, None, budget)).all()
