"""Corpus formats: each reader on a tiny hand-made corpus, detection, and invalid lines with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_tone

from asrtune.data.formats import FORMATS, ReadContext, detect_format, read_source
from asrtune.data.rows import Dropped, SourceRow, Word
from asrtune.errors import AsrtuneError


def _context(tmp_path: Path, split: str | None = None) -> ReadContext:
    return ReadContext(audio_dir=tmp_path / "extracted", split=split)


def _summary(rows):
    return [(r.id, Path(r.audio).name, r.text, r.language, r.start, r.end) for r in rows]


def test_every_format_is_registered():
    assert FORMATS.names() == ["audiofolder", "commonvoice", "hf_disk", "jsonl", "kaldi", "nemo", "subtitles"]


def test_asrtune_jsonl(tmp_path):
    write_tone(tmp_path / "clips" / "a.wav")
    lines = [
        json.dumps(
            {
                "id": "a",
                "audio": "clips/a.wav",
                "text": "hello",
                "language": "en",
                "words": [{"word": "hello", "start": 0.1, "end": 0.4}],
            }
        ),
        json.dumps({"audio": "/abs/b.wav", "text": "two"}),
        "",
        "{broken",
        json.dumps({"audio": "x.wav", "text": "t", "words": [{"word": "w", "start": 2, "end": 1}]}),
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    assert detect_format(tmp_path / "m.jsonl") == "jsonl"
    source = read_source(tmp_path / "m.jsonl", _context(tmp_path))
    assert source.format == "jsonl"
    assert source.rows[0] == SourceRow(
        id="a",
        audio=str(tmp_path / "clips" / "a.wav"),
        text="hello",
        language="en",
        words=(Word(text="hello", start=0.1, end=0.4),),
        source=str(tmp_path / "m.jsonl"),
        line=1,
    )
    assert (source.rows[1].id, source.rows[1].audio, source.rows[1].line) == ("m-2", "/abs/b.wav", 2)
    assert [(d.line, d.reason) for d in source.dropped] == [(4, "invalid_line"), (5, "invalid_line")]
    assert (
        "not valid JSON" in source.dropped[0].detail
        and "ends (1.0) before it starts" in source.dropped[1].detail
    )


def test_nemo_manifest_with_and_without_offsets(tmp_path):
    lines = [
        {"audio_filepath": "long.wav", "text": "first part", "duration": 2.5, "offset": 1.0, "lang": "sw"},
        {"audio_filepath": "b.wav", "text": "whole file", "duration": 1.2},
        {"audio_filepath": "c.wav", "text": "bad", "offset": 3.0},
        {"audio_filepath": 7, "text": "bad"},
    ]
    (tmp_path / "train_manifest.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert detect_format(tmp_path / "train_manifest.json") == "nemo"
    source = read_source(tmp_path / "train_manifest.json", _context(tmp_path))
    assert _summary(source.rows) == [
        ("train_manifest-1", "long.wav", "first part", "sw", 1.0, 3.5),
        ("train_manifest-2", "b.wav", "whole file", None, None, None),
    ]
    assert [(d.line, d.reason) for d in source.dropped] == [(3, "invalid_line"), (4, "invalid_line")]
    assert "offset without a positive duration" in source.dropped[0].detail
    assert "must be strings" in source.dropped[1].detail


def test_common_voice_tsv_finds_clips_beside_it(tmp_path):
    cv = tmp_path / "cv-corpus" / "sw"
    (cv / "clips").mkdir(parents=True)
    header = (
        "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\tgender\taccents"
        "\tvariant\tlocale\tsegment"
    )
    rows = [
        "c1\tcommon_voice_sw_1.mp3\ts1\tHabari ya asubuhi\t\t2\t0\t\t\t\t\tsw\t",
        'c2\tcommon_voice_sw_2.mp3\ts2\t"Nzuri" sana\t\t2\t0\t\t\t\t\tsw\t',  # CV is unquoted
        "c3\tcommon_voice_sw_3.mp3\ttoo few fields",
    ]
    (cv / "train.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    (cv / "dev.tsv").write_text(header + "\n", encoding="utf-8")
    assert detect_format(cv / "train.tsv") == "commonvoice"
    assert detect_format(cv) == "commonvoice"
    source = read_source(cv / "train.tsv", _context(tmp_path))
    assert _summary(source.rows) == [
        ("common_voice_sw_1", "common_voice_sw_1.mp3", "Habari ya asubuhi", "sw", None, None),
        ("common_voice_sw_2", "common_voice_sw_2.mp3", '"Nzuri" sana', "sw", None, None),
    ]
    assert Path(source.rows[0].audio).parent == cv / "clips"
    assert [(d.line, d.reason) for d in source.dropped] == [(4, "invalid_line")]
    with pytest.raises(AsrtuneError, match="several splits .*dev, train.*--split"):
        read_source(cv, _context(tmp_path))
    assert len(read_source(cv, _context(tmp_path, split="train")).rows) == 2


def test_audiofolder_metadata_csv(tmp_path):
    folder = tmp_path / "af"
    (folder / "data").mkdir(parents=True)
    (folder / "metadata.csv").write_text(
        "file_name,transcription,language\n"
        'data/one.wav,"hello, world",en\n'
        'data/two.flac,"a line\nbreak",en\n'
        "data/three.wav,only two\n"
        ",empty name,en\n",
        encoding="utf-8",
    )
    assert detect_format(folder) == "audiofolder"
    source = read_source(folder, _context(tmp_path))
    assert _summary(source.rows) == [
        ("data/one", "one.wav", "hello, world", "en", None, None),
        ("data/two", "two.flac", "a line\nbreak", "en", None, None),
    ]
    assert source.rows[0].audio == str((folder / "data" / "one.wav").resolve())
    # csv counts physical lines: the quoted newline makes row 2 end on line 4.
    assert [(d.line, d.reason) for d in source.dropped] == [(5, "invalid_line"), (6, "invalid_line")]


def test_audiofolder_needs_a_transcript_column(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,label\na.wav,dog\n")
    with pytest.raises(
        AsrtuneError, match="needs a file_name column and one of transcription, text, sentence"
    ):
        read_source(tmp_path, _context(tmp_path))


def test_kaldi_directory_with_segments(tmp_path):
    data = tmp_path / "s5" / "data" / "train"
    data.mkdir(parents=True)
    write_tone(tmp_path / "s5" / "wav" / "rec1.wav", seconds=3.0)
    (data / "wav.scp").write_text("rec1 wav/rec1.wav\nrec2 sox in.sph -t wav - |\nrec3 /abs/rec3.flac\n")
    (data / "segments").write_text(
        "u1 rec1 0.00 1.50\nu2 rec1 1.50 -1\nu3 rec2 0 1\nu4 rec1 2.0 1.0\nu5 rec9 0 1\nu6 rec3 0 1\n"
    )
    (data / "text").write_text(
        "u1 hello there\nu2 general kenobi\nu3 piped\nu4 backwards\nu5 unknown rec\nu7 no segment\nu1 again\n"
    )
    (data / "utt2lang").write_text("u1 en\n")
    assert detect_format(data) == "kaldi"
    source = read_source(data, _context(tmp_path))
    # The relative wav path is resolved against the recipe folder two levels up.
    rec1 = str((tmp_path / "s5" / "wav" / "rec1.wav").resolve())
    assert [(r.id, r.audio, r.text, r.language, r.start, r.end, r.line) for r in source.rows] == [
        ("u1", rec1, "hello there", "en", 0.0, 1.5, 1),
        ("u2", rec1, "general kenobi", None, 1.5, None, 2),
    ]
    reasons = {d.id: (d.line, d.detail) for d in source.dropped}
    assert set(reasons) == {"u3", "u4", "u5", "u6", "u7", "u1"}
    assert "command pipe" in reasons["u3"][1] and reasons["u3"][0] == 3
    assert "bad times" in reasons["u4"][1]
    assert "rec9 is not in wav.scp" in reasons["u5"][1]
    assert "no transcript in text" in reasons["u6"][1] and reasons["u6"][0] == 6  # line in segments
    assert "no line in segments" in reasons["u7"][1]
    assert "second transcript line" in reasons["u1"][1] and reasons["u1"][0] == 7
    assert all(d.reason == "invalid_line" for d in source.dropped)


def test_kaldi_directory_without_segments(tmp_path):
    write_tone(tmp_path / "a.wav")
    (tmp_path / "wav.scp").write_text(f"a {tmp_path / 'a.wav'}\nb {tmp_path / 'b.wav'}\n")
    (tmp_path / "text").write_text("a hello\n")
    source = read_source(tmp_path, _context(tmp_path))
    assert _summary(source.rows) == [("a", "a.wav", "hello", None, None, None)]
    assert [(d.id, d.line, d.source) for d in source.dropped] == [("b", 2, str(tmp_path / "wav.scp"))]


def test_hf_dataset_on_disk_without_torchcodec(tmp_path):
    datasets = pytest.importorskip("datasets")
    clips = [write_tone(tmp_path / "src" / f"{i}.wav", seconds=0.3 + 0.1 * i, seed=i) for i in range(2)]
    table = {
        "audio": [str(tmp_path / "src" / f"{i}.wav") for i in range(2)],
        "sentence": ["one", "two"],
        "locale": ["en", "en"],
    }
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "src" / "0.wav").unlink()  # the arrow files hold the audio bytes themselves
    assert detect_format(tmp_path / "hf") == "hf_disk"
    with pytest.raises(AsrtuneError, match=r"several splits \(test, train\): choose one with --split"):
        read_source(tmp_path / "hf", _context(tmp_path))
    source = read_source(tmp_path / "hf", _context(tmp_path, split="train"))
    assert [(r.id, r.text, r.language) for r in source.rows] == [
        ("train-000000", "one", "en"),
        ("train-000001", "two", "en"),
    ]
    import soundfile as sf

    for row, written in zip(source.rows, clips):
        assert Path(row.audio).parent == tmp_path / "extracted"
        samples, rate = sf.read(row.audio, dtype="float32", always_2d=True)
        assert rate == 16000 and samples.shape == written.shape
    assert not source.dropped


def test_hf_dataset_with_path_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    write_tone(tmp_path / "hf" / "clips" / "x.wav")
    datasets.Dataset.from_dict({"path": ["clips/x.wav"], "text": ["hi"], "id": ["x"]}).save_to_disk(
        str(tmp_path / "hf")
    )
    source = read_source(tmp_path / "hf", _context(tmp_path))
    assert _summary(source.rows) == [("x", "x.wav", "hi", None, None, None)]
    assert source.rows[0].audio == str((tmp_path / "hf" / "clips" / "x.wav").resolve())


def test_detection_errors(tmp_path):
    with pytest.raises(AsrtuneError, match="data source not found"):
        detect_format(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AsrtuneError, match="cannot tell the format .*--format"):
        detect_format(tmp_path / "notes.txt")
    both = tmp_path / "both"
    both.mkdir()
    for name in ("wav.scp", "text", "metadata.csv"):
        (both / name).write_text("")
    with pytest.raises(AsrtuneError, match=r"several formats \(audiofolder, kaldi\)"):
        detect_format(both)


def test_an_explicit_format_overrides_detection(tmp_path):
    (tmp_path / "rows.txt").write_text(json.dumps({"audio": "a.wav", "text": "x"}) + "\n")
    source = read_source(tmp_path / "rows.txt", _context(tmp_path), fmt="jsonl")
    assert [r.text for r in source.rows] == ["x"]
    assert isinstance(source.dropped, tuple) and not any(isinstance(r, Dropped) for r in source.rows)
