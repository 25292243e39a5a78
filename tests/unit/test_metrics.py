"""WER/CER scoring; every expected value below is counted by hand."""

from __future__ import annotations

import pytest

from asrtune.evaluation.metrics import score
from asrtune.evaluation.normalize import normalizer_for


def test_perfect_match():
    s = score(["the cat sat"], ["the cat sat"])
    assert (s.wer, s.cer, s.raw_wer) == (0.0, 0.0, 0.0)
    assert (s.substitutions, s.deletions, s.insertions, s.reference_words, s.n, s.skipped_empty) == (
        0,
        0,
        0,
        3,
        1,
        0,
    )


def test_one_deletion_in_six_words():
    s = score(["the cat sat on the mat"], ["the cat sat on mat"])
    assert s.wer == pytest.approx(1 / 6)
    assert (s.substitutions, s.deletions, s.insertions, s.reference_words) == (0, 1, 0, 6)
    # Characters: "the cat sat on the mat" has 22; dropping "the " costs 4 edits.
    assert s.cer == pytest.approx(4 / 22)


def test_substitution_and_character_rate():
    s = score(["cat"], ["cut"])
    assert (s.wer, s.substitutions) == (1.0, 1)
    assert s.cer == pytest.approx(1 / 3)


def test_insertion_can_push_wer_above_one():
    s = score(["hello"], ["hello there friend"])
    assert (s.insertions, s.reference_words) == (2, 1)
    assert s.wer == pytest.approx(2.0)


def test_empty_hypothesis_is_all_deletions():
    s = score(["hello world"], [""])
    assert (s.wer, s.deletions, s.substitutions) == (1.0, 2, 0)


def test_corpus_level_not_mean_of_utterances():
    # 1 error in 2 words and 0 errors in 4 words: corpus WER 1/6, not the mean (0.5 + 0) / 2.
    s = score(["good morning", "how are you today"], ["good evening", "how are you today"])
    assert s.wer == pytest.approx(1 / 6)
    assert (s.reference_words, s.n) == (6, 2)


def test_english_normaliser_ignores_case_punctuation_and_spelling():
    s = score(["Hello, World!"], ["hello world"], "en")
    assert s.wer == 0.0
    assert s.raw_wer == 1.0  # "Hello," != "hello" and "World!" != "world" as written
    assert score(["Mr. Smith"], ["mister smith"]).wer == 0.0  # None means English
    assert score(["I have ten apples"], ["I have 10 apples"], "en").wer == 0.0
    assert score(["the colour"], ["the color"], "en").wer == 0.0  # British/American spelling


def test_other_languages_use_the_basic_normaliser():
    assert score(["Habari, yako?"], ["habari yako"], "sw").wer == 0.0
    s = score(["the colour"], ["the color"], "fr")  # no English spelling table
    assert (s.wer, s.substitutions) == (0.5, 1)
    assert normalizer_for("sw")("Habari,  YAKO?").split() == ["habari", "yako"]


def test_references_empty_after_normalisation_are_skipped():
    # English normaliser drops bracketed sound events and fillers such as "um".
    s = score(["(laughs)", "um", "hello there"], ["ha ha", "", "hello where"])
    assert (s.n, s.skipped_empty) == (1, 2)
    assert s.wer == pytest.approx(1 / 2)


def test_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a b", "c"], ["a b"])
    with pytest.raises(ValueError, match="no reference has any words"):
        score(["!!!", "?"], ["x", "y"])


def test_as_dict_has_every_field():
    d = score(["a cat"], ["a bat"]).as_dict()
    assert set(d) == {
        "wer",
        "cer",
        "raw_wer",
        "substitutions",
        "deletions",
        "insertions",
        "reference_words",
        "n",
        "skipped_empty",
    }
    assert d["wer"] == pytest.approx(0.5)


@pytest.mark.parametrize("tag", ["en", "en-US", "en_GB", "EN", "English", "english", " en-au "])
def test_every_spelling_of_english_gets_the_english_normaliser(tag):
    # Before language tags were read once, only "en", "english" and None did: "en-US" lost the
    # spelling table and number handling, so "colour"/"color" and "10"/"ten" counted as errors.
    assert score(["the colour of 10 apples"], ["the color of ten apples"], tag).wer == 0.0
    assert normalizer_for(tag)("Mr. Smith") == normalizer_for(None)("Mr. Smith") == "mister smith"


@pytest.mark.parametrize("tag, code", [("sw-KE", "sw"), ("Swahili", "sw"), ("pt_BR", "pt"), ("Castilian", "es"),
                                       ("multi", "multi"), (None, None), ("xx-YY", "xx"), ("", None)])
def test_language_tags_are_read_once_into_whisper_codes(tag, code):
    from asrtune.languages import canonical_language

    assert canonical_language(tag) == code


def test_run_config_reads_its_language_tag_once():
    from asrtune.config import config_from_dict

    assert config_from_dict({"language": "en-US"}).language == "en"
    assert config_from_dict({"language": "Swahili"}).language == "sw"
