"""Manifests, audio decoding, batch order, features and labels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SAMPLE_RATE, make_processor, tiny_whisper, write_tone

from asrtune.data.audio import load_audio
from asrtune.data.features import FeatureDataset, collate, label_ids, prefix_ids
from asrtune.data.manifest import Utterance, read_manifest, write_manifest
from asrtune.errors import AsrtuneError


# --- manifests ------------------------------------------------------------------------------------------


def _write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_manifest_resolves_relative_audio_against_its_folder(tmp_path, monkeypatch):
    manifest = _write_lines(
        tmp_path / "data" / "m.jsonl",
        [
            json.dumps(
                {"id": "a", "audio": "audio/a.wav", "text": "hello", "language": "en", "duration": 1.5}
            ),
            json.dumps({"audio": "/abs/b.flac", "text": "wörld", "language": ""}),
        ],
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    rows = read_manifest("data/m.jsonl")
    assert rows[0] == Utterance(
        id="a", audio=str(tmp_path / "data" / "audio" / "a.wav"), text="hello", language="en", duration=1.5
    )
    # No id: the manifest stem and line number; empty language means none; absolute audio kept.
    assert rows[1] == Utterance(id="m-2", audio="/abs/b.flac", text="wörld", language=None, duration=None)
    assert manifest.is_file()


def test_read_manifest_reports_the_line_of_bad_json(tmp_path):
    manifest = _write_lines(
        tmp_path / "m.jsonl", [json.dumps({"audio": "a.wav", "text": "x"}), "", '{"audio": "b.wav", "text": ']
    )
    with pytest.raises(AsrtuneError, match=r"m\.jsonl:3: not valid JSON"):
        read_manifest(manifest)


@pytest.mark.parametrize(
    "line, message",
    [
        ('["a.wav", "text"]', "expected a JSON object"),
        ('{"audio": "a.wav"}', "missing text"),
        ('{"text": "hi"}', "missing audio"),
        ('{"audio": 3, "text": "hi"}', "audio and text must be strings"),
    ],
)
def test_read_manifest_rejects_bad_rows(tmp_path, line, message):
    manifest = _write_lines(tmp_path / "m.jsonl", [line])
    with pytest.raises(AsrtuneError, match=rf"m\.jsonl:1: {message}"):
        read_manifest(manifest)


def test_read_manifest_missing_or_empty(tmp_path):
    with pytest.raises(AsrtuneError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(AsrtuneError, match="manifest is empty"):
        read_manifest(tmp_path / "empty.jsonl")


def test_write_manifest_uses_relative_paths_and_round_trips(tmp_path):
    rows = [
        Utterance(
            id="a",
            audio=str(tmp_path / "audio" / "a.wav"),
            text="héllo, world",
            language="en",
            duration=1.25,
        ),
        Utterance(id="b", audio=str(tmp_path / "elsewhere" / "b.wav"), text="two", duration=None),
    ]
    target = tmp_path / "out" / "nested" / "manifest.jsonl"
    write_manifest(rows, target)
    raw = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert raw[0] == {
        "id": "a",
        "audio": "../../audio/a.wav",
        "text": "héllo, world",
        "language": "en",
        "duration": 1.25,
    }
    assert raw[1] == {"id": "b", "audio": "../../elsewhere/b.wav", "text": "two"}
    assert "héllo" in target.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    back = read_manifest(target)
    assert [(u.id, u.text, u.language, u.duration) for u in back] == [
        (u.id, u.text, u.language, u.duration) for u in rows
    ]
    # Same files (the path may keep the `..` parts, so compare resolved paths).
    assert [os.path.realpath(u.audio) for u in back] == [os.path.realpath(u.audio) for u in rows]
    assert all(os.path.isabs(u.audio) for u in back)
    assert [p.name for p in target.parent.iterdir()] == ["manifest.jsonl"]  # no staging file left


# --- audio ----------------------------------------------------------------------------------------------


def _dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def test_load_audio_mono_16k_is_returned_as_written(tmp_path):
    written = write_tone(tmp_path / "a.wav", seconds=0.5, freq=300.0, subtype="FLOAT")
    samples = load_audio(tmp_path / "a.wav")
    assert samples.dtype == np.float32 and samples.shape == (8000,)
    np.testing.assert_array_equal(samples, written[:, 0])


def test_load_audio_downmixes_stereo_by_averaging(tmp_path):
    written = write_tone(tmp_path / "s.wav", seconds=0.3, channels=2, subtype="PCM_16")
    samples = load_audio(tmp_path / "s.wav")
    assert samples.shape == (4800,)
    np.testing.assert_allclose(samples, written.mean(axis=1), atol=2 / 32768)  # 16-bit quantisation


def test_load_audio_resamples_stereo_44k(tmp_path):
    written = write_tone(tmp_path / "cd.wav", seconds=1.0, rate=44_100, freq=440.0, channels=2)
    samples = load_audio(tmp_path / "cd.wav")
    assert samples.dtype == np.float32
    assert abs(len(samples) - SAMPLE_RATE) <= 2
    assert _dominant_frequency(samples, SAMPLE_RATE) == pytest.approx(440.0, abs=2.0)
    # Mean of channels scaled 0.5 and 1.0: RMS is 0.75 of the louder channel's.
    rms = lambda x: float(np.sqrt(np.mean(x[2000:-2000] ** 2)))  # noqa: E731
    assert rms(samples) == pytest.approx(0.75 * rms(written[:, 1]), rel=0.03)


def test_load_audio_upsamples_8k(tmp_path):
    write_tone(tmp_path / "phone.wav", seconds=0.5, rate=8_000, freq=1000.0)
    samples = load_audio(tmp_path / "phone.wav")
    assert abs(len(samples) - 8000) <= 2
    assert _dominant_frequency(samples, SAMPLE_RATE) == pytest.approx(1000.0, abs=3.0)
    assert np.abs(samples).max() <= 1.0


def test_load_audio_flac_matches_wav(tmp_path):
    pcm = (np.sin(np.linspace(0, 200, 6400)) * 12000).astype(np.int16)  # the same integers in both files
    sf.write(str(tmp_path / "x.wav"), pcm, SAMPLE_RATE)
    sf.write(str(tmp_path / "x.flac"), pcm, SAMPLE_RATE)
    flac = load_audio(tmp_path / "x.flac")
    np.testing.assert_array_equal(flac, load_audio(tmp_path / "x.wav"))
    np.testing.assert_allclose(flac, pcm / 32768.0, rtol=0, atol=1e-7)


def test_load_audio_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AsrtuneError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(os.urandom(2000))
    with pytest.raises(AsrtuneError, match="cannot decode audio"):
        load_audio(tmp_path / "noise.wav")
    (tmp_path / "empty.flac").write_bytes(b"")
    with pytest.raises(AsrtuneError, match="cannot decode audio"):
        load_audio(tmp_path / "empty.flac")


# --- features and labels --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def test_prefix_ids(processor):
    tok = processor.tokenizer
    no_ts, transcribe, translate = (
        tok.convert_tokens_to_ids(t) for t in ("<|notimestamps|>", "<|transcribe|>", "<|translate|>")
    )
    assert no_ts == 50362
    assert prefix_ids(processor, multilingual=False, language="sw", task="transcribe") == [no_ts]
    assert prefix_ids(processor, multilingual=True, language=None, task="transcribe") == [
        tok.convert_tokens_to_ids("<|en|>"),
        transcribe,
        no_ts,
    ]
    assert prefix_ids(processor, multilingual=True, language="sw", task="translate") == [
        tok.convert_tokens_to_ids("<|sw|>"),
        translate,
        no_ts,
    ]
    with pytest.raises(AsrtuneError, match="language 'xx'"):
        prefix_ids(processor, multilingual=True, language="xx", task="transcribe")


def test_label_ids_are_prefix_text_with_leading_space_and_eot(processor):
    # GPT-2 byte-level BPE: " hello" is 23748 and " world" is 995.
    assert label_ids(processor, "  hello world ", [50362]) == [50362, 23748, 995, 50256]
    decoded = processor.tokenizer.decode(label_ids(processor, "Good morning.", []), skip_special_tokens=True)
    assert decoded == " Good morning."


def _utterances(folder, texts, languages=None):
    rows = []
    for i, text in enumerate(texts):
        audio = folder / f"{i}.wav"
        write_tone(audio, seconds=0.3 + 0.2 * i, freq=250.0 + 100 * i, seed=i)
        rows.append(
            Utterance(id=f"u{i}", audio=str(audio), text=text, language=(languages or [None] * len(texts))[i])
        )
    return rows


def test_feature_dataset_features_and_labels(tmp_path, processor):
    rows = _utterances(tmp_path, ["hello world", "good morning", "one"], [None, "sw", None])
    dataset = FeatureDataset(rows, processor, multilingual=True, language="fr", progress=False)
    assert len(dataset) == 3
    tok = processor.tokenizer
    lang = {code: tok.convert_tokens_to_ids(f"<|{code}|>") for code in ("fr", "sw")}
    for i, row in enumerate(rows):
        item = dataset[i]
        assert item["index"] == i
        assert item["input_features"].shape == (80, 100) and item["input_features"].dtype == torch.float32
        expected = processor.feature_extractor(
            load_audio(row.audio), sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features[0]
        np.testing.assert_allclose(item["input_features"].numpy(), expected, rtol=0, atol=1e-6)
        # The row's language wins over the dataset default.
        language = lang[row.language or "fr"]
        assert list(item["labels"]) == [language, 50358, 50362] + tok.encode(
            " " + row.text, add_special_tokens=False
        ) + [50256]
    # Different audio, different features.
    assert not torch.equal(dataset[0]["input_features"], dataset[1]["input_features"])
    head = dataset.head(2)
    assert len(head) == 2 and head.utterances == rows[:2] and list(head[1]["labels"]) == list(dataset[1]["labels"])
    assert torch.equal(head.features[1], dataset.features[1])


def test_feature_dataset_rejects_transcripts_longer_than_the_decoder(tmp_path, processor):
    rows = _utterances(tmp_path, ["word " * 500])
    with pytest.raises(AsrtuneError, match="u0: transcript is .* tokens"):
        FeatureDataset(rows, processor, multilingual=False, progress=False)


def test_feature_dataset_missing_audio_is_a_user_error(tmp_path, processor):
    rows = [Utterance(id="x", audio=str(tmp_path / "missing.wav"), text="hi")]
    with pytest.raises(AsrtuneError, match="audio file not found"):
        FeatureDataset(rows, processor, multilingual=False, progress=False)


def test_collate_pads_labels_with_minus_100():
    items = [
        {"input_features": torch.full((80, 100), float(i)), "labels": labels, "index": i, "frames": 10 * i}
        for i, labels in enumerate([[1, 2, 3], [4], [5, 6]])
    ]
    batch = collate(items)
    assert batch["input_features"].shape == (3, 80, 100)
    assert batch["input_features"][2, 0, 0].item() == 2.0
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [[1, 2, 3], [4, -100, -100], [5, 6, -100]]
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["frames"].tolist() == [0, 10, 20]


def test_collate_rounds_the_label_length_up_and_the_loss_stays_the_same():
    items = [{"input_features": torch.randn(80, 100, generator=torch.Generator().manual_seed(i)), "labels": labels,
              "index": i, "frames": 100} for i, labels in enumerate([[5, 6, 7, 8, 9], [11, 12]])]
    plain, padded = collate(items), collate(items, pad_to_multiple_of=8)
    assert padded["labels"].tolist() == [[5, 6, 7, 8, 9] + [-100] * 3, [11, 12] + [-100] * 6]
    assert collate(items, pad_to_multiple_of=5)["labels"].shape == (2, 5)  # already a multiple: unchanged
    model = tiny_whisper(seed=2).eval()
    losses = [model(input_features=batch["input_features"], labels=batch["labels"]).loss for batch in (plain, padded)]
    assert torch.allclose(losses[0], losses[1], atol=1e-6, rtol=0)  # -100 is ignored; the decoder is causal
