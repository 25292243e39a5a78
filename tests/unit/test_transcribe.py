"""Long-form transcription mechanics, output formats and the ``transcribe`` command, on the tiny random Whisper.

The tiny model's window is 1 s (``chunk_length=1``), so a few seconds of audio take several windows.
Its transcripts are noise; what is checked is the machinery: windows walked, prompt ids reaching the
decoder in every window, batching, timestamps, formats, errors.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_tone

from asrtune.cli import main
from asrtune.errors import AsrtuneError
from asrtune.inference import Segment, TranscribeOptions, Transcript, render, timestamp_issues, transcribe_files
from asrtune.inference.formats import timestamp
from asrtune.inference.longform import prepare_for_inference, prompt_ids
from asrtune.runs.load import load_model

# Greedy, no thresholds, short windows: the random model never says end-of-text, so cap its text.
GREEDY = {"temperatures": (0.0,), "compression_ratio_threshold": None, "logprob_threshold": None,
          "no_speech_threshold": None, "max_new_tokens": 6}
FAST_CLI = ["--no-fallback", "--max-new-tokens", "6"]
TIMESTAMP_TOKENS = list(range(50363, 51864))  # <|0.00|> ... <|30.00|> in the English-only vocabulary


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    paths = []
    for i, seconds in enumerate((3.5, 0.7, 2.2)):
        write_tone(folder / f"tone{i}.wav", seconds=seconds, freq=200 + 100 * i, seed=i)
        paths.append(folder / f"tone{i}.wav")
    return paths


def _without_timestamps(loaded):
    """Make the model never predict a timestamp: each window then comes back as one whole-window segment."""
    loaded.model.generation_config.suppress_tokens = TIMESTAMP_TOKENS
    return loaded


def _decoder_inputs(model) -> tuple[list[list[int]], object]:
    """Record the decoder ids of every window's first step (the one with an empty KV cache)."""
    calls: list[list[int]] = []

    def record(module, args, kwargs):
        # transformers 5.24 renamed the decoder's past_key_values argument to cache.
        cache = kwargs["cache"] if "cache" in kwargs else kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:
            calls.append(kwargs["input_ids"][0].tolist())

    return calls, model.model.decoder.register_forward_pre_hook(record, with_kwargs=True)


def test_timestamp_formats():
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(3661.5) == "01:01:01,500"
    assert timestamp(59.9996, ".") == "00:01:00.000"


def test_srt_vtt_txt_json_render_segments():
    transcript = Transcript(audio="a.wav", duration=5.0, language="en", segments=[
        Segment(start=0.0, end=2.5, text="Hello there."), Segment(start=2.5, end=4.25, text="General Kenobi.")])
    assert render(transcript, "srt") == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                                         "2\n00:00:02,500 --> 00:00:04,250\nGeneral Kenobi.\n\n")
    assert render(transcript, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
                                         "00:00:02.500 --> 00:00:04.250\nGeneral Kenobi.\n\n")
    assert render(transcript, "txt") == "Hello there.\nGeneral Kenobi.\n"
    data = json.loads(render(transcript, "json"))
    assert data["text"] == "Hello there. General Kenobi." and data["segments"][1] == {
        "id": 1, "start": 2.5, "end": 4.25, "text": "General Kenobi."}
    with pytest.raises(AsrtuneError, match="unknown output format"):
        render(transcript, "docx")


def test_timestamp_issues_flag_lost_timestamps():
    good = Transcript(audio="a", duration=40, language="en", segments=[
        Segment(start=0, end=4, text="a"), Segment(start=4, end=9, text="b")])
    assert timestamp_issues(good) == []
    lost = Transcript(audio="a", duration=40, language="en", segments=[
        Segment(start=0, end=30, text="a"), Segment(start=30, end=30, text="b"), Segment(start=5, end=6, text="c")])
    issues = timestamp_issues(lost)
    assert any("whole 30 s window" in i for i in issues) and any("no length" in i for i in issues)
    assert any("starts before" in i for i in issues)


def test_long_audio_is_decoded_window_by_window(tiny_model_dir, tones):
    loaded = _without_timestamps(load_model(str(tiny_model_dir)))
    calls, hook = _decoder_inputs(loaded.model)
    try:
        (transcript,), stats = transcribe_files(loaded, [tones[0]], TranscribeOptions(**GREEDY), progress=False)
    finally:
        hook.remove()
    assert len(calls) == 4  # 3.5 s in 1 s windows
    assert [(s.start, s.end) for s in transcript.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.5)]
    assert transcript.duration == pytest.approx(3.5) and transcript.language == "en"
    # Windows after the first are conditioned on the text so far (<|startofprev|> ... <|startoftranscript|>).
    assert calls[0][0] == 50257 and calls[1][0] == 50360 and len(calls[1]) > len(calls[0])
    assert stats.files == 1 and stats.audio_seconds == pytest.approx(3.5) and stats.rtf > 0
    assert any("whole 1 s window" in issue for issue in timestamp_issues(transcript, window=1.0))


def test_without_previous_text_each_window_starts_fresh(tiny_model_dir, tones):
    loaded = _without_timestamps(load_model(str(tiny_model_dir)))
    calls, hook = _decoder_inputs(loaded.model)
    try:
        transcribe_files(loaded, [tones[0]], TranscribeOptions(condition_on_previous_text=False, **GREEDY),
                         progress=False)
    finally:
        hook.remove()
    assert len(calls) == 4 and all(call == calls[0] for call in calls)


def test_the_prompt_reaches_the_decoder_in_every_window(tiny_model_dir, tones):
    loaded = _without_timestamps(load_model(str(tiny_model_dir)))
    expected = prompt_ids(loaded, "amoxicillin  otitis media").tolist()
    assert expected[0] == 50360  # <|startofprev|>
    assert loaded.processor.tokenizer.decode(expected[1:]).strip() == "amoxicillin otitis media"
    calls, hook = _decoder_inputs(loaded.model)
    try:
        transcribe_files(loaded, [tones[0]], TranscribeOptions(prompt="amoxicillin  otitis media", **GREEDY),
                         progress=False)
    finally:
        hook.remove()
    assert len(calls) == 4
    assert all(call[: len(expected)] == expected for call in calls), calls


def test_a_long_prompt_survives_a_long_history(tiny_model_dir, tones):
    """Whisper keeps at most 223 context tokens; the prompt must stay whole while old text is dropped
    (transformers' "first-segment" mode would let the history push it out after a few windows)."""
    loaded = _without_timestamps(load_model(str(tiny_model_dir)))
    prompt = " ".join(["amoxicillin"] * 50)
    expected = prompt_ids(loaded, prompt).tolist()
    calls, hook = _decoder_inputs(loaded.model)
    try:
        transcribe_files(loaded, [tones[0]], TranscribeOptions(prompt=prompt, **{**GREEDY, "max_new_tokens": 40}),
                         progress=False)
    finally:
        hook.remove()
    assert len(expected) > 150 and len(calls) == 4
    assert len(calls[-1]) > 223  # prompt + history + <|startoftranscript|> past the cut-off
    assert all(call[: len(expected)] == expected for call in calls)


def test_batches_give_the_same_transcripts_as_one_file_at_a_time(tiny_model_dir, tones):
    loaded = load_model(str(tiny_model_dir))
    one, _ = transcribe_files(loaded, tones, TranscribeOptions(batch_size=1, **GREEDY), progress=False)
    batched, _ = transcribe_files(loaded, tones, TranscribeOptions(batch_size=3, **GREEDY), progress=False)
    assert [t.audio for t in batched] == [str(p) for p in tones]  # the order given, whatever the batching
    assert [t.segments for t in batched] == [t.segments for t in one]
    assert all(0 <= s.start <= s.end <= t.duration for t in batched for s in t.segments)


def test_a_lora_run_is_merged_for_decoding_and_still_computes_the_run(tiny_model_dir, tmp_path, tones):
    from test_export import _fake_run, _logits

    from asrtune.models.load import LoadedModel

    trained = _fake_run(tiny_model_dir, tmp_path / "run")
    merged_run = prepare_for_inference(load_model(str(tmp_path / "run")))
    assert type(merged_run.model).__name__ == "WhisperForConditionalGeneration" and merged_run.strategy == ""
    assert torch.allclose(_logits(merged_run.model), _logits(trained), atol=1e-5)
    assert not torch.allclose(_logits(merged_run.model), _logits(load_model(str(tiny_model_dir)).model), atol=1e-3)
    # The unmerged PEFT model decodes too (the API does not require merging).
    unmerged = load_model(str(tmp_path / "run"))
    unmerged = LoadedModel(model=unmerged.model, processor=unmerged.processor, source="peft")
    assert type(unmerged.model).__name__ == "PeftModel"
    for loaded in (merged_run, unmerged):
        (transcript,), _ = transcribe_files(loaded, [tones[1]], TranscribeOptions(**GREEDY), progress=False)
        assert transcript.segments and transcript.duration == pytest.approx(0.7)


def test_an_adapter_run_transcribes_unmerged(tiny_model_dir, tmp_path, tones):
    from test_export import _fake_run

    _fake_run(tiny_model_dir, tmp_path / "run", spec="adapter:d=4")
    loaded = load_model(str(tmp_path / "run"))
    adapters = [m for m in loaded.model.modules() if type(m).__name__ == "BottleneckAdapter"]
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in adapters]
    try:
        (transcript,), _ = transcribe_files(loaded, [tones[1]], TranscribeOptions(**GREEDY), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert adapters and calls  # decoding ran through the trained adapters, unmerged
    (base,), _ = transcribe_files(load_model(str(tiny_model_dir)), [tones[1]], TranscribeOptions(**GREEDY),
                                  progress=False)
    assert transcript.segments != base.segments  # and they changed what it says


def test_bad_input_is_one_clear_error(tiny_model_dir, tones, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    with pytest.raises(AsrtuneError, match="audio file not found"):
        transcribe_files(loaded, [tones[0], tmp_path / "missing.wav"], progress=False)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AsrtuneError, match="cannot decode audio"):
        transcribe_files(loaded, [tmp_path / "bad.wav"], progress=False)
    with pytest.raises(AsrtuneError, match="English-only"):
        transcribe_files(loaded, tones[:1], TranscribeOptions(language="sw"), progress=False)
    with pytest.raises(AsrtuneError, match="at most"):
        transcribe_files(loaded, tones[:1], TranscribeOptions(prompt="word " * 400), progress=False)
    with pytest.raises(AsrtuneError, match="batch size"):
        TranscribeOptions(batch_size=0)
    with pytest.raises(AsrtuneError, match="max new tokens"):
        TranscribeOptions(max_new_tokens=0)


def test_cli_writes_srt_files_and_prints_rtf(tiny_model_dir, tones, tmp_path, capsys):
    code = main(["transcribe", str(tiny_model_dir), *map(str, tones[:2]), "--format", "srt",
                 "--output-dir", str(tmp_path / "out"), "--batch-size", "2", "--prompt", "hello world", *FAST_CLI])
    captured = capsys.readouterr()
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tone0.srt", "tone1.srt"]
    first = (tmp_path / "out" / "tone0.srt").read_text()
    assert first.startswith("1\n00:00:0") and " --> " in first
    assert "| RTF" in captured.err and "| prompt      | 2 words" in captured.err and captured.out == ""


def test_cli_prints_json_lines_in_the_order_given(tiny_model_dir, tones, capsys):
    assert main(["transcribe", str(tiny_model_dir), str(tones[1]), str(tones[0]), "--format", "json",
                 *FAST_CLI]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line)["audio"] for line in lines] == [str(tones[1]), str(tones[0])]


def test_cli_missing_audio_is_one_line(tiny_model_dir, tmp_path, capsys):
    assert main(["transcribe", str(tiny_model_dir), str(tmp_path / "nope.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"asrtune: error: audio file not found: {tmp_path / 'nope.wav'}"]


def test_cli_same_stem_twice_writes_two_files(tiny_model_dir, tones, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy = other / tones[1].name
    copy.write_bytes(tones[1].read_bytes())
    assert main(["transcribe", str(tiny_model_dir), str(tones[1]), str(copy), "--output-dir", str(tmp_path / "o"),
                 *FAST_CLI]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["tone1-2.txt", "tone1.txt"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_features_follow_the_model_dtype(tiny_model_dir, tones, dtype):
    loaded = load_model(str(tiny_model_dir), dtype=dtype)
    seen = []
    conv = loaded.model.model.encoder.conv1
    handle = conv.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    try:
        (transcript,), _ = transcribe_files(loaded, [tones[1]], TranscribeOptions(**GREEDY), progress=False)
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}  # the encoder got log-mels in its own dtype (a mismatch would raise)
    assert next(loaded.model.parameters()).dtype == dtype and transcript.duration == pytest.approx(0.7)
