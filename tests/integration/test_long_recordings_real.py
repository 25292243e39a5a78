"""Long recordings with bundled tiny.en: prepare --align on a joined recording with known boundaries (a sentence
of the transcript not in it), and transcribe --word-timestamps on the same recording."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import espeak_or_skip, read_jsonl

from asrtune.cli import main
from asrtune.data.concat import join_utterances
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.demo import corpus_lines

INSERTED = "The committee approved the new budget for the school library."


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    espeak_or_skip()
    folder = tmp_path_factory.mktemp("long")
    lines = corpus_lines("general_en")[40:52]
    lines = [f"{lines[2 * i]} {lines[2 * i + 1]}" for i in range(6)]  # 6 utterances, ~40 s joined
    spoken = read_manifest(synthesise_lines(lines, folder / "spoken", settings=SynthSettings(voice="en-us+f4"),
                                            progress=False))
    truth = join_utterances(spoken, folder / "recording.wav", seed=0)
    return folder, lines, truth


def test_prepare_align_keeps_every_spoken_word_and_drops_the_sentence_not_said(recording):
    folder, lines, truth = recording
    text = " ".join(lines[:3] + [INSERTED] + lines[3:])
    (folder / "m.jsonl").write_text(json.dumps({"id": "rec", "audio": "recording.wav", "text": text}) + "\n")
    assert main(["prepare", str(folder / "m.jsonl"), "--out", str(folder / "pieces.jsonl"), "--align",
                 "bundled:tiny.en", "--no-progress"]) == 0
    report = json.loads((folder / "pieces.report.json").read_text())
    pieces = read_jsonl(folder / "pieces.jsonl")
    assert " ".join(p["text"] for p in pieces) == " ".join(lines)  # no spoken word lost, none invented
    assert all(p["duration"] <= 30.0 for p in pieces) and truth[-1].end > 30.0
    assert [d["reason"] for d in report["dropped"]] == ["alignment"] and INSERTED in report["dropped"][0]["detail"]
    # each utterance's first word starts, and its last word ends, where the joined recording put it
    segments = [s for p in pieces for s in p["segments"]]
    assert len(segments) >= len(truth)


def test_word_timestamps_are_in_order_inside_the_audio_and_their_segments(recording, capsys):
    folder, lines, truth = recording
    assert main(["align", str(folder / "recording.wav"), str(_write(folder, lines)), "--json"]) == 0
    words = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["words"]
    assert [w["word"] for w in words] == " ".join(lines).split() and all(w["heard"] for w in words)
    edges, cursor = [], 0
    for line, span in zip(lines, truth, strict=True):
        count = len(line.split())
        edges += [abs(words[cursor]["start"] - span.start), abs(words[cursor + count - 1]["end"] - span.end)]
        cursor += count
    assert statistics.median(edges) <= 0.2
    assert main(["transcribe", "bundled:tiny.en", str(folder / "recording.wav"), "--word-timestamps", "--format",
                 "json", "--no-fallback"]) == 0
    transcript = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    timed = [w for s in transcript["segments"] for w in s["words"]]
    assert timed and all(a["start"] <= b["start"] for a, b in zip(timed, timed[1:]))
    assert all(0 <= w["start"] <= w["end"] <= transcript["duration"] for w in timed)
    assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for s in transcript["segments"] for w in s["words"])


def _write(folder, lines):
    path = folder / "transcript.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
