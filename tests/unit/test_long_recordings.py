"""Long recordings in: cutting at pauses, forced-alignment drops, subtitle folders, segments in manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import read_jsonl, write_tone

from asrtune.cli import main
from asrtune.data.clean import CleanSettings
from asrtune.data.manifest import Utterance, read_manifest, write_manifest
from asrtune.data.prepare import PrepareSettings, prepare
from asrtune.data.rows import Span, Word
from asrtune.data.segment import group_at_pauses, piece_score, sentence_segments
from asrtune.errors import AsrtuneError


def _words(texts, start=0.0, length=0.4, gap=0.1, pauses=None):
    words, t = [], start
    for i, text in enumerate(texts):
        words.append(Word(text=text, start=t, end=t + length, score=0.8))
        t += length + (pauses or {}).get(i, gap)
    return tuple(words)


def test_groups_are_cut_at_the_longest_pause():
    words = _words([f"w{i}" for i in range(60)], pauses={20: 1.5, 40: 0.9})  # 0.5 s a word, pauses after 20 and 40
    groups = group_at_pauses(words, 30.0)
    assert [len(g) for g in groups] == [21, 39]  # the 1.5 s pause, not the greedy 30 s fill
    assert all(g[-1].end - g[0].start + 0.2 <= 30.0 for g in groups)


def test_sentence_segments_split_at_sentence_ends_and_pauses():
    words = _words(["Hello", "there.", "How", "are", "you", "today"], start=10.0, pauses={3: 0.8})
    segments = sentence_segments(words, offset=9.9)
    assert [s.text for s in segments] == ["Hello there.", "How are", "you today"]
    assert segments[0].start == pytest.approx(0.1) and segments[-1].end == pytest.approx(words[-1].end - 9.9)
    assert piece_score(words) == pytest.approx(0.8)


def _aligned_words(row, samples):
    """A stand-in for forced alignment: the row's words spread over its audio at 0.5 s each, a sentence of
    four words ("Nothing like this here.") not heard, at no time, as the real aligner leaves such text."""
    words, t = [], (row.start or 0.0) + 0.2
    for text in row.text.split():
        if text in ("Nothing", "like", "this", "here."):
            words.append(Word(text=text, start=t, end=t, score=0.001, heard=False))
            continue
        words.append(Word(text=text, start=t, end=t + 0.4, score=0.9))
        t += 0.5 + (0.7 if text.endswith(".") else 0.0)
    assert t <= len(samples) / 16000 + 0.01
    return tuple(words)


def test_prepare_align_cuts_long_rows_and_drops_unheard_text(tmp_path):
    sentence = "one two three four five six seven eight nine ten."
    text = " ".join([sentence] * 5 + ["Nothing like this here."] + [sentence] * 3)
    write_tone(tmp_path / "talk.wav", seconds=50.0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "talk", "audio": "talk.wav", "text": text}) + "\n")
    settings = PrepareSettings(clean=CleanSettings(align=True), progress=False)
    report = prepare(tmp_path / "m.jsonl", tmp_path / "out" / "pieces.jsonl", settings=settings,
                     aligner=_aligned_words)
    kept = read_manifest(tmp_path / "out" / "pieces.jsonl")
    assert " ".join(u.text for u in kept) == " ".join([sentence] * 8)  # every heard word, in order
    assert all(u.duration <= 30.0 for u in kept) and len(kept) >= 2
    assert all(u.segments and u.segments[0].text.startswith("one") for u in kept)
    drops = [d for d in report["dropped"] if d["reason"] == "alignment"]
    assert len(drops) == 1 and "Nothing like this here." in drops[0]["detail"]
    assert report["reasons"]["alignment"] == 1 and report["reasons"]["too_long"] == 0
    summary = report["alignment"]
    assert summary["words"] == 84 and summary["words_kept"] == 80 and summary["words_not_heard"] == 4
    assert summary["rows_aligned"] == 1 and 0 < summary["seconds_kept"] <= summary["seconds_aligned"]
    assert summary["kept_score_min"] == pytest.approx(0.9)


def test_prepare_align_drops_low_scoring_pieces(tmp_path):
    write_tone(tmp_path / "talk.wav", seconds=40.0)
    text = " ".join(["word."] * 30)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "talk", "audio": "talk.wav", "text": text}) + "\n")

    def unsure(row, samples):
        return tuple(Word(text=w, start=0.2 + 1.2 * i, end=0.6 + 1.2 * i, score=0.01)
                     for i, w in enumerate(row.text.split()))

    settings = PrepareSettings(clean=CleanSettings(align=True, min_alignment_score=0.05), progress=False)
    report = prepare(tmp_path / "m.jsonl", tmp_path / "pieces.jsonl", settings=settings, aligner=unsure)
    assert report["kept"] == 0 and report["reasons"]["alignment"] >= 2
    assert all("alignment score 0.010 < 0.05" in d["detail"] for d in report["dropped"])


def test_without_align_long_rows_stay_too_long_and_the_aligner_is_required(tmp_path):
    write_tone(tmp_path / "talk.wav", seconds=40.0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "talk", "audio": "talk.wav", "text": "a b c"}) + "\n")
    report = prepare(tmp_path / "m.jsonl", tmp_path / "p.jsonl", settings=PrepareSettings(progress=False))
    assert report["reasons"]["too_long"] == 1 and "alignment" not in report
    with pytest.raises(AsrtuneError, match="aligner"):
        prepare(tmp_path / "m.jsonl", tmp_path / "p.jsonl",
                settings=PrepareSettings(clean=CleanSettings(align=True), progress=False))


SRT = """1
00:00:01,000 --> 00:00:04,000
Good <i>morning</i>, everyone.

2
00:00:05,000 --> 00:00:09,500
Today we talk
about the weather.

3
00:00:20,000 --> 00:00:24,000
It will rain tomorrow.

4
00:00:33,000 --> 00:00:37,000
Bring an umbrella.
"""

VTT = """WEBVTT

00:00:00.500 --> 00:00:02.000
Short and sweet.
"""


def test_subtitle_folder_prepares_into_pieces_whose_segments_are_the_cues(tmp_path, capsys):
    folder = tmp_path / "videos"
    write_tone(folder / "lecture.wav", seconds=40.0)
    (folder / "lecture.srt").write_text(SRT, encoding="utf-8")
    write_tone(folder / "clip.flac", seconds=3.0)
    (folder / "clip.vtt").write_text(VTT, encoding="utf-8")
    write_tone(folder / "orphan.wav", seconds=1.0)
    (folder / "lonely.srt").write_text(SRT, encoding="utf-8")
    assert main(["prepare", str(folder), "--out", str(tmp_path / "subs.jsonl"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "subs.report.json").read_text())
    assert report["format"] == "subtitles"
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "subs.jsonl")}
    assert set(rows) == {"clip-000", "lecture-000", "lecture-001"}
    first, second = rows["lecture-000"], rows["lecture-001"]
    # cues 1-3 fit one piece (0.9 .. 24.1 s); the 8 s gap before cue 4 is where it is cut
    assert [s["text"] for s in first["segments"]] == ["Good morning, everyone.", "Today we talk about the weather.",
                                                     "It will rain tomorrow."]
    assert first["segments"][0]["start"] == pytest.approx(0.1) and first["segments"][2]["end"] == pytest.approx(23.1)
    assert first["duration"] == pytest.approx(23.2)
    assert second["text"] == "Bring an umbrella." and second["segments"][0]["end"] - second["segments"][0]["start"] \
        == pytest.approx(4.0)
    assert rows["clip-000"]["segments"] == [{"start": 0.1, "end": 1.6, "text": "Short and sweet."}]
    reasons = {d["id"]: d["detail"] for d in report["dropped"]}
    assert "no audio file" in reasons["lonely"] and "no .srt or .vtt" in reasons["orphan"]


def test_manifest_segments_round_trip_and_bad_ones_are_errors(tmp_path):
    row = Utterance(id="a", audio=str(tmp_path / "a.wav"), text="hi there", duration=2.0,
                    segments=(Span(text="hi", start=0.1, end=0.5), Span(text="there", start=0.9, end=1.4)))
    write_manifest([row], tmp_path / "m.jsonl")
    assert read_manifest(tmp_path / "m.jsonl")[0].segments == row.segments
    (tmp_path / "bad.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "x", "segments": [
        {"start": 2.0, "end": 1.0, "text": "x"}]}) + "\n")
    with pytest.raises(AsrtuneError, match="runs from 2.0 to 1.0"):
        read_manifest(tmp_path / "bad.jsonl")


def test_join_into_pieces_knows_each_utterance_span(tmp_path):
    from asrtune.data.concat import join_into_pieces, speech_bounds

    utterances = []
    for i in range(6):
        samples = np.concatenate([np.zeros(1600), write_tone(tmp_path / f"u{i}.wav", seconds=2.0, seed=i)[:, 0],
                                  np.zeros(3200)]).astype(np.float32)
        sf.write(str(tmp_path / f"u{i}.wav"), samples, 16000)
        utterances.append(Utterance(id=f"u{i}", audio=str(tmp_path / f"u{i}.wav"), text=f"sentence {i}.",
                                    duration=len(samples) / 16000, voice="v"))
    pieces = read_manifest(join_into_pieces(utterances, tmp_path / "pieces", max_seconds=8.0))
    assert [len(p.segments) for p in pieces] == [2, 2, 2]
    audio, _ = sf.read(pieces[0].audio)
    for span in pieces[0].segments:  # each segment is exactly where its utterance's sound is
        window = audio[int(span.start * 16000) - 5 : int(span.end * 16000) + 5]
        first, last = speech_bounds(window)
        assert span.end - span.start == pytest.approx(2.0, abs=0.01) and first <= 10 and last >= len(window) - 10
