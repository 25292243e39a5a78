"""The qwen3_asr family on a tiny random Qwen3-ASR: target format, masking, loss, strategies, a run, export."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from conftest import TINY_TEXTS, write_tiny_manifest

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.runs.load import load_model
from asrtune.models.qwen3_asr import qwen3_audio_tokens
from asrtune.strategies import apply_strategy
from asrtune.training.step import TrainingForward

KEYS = ("labels", "input_features", "input_ids", "attention_mask", "feature_attention_mask")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3-data")
    return write_tiny_manifest(folder, TINY_TEXTS, "train.jsonl"), write_tiny_manifest(folder, TINY_TEXTS[:3], "eval.jsonl")


@pytest.fixture
def loaded(tiny_qwen3_asr_dir):
    return load_model(str(tiny_qwen3_asr_dir))


def _dataset(loaded, manifest):
    return FeatureDataset(read_manifest(manifest), loaded.processor, multilingual=False)


def test_the_target_is_language_asr_text_then_the_transcript(loaded, data):
    assert loaded.family.name == "qwen3_asr"
    dataset = _dataset(loaded, data[0])
    tokenizer = loaded.processor.tokenizer
    batch = collate([dataset[0], dataset[1]], pad_to_multiple_of=8)
    target = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tokenizer.decode(target) == "language English<asr_text>hello world<|im_end|>"
    assert loaded.model.config.audio_token_id not in target


def test_the_prompt_is_what_the_processor_builds(loaded, data):
    dataset = _dataset(loaded, data[0])
    for row in (0, 5):  # 0.4 s (padded to Qwen3-ASR's 0.5 s minimum) and 0.9 s
        audio, rate = sf.read(dataset.utterances[row].audio, dtype="float32")
        prompt = loaded.family.prompt(loaded.processor, None)
        inputs = loaded.processor(text=[prompt], audio=[audio], sampling_rate=rate)
        assert inputs["input_ids"][0].tolist() == list(dataset.labels[row][: dataset.prompt_lengths[row]])
        assert int(inputs["input_features_mask"].sum()) == dataset.valid_frames[row]
        audio_id = loaded.model.config.audio_token_id
        assert int((inputs["input_ids"] == audio_id).sum()) == qwen3_audio_tokens(dataset.valid_frames[row])


def test_loss_counts_target_tokens_and_the_cached_audio_path_matches(loaded, data):
    dataset = _dataset(loaded, data[0])
    batch = collate([dataset[i] for i in (0, 3, 5)], pad_to_multiple_of=8)
    forward = TrainingForward(loaded.model)
    inputs = {k: batch[k] for k in KEYS}
    with torch.no_grad():
        total, count = forward(**inputs)
        logits = loaded.model(input_ids=batch["input_ids"], input_features=batch["input_features"],
                              attention_mask=batch["attention_mask"],
                              input_features_mask=batch["feature_attention_mask"]).logits
        audio = loaded.family.encode_audio(loaded.model, batch["input_features"], batch["frames"])
        cached, _ = forward(**{**inputs, "input_features": None}, prefix=audio)
    expected = 0.0
    for row, item in enumerate((0, 3, 5)):
        prompt, length = dataset.prompt_lengths[item], len(dataset.labels[item])
        ids = torch.as_tensor(dataset.labels[item], dtype=torch.long)
        log_probs = torch.log_softmax(logits[row, prompt - 1: length - 1].float(), -1)
        expected -= log_probs.gather(1, ids[prompt:length, None]).sum().item()
    assert int(count) == sum(dataset.target_tokens(i) for i in (0, 3, 5))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert cached.item() == pytest.approx(total.item(), rel=1e-5)


def test_strategies_address_the_qwen3_asr_modules(tiny_qwen3_asr_dir):
    def trainable(spec):
        model = apply_strategy(load_model(str(tiny_qwen3_asr_dir)).model, spec)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    assert trainable("projector") == {f"model.multi_modal_projector.linear_{i}.{k}" for i in (1, 2)
                                      for k in ("weight", "bias")}
    lora = trainable("lora:r=4")
    assert lora and all(".lora_" in n and ".language_model." in n for n in lora)
    frozen = trainable("freeze:n=1")
    assert not any(n.startswith(("model.audio_tower.conv", "model.audio_tower.layers.0.")) for n in frozen)
    assert any(n.startswith("model.audio_tower.layers.1.") for n in frozen)


def test_a_run_trains_reloads_resumes_and_exports(tiny_qwen3_asr_dir, data, tmp_path):
    import shutil

    from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

    from asrtune.cli import main
    from asrtune.evaluation.decode import evaluate_dataset
    from asrtune.training.recipe import train

    def config(steps):
        return RunConfig(model=str(tiny_qwen3_asr_dir), strategy="projector+lora:r=4,alpha=16", seed=3,
                         optim=OptimConfig(learning_rate=1e-2),
                         data=DataConfig(train=str(data[0]), eval=str(data[1])),
                         loop=LoopConfig(max_steps=steps, batch_size=2, eval_every=steps, eval_batch_size=3,
                                         max_new_tokens=8, warmup_ratio=0.0, num_workers=0, eval_at_start=False))

    results = train(config(4), tmp_path / "run", progress=False)
    assert results["steps"] == 4 and results["encoder_cache"]["hits"] > 0
    reloaded = load_model(str(tmp_path / "run"))
    evaluation = evaluate_dataset(reloaded, _dataset(reloaded, data[1]), max_new_tokens=8, progress=False)
    assert evaluation.scores.wer == pytest.approx(results["final_wer"])
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    assert train(config(5), tmp_path / "resumed", resume=True, progress=False)["steps"] == 5
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), "--to", "hf", "--out", str(out)]) == 0
    model = Qwen3ASRForConditionalGeneration.from_pretrained(out)
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen3ASRProcessor"
    assert not any("lora" in n for n, _ in model.named_parameters())
    prompt = json.loads((out / "asrtune_export.json").read_text())["prompt"]
    assert prompt == "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"
