"""Loops, run-on hypotheses, and the generated non-speech clips."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asrtune.evaluation.hallucination import (
    NONSPEECH,
    LoopRule,
    hallucination_stats,
    loop_in,
    nonspeech_stats,
    write_nonspeech_clips,
)


@pytest.mark.parametrize(
    ("hypothesis", "reference", "loop"),
    [
        ("thank you thank you thank you", "thank you", ("thank", "you")),
        ("the patient the patient was seen", "the patient was seen", None),  # two repeats: ordinary
        ("no no no", "no", None),  # a single word needs four
        ("no no no no", "no", ("no",)),
        ("i said no no no no", "i said no no no no", None),  # the reference has the same run
        ("a b c a b c a b c d", "a b c d", ("a", "b", "c")),
        ("one two three four", "one two three four", None),
    ],
)
def test_loop_detection(hypothesis, reference, loop):
    assert loop_in(hypothesis.split(), reference.split()) == loop


def test_loop_rule_thresholds_are_settings():
    assert loop_in("go go".split(), rule=LoopRule(min_unigram_repeats=2)) == ("go",)
    long_gram = "w1 w2 w3 w4 w5 w6 " * 3
    assert loop_in(long_gram.split()) == tuple("w1 w2 w3 w4 w5 w6".split())
    assert loop_in(long_gram.split(), rule=LoopRule(max_n=5)) is None


def test_hallucination_shares():
    references = ["the cat sat", "hello there", "open the door", "good", "[music]"]
    hypotheses = [
        "the cat sat",  # fine
        "hello there hello there hello there",  # loop and 3x the words
        "open the door and then walk away",  # 7 > 2 x 3 words: too long, no loop
        "good",  # fine
        "anything",  # empty reference after normalisation: skipped
    ]
    stats = hallucination_stats(references, hypotheses, "en")
    assert (stats.n, stats.loops, stats.too_long, stats.flagged) == (4, 1, 2, 2)
    assert (stats.loop_rate, stats.long_rate, stats.rate) == (0.25, 0.5, 0.5)
    assert stats.examples == (1, 2)


def test_nonspeech_clips_are_deterministic_and_quiet(tmp_path):
    rows = write_nonspeech_clips(tmp_path / "a", seconds=(1.0, 2.0), seed=3)
    again = write_nonspeech_clips(tmp_path / "b", seconds=(1.0, 2.0), seed=3)
    assert [r.id for r in rows] == [f"nonspeech-{k}-{j}" for k in NONSPEECH.names() for j in (0, 1)]
    assert {r.text for r in rows} == {""}
    levels = {}
    for row, twin in zip(rows, again, strict=True):
        audio, rate = sf.read(row.audio, dtype="float32")
        assert rate == 16000 and len(audio) == int(row.duration * 16000)
        assert np.array_equal(audio, sf.read(twin.audio, dtype="float32")[0])
        levels[row.id] = float(np.sqrt(np.mean(audio**2)))
    assert levels["nonspeech-silence-0"] < 1e-3
    for kind in ("white", "pink", "brown", "hum"):
        assert levels[f"nonspeech-{kind}-1"] == pytest.approx(0.03, rel=0.05)


def test_noise_colours_have_their_spectral_slopes():
    n = 16000 * 4

    def low_to_high(kind):
        power = np.abs(np.fft.rfft(NONSPEECH.get(kind)(np.random.default_rng(0), n))) ** 2
        freqs = np.fft.rfftfreq(n, 1 / 16000)
        return power[(freqs > 50) & (freqs < 200)].mean() / power[(freqs > 2000) & (freqs < 8000)].mean()

    white, pink, brown = low_to_high("white"), low_to_high("pink"), low_to_high("brown")
    assert 0.5 < white < 2 and pink > 5 * white and brown > 5 * pink


def test_nonspeech_word_counts():
    ids = ["nonspeech-silence-0", "nonspeech-silence-1", "nonspeech-white-0", "nonspeech-hum-0"]
    stats = nonspeech_stats(ids, ["", "Thank you.", "you you you", " "], "en")
    assert (stats.clips, stats.words, stats.clips_with_words) == (4, 5, 2)
    assert stats.words_per_clip == 1.25 and stats.share_with_words == 0.5
    assert stats.by_kind == {"silence": 2, "white": 3, "hum": 0}
