"""Word timing on tiny random Whisper: alignment heads, teacher-forced DTW, the window loop, the align command."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from transformers import GenerationConfig, WhisperConfig

from conftest import SAMPLE_RATE, write_tone

from asrtune.cli import main
from asrtune.data.vad import pauses, speech_frames, trim_to_speech
from asrtune.inference.align import AlignOptions, align_transcript
from asrtune.models.whisper_timing import (PUBLISHED_ALIGNMENT_HEADS, ensure_alignment_heads,
                                           teacher_forced_timing, whisper_size)


def _shape(d_model, layers, heads, mels=80, vocab=51864):
    return WhisperConfig(d_model=d_model, decoder_layers=layers, decoder_attention_heads=heads, encoder_layers=1,
                         num_mel_bins=mels, vocab_size=vocab)


def test_sizes_and_published_heads_by_shape():
    assert whisper_size(_shape(384, 4, 6)) == "tiny.en"
    assert whisper_size(_shape(512, 6, 8, vocab=51865)) == "base"
    assert whisper_size(_shape(1280, 4, 20, mels=128, vocab=51866)) == "large-v3-turbo"
    assert whisper_size(_shape(32, 2, 2)) is None
    model = SimpleNamespace(config=_shape(512, 6, 8, vocab=51865), generation_config=GenerationConfig())
    assert ensure_alignment_heads(model) == "published:base"
    assert model.generation_config.alignment_heads == [list(p) for p in PUBLISHED_ALIGNMENT_HEADS["base"]]
    assert ensure_alignment_heads(model) == "model"  # kept once there
    odd = SimpleNamespace(config=_shape(32, 4, 2), generation_config=GenerationConfig(alignment_heads=[]))
    assert ensure_alignment_heads(odd) == "upper half"
    assert odd.generation_config.alignment_heads == [[2, 0], [2, 1], [3, 0], [3, 1]]


def test_loaded_whisper_gets_heads(tiny_loaded):
    assert tiny_loaded.model.generation_config.alignment_heads == [[1, 0], [1, 1]]  # 2 layers, 2 heads: upper half


def test_teacher_forced_timing_is_monotone_and_inside_the_window(tiny_loaded):
    model, processor = tiny_loaded.model, tiny_loaded.processor
    tokens = processor.tokenizer.encode(" the cat sat on the mat", add_special_tokens=False)
    features = processor.feature_extractor(np.zeros(SAMPLE_RATE, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                           return_tensors="pt").input_features
    prompt = [model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]
    timing = teacher_forced_timing(model, features, prompt, tokens, num_frames=80)
    assert len(timing.starts) == len(timing.ends) == len(timing.logprobs) == len(tokens)
    assert np.all(np.diff(timing.starts) >= 0) and np.all(timing.ends >= timing.starts)
    assert timing.ends[-1] <= 0.8 + 1e-9  # 80 log-mel frames (0.8 s) = 40 encoder frames of 0.02 s
    assert np.all(timing.logprobs <= 0) and timing.end_logprob <= 0


def test_vad_pauses_and_trimming():
    tone = (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)  # VAD: "speech"
    samples = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), tone, np.zeros(SAMPLE_RATE, np.float32), tone])
    speech = speech_frames(samples)
    found = pauses(speech, 0.1)
    # WebRTC's VAD holds on for a few frames after speech: edges within 0.1 s
    assert len(found) == 2 and found[1][0] == pytest.approx(1.5, abs=0.1) and found[1][1] == pytest.approx(2.5, abs=0.1)
    start, end = trim_to_speech(speech, 0.0, 2.2)
    assert start == pytest.approx(0.5, abs=0.1) and end == pytest.approx(1.5, abs=0.1)


def test_window_loop_times_every_word_in_order(tiny_loaded, tmp_path):
    samples = write_tone(tmp_path / "a.wav", seconds=3.5)[:, 0]
    text = "open the door. the cat sat on the mat.\nblue sky today and one two three"
    alignment = align_transcript(tiny_loaded, samples, text, AlignOptions(guard=0.3))
    assert [w.text for w in alignment.words] == text.split()
    assert alignment.windows >= 2  # the tiny model's window is 1 s
    starts = [w.start for w in alignment.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= alignment.duration for w in alignment.words)
    assert all(0 <= w.score <= 1 for w in alignment.words)


def test_align_command_json_lists_every_word(tiny_model_dir, tmp_path, capsys):
    write_tone(tmp_path / "rec.wav", seconds=2.5)
    (tmp_path / "rec.txt").write_text("hello world. good morning to you all\n", encoding="utf-8")
    code = main(["align", str(tmp_path / "rec.wav"), str(tmp_path / "rec.txt"), "--model", str(tiny_model_dir),
                 "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [w["word"] for w in record["words"]] == "hello world. good morning to you all".split()
    assert all({"word", "start", "end", "score", "heard"} <= set(w) for w in record["words"])
    assert record["duration"] == pytest.approx(2.5)


def test_align_command_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    sf.write(str(tmp_path / "rec.wav"), np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    assert main(["align", str(tmp_path / "rec.wav"), str(tmp_path / "missing.txt"), "--model",
                 str(tiny_model_dir)]) == 2
    assert "transcript not found" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("  \n")
    assert main(["align", str(tmp_path / "rec.wav"), str(tmp_path / "empty.txt"), "--model",
                 str(tiny_model_dir)]) == 2
    assert "the transcript is empty" in capsys.readouterr().err
