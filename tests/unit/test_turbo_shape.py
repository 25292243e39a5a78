"""Whisper large-v3-turbo's shape, tiny: 128 mel bins, 32 encoder layers, 4 decoder layers.

No turbo weights are bundled on PyPI, so the shape is what is tested: a random model with turbo's
layer counts and mel bins (d_model 16, 2 heads, a 1 s window as the other tiny models) goes through
train, evaluate, export to HF and to CTranslate2, and transcribe. The vocabulary stays the shipped
English tokenizer's (turbo's multilingual 51866 would need its tokenizer; the vocabulary is not what
differs in turbo's shape).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

from conftest import make_tokenizer, tiny_whisper, write_tone

from asrtune.config import DataConfig, LoopConfig, RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.export.ct2 import export_ct2
from asrtune.export.merge import export_hf
from asrtune.inference import TranscribeOptions, transcribe_files
from asrtune.runs.load import load_model
from asrtune.training.recipe import train

TURBO = dict(num_mel_bins=128, encoder_layers=32, decoder_layers=4, d_model=16, encoder_ffn_dim=32,
             decoder_ffn_dim=32)
SOT, NO_TIMESTAMPS = 50257, 50362
# The random model never says end-of-text; its capped hypotheses are expected, not news.
GREEDY = {"temperatures": (0.0,), "compression_ratio_threshold": None, "logprob_threshold": None,
          "no_speech_threshold": None, "max_new_tokens": 4, "batch_size": 2}


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory):
    """A saved HF folder: the model plus a 128-bin, 1 s feature extractor."""
    folder = tmp_path_factory.mktemp("turbo-shape")
    tiny_whisper(seed=3, perturb=0.02, **TURBO).save_pretrained(folder)
    extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=1)
    WhisperProcessor(feature_extractor=extractor, tokenizer=make_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def turbo_run(turbo_dir, tiny_data, tmp_path_factory):
    """Two LoRA steps with one real evaluation: (run folder, results)."""
    train_manifest, eval_manifest = tiny_data
    config = RunConfig(
        model=str(turbo_dir), strategy="lora:r=2,alpha=4", seed=0,
        data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
        loop=LoopConfig(max_steps=2, batch_size=2, eval_every=2, eval_batch_size=3, max_new_tokens=4,
                        log_every=1, warmup_ratio=0.0, num_workers=0, eval_at_start=False),
    )
    run_dir = tmp_path_factory.mktemp("turbo-runs") / "lora"
    return run_dir, train(config, run_dir, progress=False)


def _logits(model) -> torch.Tensor:
    features = torch.randn(1, 128, 100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        prompt = torch.tensor([[SOT, NO_TIMESTAMPS, 464]])
        return model(input_features=features, decoder_input_ids=prompt).logits


def test_the_loaded_model_has_turbos_shape(turbo_dir):
    loaded = load_model(str(turbo_dir))
    config = loaded.model.config
    assert (config.num_mel_bins, config.encoder_layers, config.decoder_layers) == (128, 32, 4)
    assert len(loaded.model.model.encoder.layers) == 32 and len(loaded.model.model.decoder.layers) == 4
    assert loaded.processor.feature_extractor.feature_size == 128


def test_training_runs_and_evaluation_scores_what_results_say(turbo_run, tiny_data):
    run_dir, results = turbo_run
    assert results["steps"] == 2 and results["trainable_params"] > 0
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    reloaded = load_model(str(run_dir))
    assert reloaded.model.config.num_mel_bins == 128
    rows = read_manifest(tiny_data[1])
    dataset = FeatureDataset(rows, reloaded.processor, multilingual=False, progress=False)
    assert dataset[0]["input_features"].shape[0] == 128
    evaluation = evaluate_dataset(reloaded, dataset, max_new_tokens=4, progress=False)
    assert evaluation.scores.wer == results["final_wer"]


def test_hf_export_reloads_in_plain_transformers_with_128_bins(turbo_run, tmp_path):
    run_dir, _ = turbo_run
    out = export_hf(str(run_dir), tmp_path / "hf")
    model = WhisperForConditionalGeneration.from_pretrained(out)
    config = model.config
    assert (config.num_mel_bins, config.encoder_layers, config.decoder_layers) == (128, 32, 4)
    assert not any("lora" in name for name in model.state_dict())
    assert WhisperProcessor.from_pretrained(out).feature_extractor.feature_size == 128
    merged = load_model(str(run_dir)).model.merge_and_unload()
    assert torch.allclose(_logits(model), _logits(merged), atol=1e-5)


def test_ct2_export_decodes_like_hf_and_reimports_with_turbos_shape(turbo_dir, tmp_path):
    check = export_ct2(str(turbo_dir), tmp_path / "ct2", quantization="float32")
    assert check is not None and check.identical and len(check.hf_tokens) > 0, check
    preprocessor = json.loads((tmp_path / "ct2" / "preprocessor_config.json").read_text())
    assert preprocessor["feature_size"] == 128
    reimported = load_model(str(tmp_path / "ct2")).model
    assert (reimported.config.num_mel_bins, reimported.config.encoder_layers,
            reimported.config.decoder_layers) == (128, 32, 4)
    assert torch.allclose(_logits(reimported), _logits(load_model(str(turbo_dir)).model), atol=1e-5)


def test_transcribe_walks_windows_on_128_bins(turbo_dir, tmp_path):
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    write_tone(paths[0], seconds=2.5, freq=300, seed=1)
    write_tone(paths[1], seconds=0.8, freq=500, seed=2)
    transcripts, stats = transcribe_files(load_model(str(turbo_dir)), paths, TranscribeOptions(**GREEDY),
                                          progress=False)
    assert [t.audio for t in transcripts] == [str(p) for p in paths]
    assert transcripts[0].duration == pytest.approx(2.5) and stats.audio_seconds == pytest.approx(3.3)
    assert all(0 <= s.start <= s.end <= t.duration for t in transcripts for s in t.segments)
    assert transcripts[0].segments and transcripts[0].segments[-1].end > 1.0  # more than one 1 s window
