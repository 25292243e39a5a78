"""Timestamps out: training labels with Whisper's timestamp tokens, boundary metrics, word-level outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_processor, write_tone

from asrtune.config import DataConfig
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import Utterance
from asrtune.data.rows import Span, Word
from asrtune.errors import AsrtuneError
from asrtune.evaluation.timing import boundary_errors, error_summary, paired_difference, word_boundary_errors
from asrtune.inference.formats import render
from asrtune.inference.longform import Segment, Transcript
from asrtune.models.family import family_named


def _processor():
    """The test processor (1 s window) with Whisper's 1501 timestamp tokens, as asrtune's CT2 conversion adds."""
    processor = make_processor()
    processor.tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    return processor


def _rows(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.9)
    write_tone(tmp_path / "b.wav", seconds=0.9)
    timed = Utterance(id="a", audio=str(tmp_path / "a.wav"), text="hello world good morning", duration=0.9,
                      segments=(Span(text="hello world", start=0.1, end=0.42), Span(text="good morning", start=0.5,
                                                                                    end=0.86)))
    plain = Utterance(id="b", audio=str(tmp_path / "b.wav"), text="the cat sat", duration=0.9)
    return [timed, plain]


def test_timestamp_labels_put_times_around_each_segment(tmp_path):
    processor = _processor()
    tokenizer = processor.tokenizer
    dataset = FeatureDataset(_rows(tmp_path), processor, multilingual=False, timestamps=1.0)
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    hello = tokenizer.encode(" hello world", add_special_tokens=False)
    good = tokenizer.encode(" good morning", add_special_tokens=False)
    expected = [first + 5, *hello, first + 21, first + 25, *good, first + 43, tokenizer.eos_token_id]
    assert dataset.timestamp_labels[0].tolist() == expected  # no <|notimestamps|>: times are targets
    assert dataset.timestamp_labels[1] is None  # no segments: <|notimestamps|> labels always
    assert dataset.labels_for(0, draw=3).tolist() == expected
    assert dataset.labels_for(0).tolist() == dataset.labels[0].tolist()  # evaluation: plain labels
    assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") in dataset.labels_for(1, draw=3).tolist()
    assert dataset.target_tokens(0, draw=3) == len(expected)
    subset = dataset.subset([0])
    assert subset.labels_for(0, draw=0).tolist() == expected


def test_a_share_of_batches_trains_with_timestamps(tmp_path):
    dataset = FeatureDataset(_rows(tmp_path), _processor(), multilingual=False, timestamps=0.5, seed=3)
    chosen = [dataset.timestamp_batch(draw) for draw in range(400)]
    assert 0.4 < np.mean(chosen) < 0.6
    assert chosen == [dataset.timestamp_batch(draw) for draw in range(400)]  # a pure function of (seed, draw)
    timed = [draw for draw in range(400) if chosen[draw]]
    assert len(dataset.labels_for(0, timed[0])) != len(dataset.labels_for(0, next(
        d for d in range(400) if not chosen[d])))


def test_segments_outside_the_window_fall_back_to_plain_labels(tmp_path):
    rows = _rows(tmp_path)
    late = Utterance(id="c", audio=rows[0].audio, text="x", duration=0.9,
                     segments=(Span(text="x", start=0.5, end=1.3),))  # past the 1 s window
    dataset = FeatureDataset([late], _processor(), multilingual=False, timestamps=True)
    assert dataset.timestamp_labels == [None]
    with pytest.raises(AsrtuneError, match="no timestamp tokens"):
        FeatureDataset(rows, make_processor(), multilingual=False, timestamps=True)


def test_timestamps_config_and_families():
    assert DataConfig(timestamps=True).timestamp_share == 1.0
    assert DataConfig(timestamps=0.25).timestamp_share == 0.25
    with pytest.raises(AsrtuneError, match="data.timestamps"):
        DataConfig(timestamps=1.5)
    with pytest.raises(AsrtuneError, match="timestamp tokens are Whisper's"):
        family_named("qwen2_audio").timestamp_sequences(None, [()], ["a"], [None], [1.0], multilingual=False,
                                                        task="transcribe")


def test_boundary_errors_match_each_reference_boundary_to_the_nearest():
    reference = [Span(text="a", start=1.0, end=3.0), Span(text="b", start=4.0, end=6.0)]
    hypothesis = [Span(text="a", start=1.1, end=2.0), Span(text="a2", start=2.0, end=3.3),
                  Span(text="b", start=3.9, end=6.0)]
    errors = boundary_errors(reference, hypothesis)
    assert errors.tolist() == pytest.approx([0.1, 0.1, 0.3, 0.0])
    assert np.isinf(boundary_errors(reference, [])).all()
    summary = error_summary(errors)
    assert summary["median"] == pytest.approx(0.1) and summary["mean"] == pytest.approx(0.125)
    assert summary["within_0.2s"] == 0.75 and summary["median_ci95"][0] <= 0.1 <= summary["median_ci95"][1]
    paired = paired_difference(errors, errors + 0.5)
    assert paired["median_delta"] == pytest.approx(0.5)


def test_word_boundary_errors_pair_words_by_text():
    reference = [Word(text="Hello", start=0.0, end=0.5), Word(text="big", start=0.6, end=0.9),
                 Word(text="world.", start=1.0, end=1.5)]
    hypothesis = [Word(text="hello", start=0.1, end=0.5), Word(text="world", start=1.2, end=1.4)]
    assert word_boundary_errors(reference, hypothesis).tolist() == pytest.approx([0.1, 0.2, 0.0, 0.1])


def _transcript():
    words = (Word(text="Hello", start=0.5, end=0.9, score=0.9), Word(text="world.", start=1.0, end=1.6, score=0.8))
    return Transcript(audio="a.wav", duration=2.0, language="en",
                      segments=[Segment(start=0.5, end=1.6, text="Hello world.", words=words)])


def test_word_timestamps_in_json_srt_and_vtt():
    transcript = _transcript()
    record = json.loads(render(transcript, "json"))
    assert record["segments"][0]["words"][1] == {"word": "world.", "start": 1.0, "end": 1.6, "probability": 0.8,
                                                 "heard": True}
    srt = render(transcript, "srt")
    assert "1\n00:00:00,500 --> 00:00:00,900\n<u>Hello</u> world.\n" in srt
    assert "2\n00:00:01,000 --> 00:00:01,600\nHello <u>world.</u>\n" in srt
    vtt = render(transcript, "vtt")
    assert "00:00:00.500 --> 00:00:01.600\nHello <00:00:01.000>world.\n" in vtt
    plain = Transcript(audio="a.wav", duration=2.0, language="en",
                       segments=[Segment(start=0.5, end=1.6, text="Hello world.")])
    assert render(plain, "srt") == "1\n00:00:00,500 --> 00:00:01,600\nHello world.\n\n"


def test_evaluate_reports_boundary_errors_of_rows_with_segments(tiny_model_dir, tmp_path):
    from asrtune.api import evaluate
    from asrtune.data.manifest import write_manifest

    rows = _rows(tmp_path)
    write_manifest(rows, tmp_path / "m.jsonl")
    record = evaluate(str(tiny_model_dir), tmp_path / "m.jsonl", timestamps=True, progress=False,
                      max_new_tokens=8)
    quality = record["timestamps"]
    assert quality["rows"] == 1 and quality["segments"] == 2 and quality["boundary_error"]["n"] == 4
    assert "base" not in quality  # an HF folder has no base model to compare with
    write_manifest(rows[1:], tmp_path / "plain.jsonl")
    with pytest.raises(AsrtuneError, match="no row of .* has segments"):
        evaluate(str(tiny_model_dir), tmp_path / "plain.jsonl", timestamps=True, progress=False)
