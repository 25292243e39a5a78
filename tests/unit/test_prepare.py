"""``asrtune prepare`` end to end: every bad case plus four good files, each on-disk format, the report."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import read_jsonl, write_tone

from asrtune.cli import main
from asrtune.data.clean import CleanSettings
from asrtune.data.manifest import read_manifest
from asrtune.data.prepare import PrepareSettings, prepare
from asrtune.errors import AsrtuneError

GOOD = {
    "good-wav": "hello there",
    "stereo-44k": "good morning everyone",
    "phone-8k": "call me back",
    "flac": "open the door",
}

# id -> (reason, a piece of the detail)
BAD = {
    "missing": ("missing_file", "no such file"),
    "corrupt": ("unreadable", "cannot decode audio"),
    "empty-audio": ("zero_length", "0 samples"),
    "nan": ("non_finite", "1 of 8000 samples are NaN or infinite"),
    "short": ("too_short", "0.050 s < 0.2 s"),
    "long": ("too_long", "file is 31.0 s > 30 s"),
    "empty-text": ("empty_text", "transcript is empty"),
    "space-text": ("empty_text", "only whitespace"),
    "too-fast": ("speaking_rate", "characters/s"),
    "too-slow": ("speaking_rate", "0.2 characters/s"),
    "too-many-tokens": ("token_length", "decoder positions > 448"),
    "dup-same-file": ("duplicate", "same audio and text as good-wav"),
    "dup-copied-file": ("duplicate", "same audio and text as good-wav"),
}
INVALID_LINES = {18: "not valid JSON", 19: "expected a JSON object", 20: "missing text"}


def build_done_when_manifest(folder):
    """Every bad case of issue 4 plus four good files (wav, 44.1 kHz stereo wav, 8 kHz wav, flac)."""
    audio = folder / "audio"
    write_tone(audio / "good.wav", 1.5, freq=300.0, seed=1)
    write_tone(audio / "stereo44.wav", 2.0, rate=44_100, channels=2, freq=350.0, seed=2)
    write_tone(audio / "phone8k.wav", 1.2, rate=8_000, freq=400.0, seed=3)
    write_tone(audio / "clip.flac", 1.6, freq=450.0, seed=4)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(300))
    sf.write(str(audio / "empty.wav"), np.zeros((0, 1), np.float32), 16_000)
    nan = np.full(8000, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(str(audio / "nan.wav"), nan, 16_000, subtype="FLOAT")
    write_tone(audio / "short.wav", 0.05, freq=500.0, seed=5)
    write_tone(audio / "long.wav", 31.0, freq=550.0, seed=6)
    for i, (name, seconds) in enumerate(
        [("e1", 1.0), ("e2", 1.0), ("fast", 1.0), ("slow", 10.0), ("tok", 25.0)]
    ):
        write_tone(audio / f"{name}.wav", seconds, freq=600.0 + 50 * i, seed=10 + i)
    shutil.copy(audio / "good.wav", audio / "good-copy.wav")
    rows = [
        ("good-wav", "good.wav", GOOD["good-wav"]),
        ("stereo-44k", "stereo44.wav", GOOD["stereo-44k"]),
        ("phone-8k", "phone8k.wav", GOOD["phone-8k"]),
        ("flac", "clip.flac", GOOD["flac"]),
        ("missing", "missing.wav", "where am i"),
        ("corrupt", "corrupt.wav", "broken file"),
        ("empty-audio", "empty.wav", "nothing here"),
        ("nan", "nan.wav", "not a number"),
        ("short", "short.wav", "a"),
        ("long", "long.wav", " ".join(["word"] * 60)),
        ("empty-text", "e1.wav", ""),
        ("space-text", "e2.wav", "   \t "),
        ("too-fast", "fast.wav", "this sentence is far too long to be spoken in a single second of audio"),
        ("too-slow", "slow.wav", "hi"),
        ("too-many-tokens", "tok.wav", "鬱" * 160),
        ("dup-same-file", "good.wav", GOOD["good-wav"]),
        ("dup-copied-file", "good-copy.wav", GOOD["good-wav"]),
    ]
    lines = [json.dumps({"id": i, "audio": f"audio/{f}", "text": t}, ensure_ascii=False) for i, f, t in rows]
    lines += ["{not json", '["a", "list"]', '{"audio": "audio/good.wav"}']
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "manifest.jsonl"


def test_done_when_manifest_keeps_exactly_the_four_good_files(tmp_path, tiny_model_dir, capsys):
    manifest = build_done_when_manifest(tmp_path / "data")
    before = manifest.read_bytes()
    out, report_path = tmp_path / "out" / "train.jsonl", tmp_path / "out" / "report.json"
    code = main(
        [
            "prepare",
            str(manifest),
            "--out",
            str(out),
            "--report",
            str(report_path),
            "--model",
            str(tiny_model_dir),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert manifest.read_bytes() == before  # the input is never modified

    kept = read_manifest(out)
    assert [(u.id, u.text) for u in kept] == list(GOOD.items())
    assert [os.path.basename(u.audio) for u in kept] == [
        "good.wav",
        "stereo44.wav",
        "phone8k.wav",
        "clip.flac",
    ]
    assert [u.duration for u in kept] == [1.5, 2.0, 1.2, 1.6]

    report = json.loads(report_path.read_text())
    assert report["kept"] == 4 and report["rows_read"] == 20 and report["dropped_count"] == 16
    by_id = {entry["id"]: entry for entry in report["dropped"] if "id" in entry}
    assert set(by_id) == set(BAD)
    for utt_id, (reason, detail) in BAD.items():
        assert by_id[utt_id]["reason"] == reason, utt_id
        assert detail in by_id[utt_id]["detail"], (utt_id, by_id[utt_id]["detail"])
        assert by_id[utt_id]["audio"].startswith(str(tmp_path / "data" / "audio"))
    invalid = {entry["line"]: entry for entry in report["dropped"] if "id" not in entry}
    assert set(invalid) == set(INVALID_LINES)
    for line, detail in INVALID_LINES.items():
        assert invalid[line]["reason"] == "invalid_line" and detail in invalid[line]["detail"]
    assert {e["line"] for e in report["dropped"]} == set(range(5, 21))  # every bad line, by its number
    assert report["reasons"] == {
        "invalid_line": 3,
        "empty_text": 2,
        "unknown_language": 0,
        "missing_file": 1,
        "unreadable": 1,
        "zero_length": 1,
        "non_finite": 1,
        "bad_timing": 0,
        "too_long": 1,
        "too_short": 1,
        "token_length": 1,
        "speaking_rate": 2,
        "duplicate": 2,
    }
    assert report["hours_kept"] == pytest.approx(6.3 / 3600, abs=1e-6)
    assert report["hours_dropped"] == pytest.approx((0.5 + 0.05 + 31 + 2 + 1 + 10 + 25 + 3) / 3600, abs=1e-5)
    assert report["format"] == "jsonl" and report["segmentation"]["whole_files"] == 4
    # The printed table: kept, one line per reason, the total.
    assert "| kept " in printed and "| dropped: duplicate " in printed and "| total " in printed
    assert [line.split("|")[2].strip() for line in printed.splitlines() if line.startswith("| kept")] == ["4"]
    assert "manifest: " in printed and "(4 rows)" in printed


def test_nothing_kept_exits_non_zero_and_still_reports(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "missing.wav", "text": "x"}) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "prepare",
            str(tmp_path / "m.jsonl"),
            "--out",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "no row" in captured.err and not out.exists()
    report = json.loads((tmp_path / "out.report.json").read_text())  # default report path
    assert report["kept"] == 0 and report["reasons"]["missing_file"] == 1


def test_prepare_refuses_to_overwrite_its_input(tmp_path, tiny_model_dir):
    manifest = build_done_when_manifest(tmp_path)
    with pytest.raises(AsrtuneError, match="never overwrites its input"):
        prepare(manifest, manifest, settings=PrepareSettings(model=str(tiny_model_dir), progress=False))


def _settings(tiny_model_dir, **kw) -> PrepareSettings:
    return PrepareSettings(model=str(tiny_model_dir), progress=False, **kw)


def test_kaldi_long_recording_is_cut_by_segments(tmp_path, tiny_model_dir):
    data = tmp_path / "kaldi"
    data.mkdir()
    write_tone(tmp_path / "rec.wav", seconds=40.0, rate=22_050, channels=2, freq=200.0)
    written = sf.read(str(tmp_path / "rec.wav"), dtype="float32", always_2d=True)[0]
    (data / "wav.scp").write_text(f"rec {tmp_path / 'rec.wav'}\n")
    (data / "segments").write_text("a rec 0.0 2.0\nb rec 5.0 7.5\nc rec 3.0 38.0\n")
    (data / "text").write_text("a first words\nb second words here\nc far too long a segment\n")
    out = tmp_path / "prepared" / "kaldi.jsonl"
    report = prepare(data, out, settings=_settings(tiny_model_dir))
    kept = read_manifest(out)
    assert [(u.id, u.text, u.duration) for u in kept] == [
        ("a", "first words", 2.0),
        ("b", "second words here", 2.5),
    ]
    for utterance, (start, end) in zip(kept, [(0.0, 2.0), (5.0, 7.5)]):
        assert os.path.dirname(utterance.audio) == str(tmp_path / "prepared" / "kaldi_audio")
        samples, rate = sf.read(utterance.audio, dtype="float32", always_2d=True)
        assert rate == 22_050 and samples.shape[1] == 2  # the file's own rate and channels, cut losslessly
        np.testing.assert_allclose(samples, written[int(start * rate) : int(end * rate)], rtol=0, atol=0)
    assert [(d["id"], d["reason"]) for d in report["dropped"]] == [("c", "too_long")]
    assert report["segmentation"] == {
        "whole_files": 0,
        "cut_pieces": 2,
        "split_rows": 0,
        "split_pieces": 0,
        "too_long_dropped": 1,
    }


def test_nemo_manifest_with_offsets(tmp_path, tiny_model_dir):
    write_tone(tmp_path / "talk.flac", seconds=6.0, freq=260.0)
    rows = [
        {"audio_filepath": "talk.flac", "text": "one two three", "offset": 1.0, "duration": 2.0},
        {"audio_filepath": "talk.flac", "text": "four five", "offset": 4.0, "duration": 1.5},
    ]
    (tmp_path / "manifest.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = prepare(tmp_path / "manifest.json", tmp_path / "out.jsonl", settings=_settings(tiny_model_dir))
    assert report["format"] == "nemo" and report["kept"] == 2
    assert [u.duration for u in read_manifest(tmp_path / "out.jsonl")] == [2.0, 1.5]


def test_word_timestamps_split_long_audio(tmp_path, tiny_model_dir):
    write_tone(tmp_path / "talk.wav", seconds=50.0, freq=240.0)
    words = [{"word": f"w{i}", "start": i + 0.2, "end": i + 0.7} for i in range(50)]
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "talk", "audio": "talk.wav", "text": "x", "words": words}) + "\n"
    )
    report = prepare(tmp_path / "m.jsonl", tmp_path / "out.jsonl", settings=_settings(tiny_model_dir))
    kept = read_manifest(tmp_path / "out.jsonl")
    assert [u.id for u in kept] == ["talk-000", "talk-001"]
    assert kept[1].text == " ".join(f"w{i}" for i in range(30, 50))
    assert all(u.duration <= 30.0 for u in kept)
    assert report["segmentation"]["split_rows"] == 1 and report["segmentation"]["split_pieces"] == 2


@pytest.mark.parametrize("layout", ["commonvoice", "audiofolder", "hf_disk"])
def test_other_formats_prepare_end_to_end(tmp_path, tiny_model_dir, layout):
    source = tmp_path / "src"
    if layout == "commonvoice":
        write_tone(source / "clips" / "a.mp3.wav", seconds=1.0)
        (source / "train.tsv").write_text(
            "client_id\tpath\tsentence\tlocale\nc\ta.mp3.wav\thello there\ten\n"
        )
        target = source / "train.tsv"
    elif layout == "audiofolder":
        write_tone(source / "a.wav", seconds=1.0)
        (source / "metadata.csv").write_text("file_name,text\na.wav,hello there\n")
        target = source
    else:
        datasets = pytest.importorskip("datasets")
        write_tone(tmp_path / "a.wav", seconds=1.0)
        datasets.Dataset.from_dict({"audio": [str(tmp_path / "a.wav")], "text": ["hello there"]}).cast_column(
            "audio", datasets.Audio()
        ).save_to_disk(str(source))
        target = source
    report = prepare(target, tmp_path / "out" / "m.jsonl", settings=_settings(tiny_model_dir))
    assert report["format"] == layout and report["kept"] == 1 and report["dropped"] == []
    kept = read_manifest(tmp_path / "out" / "m.jsonl")
    assert kept[0].text == "hello there" and sf.info(kept[0].audio).duration == 1.0


def test_normalisation_is_applied_and_recorded(tmp_path, tiny_model_dir):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    write_tone(tmp_path / "b.wav", seconds=1.0, freq=500.0)
    rows = [
        {"id": "a", "audio": "a.wav", "text": "Cafe\u0301, OK!"},
        {"id": "b", "audio": "b.wav", "text": "fine"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = prepare(
        tmp_path / "m.jsonl",
        tmp_path / "out.jsonl",
        settings=_settings(tiny_model_dir, normalize=("nfc", "lower", "punct")),
    )
    assert [u.text for u in read_manifest(tmp_path / "out.jsonl")] == ["caf\u00e9 ok", "fine"]
    assert report["normalization"] == {
        "steps": ["nfc", "lower", "punct"],
        "changed": 1,
        "examples": [{"id": "a", "before": "Cafe\u0301, OK!", "after": "caf\u00e9 ok"}],
    }


def test_charset_needs_known_languages_before_any_work(tmp_path, tiny_model_dir):
    write_tone(tmp_path / "a.wav", seconds=1.0)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hello"}) + "\n")
    with pytest.raises(AsrtuneError, match="--charset needs each row's language"):
        prepare(
            tmp_path / "m.jsonl",
            tmp_path / "o.jsonl",
            settings=_settings(tiny_model_dir, clean=CleanSettings(charset=True)),
        )
    with pytest.raises(AsrtuneError, match="knows no script for language.* xx"):
        prepare(
            tmp_path / "m.jsonl",
            tmp_path / "o.jsonl",
            settings=_settings(tiny_model_dir, clean=CleanSettings(charset=True, language="xx")),
        )
    assert not (tmp_path / "o.jsonl").exists()


def test_label_check_flags_rows_the_model_disagrees_with(tmp_path, tiny_model_dir, monkeypatch):
    import asrtune.evaluation.labelcheck as labelcheck
    from asrtune.runs.load import load_model

    for name in ("a", "b"):
        write_tone(tmp_path / f"{name}.wav", seconds=1.0, freq=300.0 if name == "a" else 600.0)
    rows = [
        {"id": "a", "audio": "a.wav", "text": "hello world"},
        {"id": "b", "audio": "b.wav", "text": "good day"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # The tiny random model says nothing useful: script its transcripts, keep the rest real.
    monkeypatch.setattr(
        labelcheck, "transcribe_dataset", lambda loaded, dataset, **kw: ["hello world", "goodbye"]
    )
    report = prepare(
        tmp_path / "m.jsonl",
        tmp_path / "out.jsonl",
        settings=_settings(tiny_model_dir, label_check=True, max_cer=0.3),
        check_labels=lambda kept: labelcheck.label_check(kept, load_model(str(tiny_model_dir)), max_cer=0.3),
    )
    check = report["label_check"]
    assert check["checked"] == 2 and check["flagged_count"] == 1
    assert [(f["id"], f["hypothesis"]) for f in check["flagged"]] == [("b", "goodbye")]
    assert check["flagged"][0]["cer"] == pytest.approx(0.5)  # "good day" -> "goodbye": 4 edits / 8 chars
    assert report["kept"] == 2  # report only
    saved = json.loads((tmp_path / "out.report.json").read_text())
    assert saved["label_check"] == check
    assert read_jsonl(tmp_path / "out.jsonl")[1]["id"] == "b"


def test_ogg_and_mp3_are_read_and_cut(tmp_path, tiny_model_dir):
    t = np.arange(3 * 22_050) / 22_050
    tone = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    sf.write(str(tmp_path / "a.ogg"), tone, 22_050, format="OGG", subtype="VORBIS")
    sf.write(str(tmp_path / "b.mp3"), tone, 22_050, format="MP3")
    rows = [
        {"audio_filepath": "a.ogg", "text": "an ogg vorbis file", "duration": 3.0},
        {"audio_filepath": "b.mp3", "text": "an mpeg layer three cut", "offset": 0.5, "duration": 2.0},
    ]
    (tmp_path / "m.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = prepare(tmp_path / "m.json", tmp_path / "out.jsonl", settings=_settings(tiny_model_dir))
    assert report["kept"] == 2 and report["dropped"] == []
    kept = read_manifest(tmp_path / "out.jsonl")
    assert kept[0].audio == str(tmp_path / "a.ogg") and kept[0].duration == pytest.approx(3.0, abs=0.01)
    assert kept[1].audio.endswith(".flac") and kept[1].duration == pytest.approx(2.0, abs=0.01)
