"""CTC alignment of an LLM family's projected audio onto its LLM's embeddings (loop.ctc_weight, ctc_only)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY_TEXTS, read_jsonl, write_tiny_manifest

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.errors import AsrtuneError
from asrtune.models.qwen2_audio import ctc_collapse
from asrtune.runs.load import load_model
from asrtune.strategies import apply_strategy
from asrtune.training.ctc import ctc_settings
from asrtune.training.recipe import train
from asrtune.training.step import TrainingForward

INPUTS = ("labels", "input_features", "input_ids", "attention_mask", "feature_attention_mask")


@pytest.fixture(scope="module")
def llm_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctc-data")
    return write_tiny_manifest(folder, TINY_TEXTS, "train.jsonl"), write_tiny_manifest(folder, TINY_TEXTS[:3], "eval.jsonl")


def _settings(loaded, manifest, **loop):
    dataset = FeatureDataset(read_manifest(manifest), loaded.processor, multilingual=False)
    return dataset, ctc_settings(LoopConfig(**loop), loaded, dataset, seed=0)


def test_a_greedy_path_collapses_repeats_then_drops_blanks():
    assert ctc_collapse([0, 5, 5, 0, 5, 7, 7, 7, 0], blank=0) == [5, 5, 7]
    assert ctc_collapse([0, 0], blank=0) == []


def test_the_vocabulary_holds_the_blank_the_transcripts_and_the_negatives(tiny_qwen2_audio_dir, llm_data):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    dataset, ctc = _settings(loaded, llm_data[0], ctc_weight=0.5, ctc_negatives=10)
    blank = loaded.model.config.audio_token_id
    spoken = {int(t) for labels, prompt in zip(dataset.labels, dataset.prompt_lengths) for t in labels[prompt:-1]}
    assert int(ctc.vocab[0]) == blank and spoken <= set(ctc.vocab.tolist())
    assert len(ctc.vocab) <= 1 + len(spoken) + 10 and ctc.weight == 0.5 and not ctc.only
    assert all(int(ctc.index[token]) == position for position, token in enumerate(ctc.vocab.tolist()))
    assert _settings(loaded, llm_data[0])[1] is None  # no CTC asked for


def test_ctc_only_trains_the_projector_without_running_the_llm(tiny_qwen2_audio_dir, llm_data):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    model = apply_strategy(loaded.model, "projector")
    dataset, ctc = _settings(loaded, llm_data[0], ctc_only=True)
    batch = collate([dataset[i] for i in range(4)], pad_to_multiple_of=8)
    llm_calls = []
    model.model.language_model.register_forward_hook(lambda *args: llm_calls.append(1))
    loss, tokens = TrainingForward(model, None, ctc)(**{k: batch[k] for k in INPUTS})
    loss.backward()
    assert llm_calls == [] and torch.isfinite(loss) and loss > 0
    assert model.model.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    both, _ = TrainingForward(model, None, dataclasses.replace(ctc, only=False, weight=0.5))(
        **{k: batch[k] for k in INPUTS})
    plain, _ = TrainingForward(model)(**{k: batch[k] for k in INPUTS})
    assert llm_calls and both.item() == pytest.approx(plain.item() + 0.5 * loss.item(), rel=1e-5)


def test_the_ctc_greedy_decode_reads_the_embedding_rows_the_projector_points_at(tiny_qwen2_audio_dir):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    family, model = loaded.family, loaded.model
    embeddings = model.model.get_input_embeddings().weight
    blank = model.config.audio_token_id
    words = loaded.processor.tokenizer(" good morning", add_special_tokens=False)["input_ids"]
    path = [blank, words[0], words[0], blank, words[1], blank]
    projected = embeddings[path][None] * 50  # each frame far closer to its own row than to any other
    best = family.ctc_logits(model, projected).argmax(-1)[0].tolist()
    assert loaded.processor.tokenizer.decode(ctc_collapse(best, blank)).strip() == "good morning"


def _config(model_dir, data, **loop) -> RunConfig:
    settings = dict(max_steps=2, batch_size=3, eval_every=2, eval_batch_size=4, max_new_tokens=4, warmup_ratio=0.0,
                    num_workers=0)
    return RunConfig(model=str(model_dir), strategy="projector:tower_layers=1", seed=0,
                     data=DataConfig(train=str(data[0]), eval=str(data[1])),
                     optim=OptimConfig(learning_rate=1e-3), loop=LoopConfig(**{**settings, **loop}))


def test_a_ctc_stage_and_a_joint_stage_train_and_say_how_they_decoded(tiny_qwen2_audio_dir, llm_data, tmp_path):
    results = train(_config(tiny_qwen2_audio_dir, llm_data, ctc_only=True), tmp_path / "ctc", progress=False)
    evals = [r for r in read_jsonl(tmp_path / "ctc" / "metrics.jsonl") if "eval_wer" in r]
    assert [r["eval_decoding"] for r in evals] == ["ctc", "ctc"] and results["steps"] == 2
    assert results["encoder_cache"]["layers"] == 1  # the tower's frozen bottom layer is cached
    joint = train(_config(tiny_qwen2_audio_dir, llm_data, ctc_weight=0.3), tmp_path / "joint", progress=False,
                  final_evaluation=False)
    evals = [r for r in read_jsonl(tmp_path / "joint" / "metrics.jsonl") if "eval_wer" in r]
    assert all(0 <= r["ctc_wer"] for r in evals) and joint["steps"] == 2


def test_ctc_needs_a_family_with_a_ctc_head(tiny_model_dir, llm_data, tmp_path):
    with pytest.raises(AsrtuneError, match="Whisper family has no CTC head"):
        train(dataclasses.replace(_config(tiny_model_dir, llm_data, ctc_only=True), strategy="decoder"),
              tmp_path / "whisper", progress=False)


def test_tower_layers_train_the_top_of_the_audio_encoder_and_its_norm(tiny_qwen2_audio_dir):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    model = apply_strategy(loaded.model, "projector:tower_layers=1+lora:r=2")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("audio_tower.layers.1." in n for n in names) and not any("audio_tower.layers.0." in n for n in names)
    assert any("audio_tower.layer_norm" in n for n in names) and any("lora_" in n for n in names)
    with pytest.raises(AsrtuneError, match="has 2 layers"):
        apply_strategy(load_model(str(tiny_qwen2_audio_dir)).model, "projector:tower_layers=3")
