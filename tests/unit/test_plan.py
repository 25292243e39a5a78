"""``asrtune plan``: meta-device models from configs, exact trainable counts, the memory terms' behaviour."""

from __future__ import annotations

import json
import time

import pytest
import torch

from asrtune.cli import main
from asrtune.errors import AsrtuneError
from asrtune.inspection import count_parameters
from asrtune.runs.load import load_model
from asrtune.strategies import apply_strategy
from asrtune.training.plan import GIB, largest_batch, parse_size, plan_memory


def _plan_json(capsys, *args) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_whisper_large_v3_counts_what_transformers_builds_from_its_config(capsys):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    started = time.monotonic()
    plan = _plan_json(capsys, "whisper-large-v3", "--strategy", "full")
    assert time.monotonic() - started < 60
    config = WhisperConfig(vocab_size=51866, num_mel_bins=128, d_model=1280, encoder_layers=32,
                           decoder_layers=32, encoder_attention_heads=20, decoder_attention_heads=20,
                           encoder_ffn_dim=5120,
                           decoder_ffn_dim=5120)
    with torch.device("meta"):
        reference = WhisperForConditionalGeneration(config)
    assert plan["total_params"] == sum(p.numel() for p in reference.parameters()) == 1_543_490_560
    # full trains everything but the encoder's fixed sinusoidal positions (1500 x 1280)
    assert plan["trainable_params"] == plan["total_params"] - 1500 * 1280
    turbo = _plan_json(capsys, "whisper-large-v3-turbo", "--strategy", "full")
    assert turbo["total_params"] < plan["total_params"] / 1.8  # 4 decoder layers instead of 32


def test_qwen2_audio_7b_lora_count_is_peft_count_on_every_llm_linear(capsys):
    plan = _plan_json(capsys, "qwen2-audio-7b", "--strategy", "lora:r=8,alpha=32", "--batch-size", "1")
    hidden, ffn, layers, r = 4096, 11008, 32, 8
    # q k v o, gate and up, down
    per_layer = 4 * r * (hidden + hidden) + 2 * r * (hidden + ffn) + r * (ffn + hidden)
    assert plan["trainable_params"] == layers * per_layer == 19_988_480
    assert plan["total_params"] > 8.3e9


def test_a_local_model_counts_as_training_applies_the_strategy(tiny_model_dir, capsys):
    for strategy in ("full", "lora:r=8", "freeze:n=1+adapter:d=8,encoder_layers=top-1", "decoder"):
        plan = _plan_json(capsys, str(tiny_model_dir), "--strategy", strategy)
        trained, _ = count_parameters(apply_strategy(load_model(str(tiny_model_dir)).model, strategy))
        assert plan["trainable_params"] == trained, strategy


def test_memory_terms_move_the_way_the_settings_say(tiny_model_dir):
    def plan(**kwargs):
        settings = {"batch_size": 8} | kwargs
        return plan_memory(str(tiny_model_dir), settings.pop("strategy", "full"), **settings)

    base = plan()
    terms = ("weights", "gradients", "optimizer", "activations", "logits", "process")
    assert base.peak_memory_bytes == sum(getattr(base, f"{k}_bytes") for k in terms)
    assert base.activations_bytes == base.activations_kept_bytes + base.activations_workspace_bytes
    checkpointed = plan(gradient_checkpointing=True)  # keeps block inputs; backward's working set stays
    assert checkpointed.activations_kept_bytes < base.activations_kept_bytes / 2
    assert checkpointed.activations_workspace_bytes == base.activations_workspace_bytes > 0
    assert plan(batch_size=16).activations_bytes == 2 * base.activations_bytes
    assert plan(optim="adamw_8bit").optimizer_bytes == base.optimizer_bytes / 4
    assert plan(optim="adafactor").optimizer_bytes < base.optimizer_bytes / 8
    lora = plan(strategy="lora:r=8")
    assert lora.gradients_bytes < base.gradients_bytes / 10 and lora.weights_bytes >= base.weights_bytes
    assert plan(strategy="lora:r=8", quantization="4bit").weights_bytes < lora.weights_bytes
    decoder = plan(strategy="decoder")  # the frozen encoder keeps no activations (its output is cached)
    assert decoder.layers_with_activations == 2 and decoder.activations_bytes < base.activations_bytes
    with pytest.raises(AsrtuneError, match="trains pretrained weights"):
        plan(quantization="4bit")


def test_gpu_budget_gives_the_largest_batch_and_advice(capsys):
    plan = _plan_json(capsys, "whisper-large-v3", "--strategy", "full", "--gpu-memory", "24GiB")
    assert plan["device"] == "cuda" and plan["fits"] is False and plan["largest_batch"] == 0
    assert any("gradient-checkpointing" in line for line in plan["advice"])
    lean = _plan_json(capsys, "whisper-large-v3", "--strategy", "lora:r=8", "--gradient-checkpointing",
                      "--gpu-memory", "80GiB", "--batch-size", "1")
    assert lean["fits"] is True and lean["largest_batch"] >= 1
    one = plan_memory("whisper-large-v3", "lora:r=8", batch_size=1, gradient_checkpointing=True,
                      device="cuda")
    fitted = plan_memory("whisper-large-v3", "lora:r=8", batch_size=lean["largest_batch"],
                         gradient_checkpointing=True, device="cuda")
    assert fitted.peak_memory_bytes <= 80 * GIB < plan_memory(
        "whisper-large-v3", "lora:r=8", batch_size=lean["largest_batch"] + 1, gradient_checkpointing=True,
        device="cuda").peak_memory_bytes
    assert largest_batch(one, 80 * GIB) == lean["largest_batch"]
    assert parse_size("24GiB") == 24 * GIB and parse_size("512MB") == 512 * 1024**2
    with pytest.raises(AsrtuneError, match="--gpu-memory"):
        parse_size("lots")


def test_the_table_names_each_term(capsys, tiny_model_dir):
    assert main(["plan", str(tiny_model_dir), "--strategy", "lora:r=8", "--gpu-memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    for term in ("trainable parameters", "optimizer state (adamw)", "activations", "predicted peak", "fits"):
        assert term in out


def test_data_gives_the_longest_target_in_the_models_tokens(tiny_model_dir, tiny_data, capsys):
    from asrtune.data.manifest import read_manifest

    plan = _plan_json(capsys, str(tiny_model_dir), "--strategy", "full", "--data", str(tiny_data[0]))
    tokenizer = load_model(str(tiny_model_dir)).processor.tokenizer
    longest = max(len(tokenizer(" " + u.text, add_special_tokens=False)["input_ids"])
                  for u in read_manifest(tiny_data[0]))
    assert plan["label_tokens"] == longest + 2  # <|notimestamps|> before (English-only), <|endoftext|> after
    assert main(["plan", "qwen2-audio-7b", "--data", str(tiny_data[0])]) == 2
    assert "give --label-tokens" in capsys.readouterr().err
