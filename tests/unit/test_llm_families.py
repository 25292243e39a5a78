"""LLM-based ASR families on a tiny random Qwen2-Audio: load, labels, loss, strategies, decode, train, export."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from conftest import TINY_TEXTS, write_tiny_manifest

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.errors import AsrtuneError
from asrtune.inspection import count_parameters, module_counts
from asrtune.models.family import CachePlan
from asrtune.runs.load import load_model
from asrtune.models.qwen2_audio import audio_token_count, prompt_text
from asrtune.strategies import apply_strategy, default_learning_rate
from asrtune.training.step import TrainingForward


@pytest.fixture(scope="module")
def llm_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm-data")
    return write_tiny_manifest(folder, TINY_TEXTS, "train.jsonl"), write_tiny_manifest(folder, TINY_TEXTS[:3], "eval.jsonl")


@pytest.fixture
def loaded(tiny_qwen2_audio_dir):
    return load_model(str(tiny_qwen2_audio_dir))


def _dataset(loaded, manifest):
    return FeatureDataset(read_manifest(manifest), loaded.processor, multilingual=False)


def test_a_qwen2_audio_folder_loads_as_its_family(loaded):
    assert loaded.family.name == "qwen2_audio"
    assert type(loaded.model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(loaded.processor).__name__ == "Qwen2AudioProcessor"


def test_sequences_mask_the_prompt_and_end_with_the_end_token(loaded, llm_data):
    dataset = _dataset(loaded, llm_data[0])
    tokenizer = loaded.processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    batch = collate([dataset[0], dataset[1]], pad_to_multiple_of=8)
    for row in range(2):
        ids, prompt = dataset.labels[row], dataset.prompt_lengths[row]
        target = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert target == list(ids[prompt:])
        assert target[-1] == end
        assert tokenizer.decode(target[:-1]).strip() == TINY_TEXTS[row]
        audio_id = loaded.model.config.audio_token_id
        assert int((torch.as_tensor(ids[:prompt]) == audio_id).sum()) == audio_token_count(dataset.valid_frames[row])
        assert audio_id not in target
        assert dataset.target_tokens(row) == len(target)
    assert batch["labels"].shape[1] % 8 == 0 and batch["input_ids"].shape == batch["labels"].shape


def test_the_prompt_is_what_the_processor_builds_from_the_audio(loaded, llm_data):
    """Training and decoding prompts equal Qwen2AudioProcessor's own expansion of the chat template."""
    dataset = _dataset(loaded, llm_data[0])
    utterance = dataset.utterances[2]
    audio, rate = sf.read(utterance.audio, dtype="float32")
    inputs = loaded.processor(text=prompt_text(loaded.processor), audio=[audio], sampling_rate=rate,
                              return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == list(dataset.labels[2][: dataset.prompt_lengths[2]])
    assert int(inputs["feature_attention_mask"].sum()) == dataset.valid_frames[2]
    assert torch.allclose(inputs["input_features"][0], dataset.features[2], atol=1e-5)


def test_the_loss_is_cross_entropy_over_the_transcript_tokens_only(loaded, llm_data):
    dataset = _dataset(loaded, llm_data[0])
    batch = collate([dataset[i] for i in range(3)], pad_to_multiple_of=8)
    forward = TrainingForward(loaded.model)
    inputs = {k: batch[k] for k in ("labels", "input_features", "input_ids", "attention_mask", "feature_attention_mask")}
    with torch.no_grad():
        total, count = forward(**inputs)
        logits = loaded.model(input_ids=batch["input_ids"], input_features=batch["input_features"],
                              attention_mask=batch["attention_mask"],
                              feature_attention_mask=batch["feature_attention_mask"]).logits
    expected, tokens = 0.0, 0
    for row in range(3):
        prompt, length = dataset.prompt_lengths[row], len(dataset.labels[row])
        ids = torch.as_tensor(dataset.labels[row], dtype=torch.long)
        log_probs = torch.log_softmax(logits[row, prompt - 1 : length - 1].float(), -1)
        expected -= log_probs.gather(1, ids[prompt:length, None]).sum().item()
        tokens += length - prompt
    assert int(count) == tokens == sum(dataset.target_tokens(i) for i in range(3))
    assert total.item() == pytest.approx(expected, rel=1e-5)


def _hf_loss(model, batch) -> float:
    """The reference: transformers' own forward on the whole padded window, its padded keys masked."""
    logits = model(input_ids=batch["input_ids"], input_features=batch["input_features"],
                   attention_mask=batch["attention_mask"],
                   feature_attention_mask=batch["feature_attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100,
                                             reduction="sum").item()


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_the_valid_positions_and_cached_audio_paths_give_transformers_loss(loaded, llm_data, layers):
    """The tower run on each utterance's valid positions only (from log-mels, or from a cached frozen prefix of
    ``layers`` layers, or cached whole) gives the loss of transformers' forward on the padded window."""
    dataset = _dataset(loaded, llm_data[0])
    batch = collate([dataset[i] for i in (0, 4)], pad_to_multiple_of=8)
    family = loaded.family
    forward = TrainingForward(loaded.model)
    inputs = {k: batch[k] for k in ("labels", "input_features", "input_ids", "attention_mask", "feature_attention_mask")}
    tower_layers = len(loaded.model.model.audio_tower.layers)
    plan = CachePlan(layers=layers, whole=layers == tower_layers)
    with torch.no_grad():
        reference = _hf_loss(loaded.model, batch)
        plain, _ = forward(**inputs)
        prefix = torch.nn.utils.rnn.pad_sequence(
            family.encode_prefix(loaded.model, batch["input_features"], plan, batch["frames"]), batch_first=True)
        cached, _ = TrainingForward(loaded.model, plan)(**{**inputs, "input_features": None}, prefix=prefix)
    assert plain.item() == pytest.approx(reference, rel=1e-5)
    assert cached.item() == pytest.approx(reference, rel=1e-5)
    lengths = [(int(f) - 1) // 2 + 1 if not plan.whole else (((int(f) - 1) // 2 + 1) - 2) // 2 + 1
               for f in batch["frames"]]
    assert prefix.shape[1] == max(lengths) < loaded.model.config.audio_config.max_source_positions


def _trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_projector_trains_the_projector_only(loaded):
    model = apply_strategy(loaded.model, "projector")
    names = _trainable_names(model)
    assert names == {"model.multi_modal_projector.linear.weight", "model.multi_modal_projector.linear.bias"}
    assert default_learning_rate("projector", "qwen2_audio") == 1e-4


def test_lora_goes_on_the_llm_linear_layers_only(loaded):
    model = apply_strategy(loaded.model, "lora:r=8,alpha=32")
    names = _trainable_names(model)
    assert names and all(".lora_" in n and ".language_model." in n for n in names)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert default_learning_rate("lora", "qwen2_audio") == 1e-4 and default_learning_rate("lora") == 1e-3


def test_projector_and_lora_compose(loaded):
    model = apply_strategy(loaded.model, "projector+lora:r=8,alpha=32")
    names = _trainable_names(model)
    assert any("multi_modal_projector" in n for n in names) and any(".lora_" in n for n in names)
    assert not any("audio_tower" in n for n in names)
    counts = {m.module: m for m in module_counts(model)}
    assert counts["multi_modal_projector.linear"].trainable == counts["multi_modal_projector.linear"].total > 0
    assert counts["audio_tower.layers.0"].trainable == 0 and counts["language_model.layers.1"].trainable > 0
    order = [m.module for m in module_counts(model)]
    assert order.index("audio_tower.layers.1") < order.index("multi_modal_projector.linear") < order.index(
        "language_model.layers.0")


def test_full_trains_the_llm_head_but_not_the_fixed_positions(loaded):
    model = apply_strategy(loaded.model, "full")
    trainable, total = count_parameters(model)
    assert total - trainable == model.model.audio_tower.embed_positions.weight.numel()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"model.audio_tower.embed_positions.weight"}
    assert "lm_head.weight" in _trainable_names(model)
    assert default_learning_rate("full", "qwen2_audio") == 2e-5


def test_freeze_reinit_and_adapter_act_on_the_audio_encoder(tiny_qwen2_audio_dir):
    model = apply_strategy(load_model(str(tiny_qwen2_audio_dir)).model, "freeze:n=1")
    names = _trainable_names(model)
    assert not any(n.startswith(("model.audio_tower.conv", "model.audio_tower.layers.0.")) for n in names)
    assert any(n.startswith("model.audio_tower.layers.1.") for n in names)

    base = load_model(str(tiny_qwen2_audio_dir)).model
    before = base.model.audio_tower.layers[1].fc1.weight.clone()
    model = apply_strategy(base, "reinit:m=1")
    assert not torch.equal(model.model.audio_tower.layers[1].fc1.weight, before)
    assert not any(n.startswith("model.audio_tower.layers.0.") for n in _trainable_names(model))

    model = apply_strategy(load_model(str(tiny_qwen2_audio_dir)).model, "adapter:d=8")
    names = _trainable_names(model)
    assert names and all(".adapter." in n and n.startswith("model.audio_tower.layers.") for n in names)


def test_projector_needs_a_model_with_one(tiny_loaded):
    with pytest.raises(AsrtuneError, match="no audio-to-text projector"):
        apply_strategy(tiny_loaded.model, "projector")


def test_a_frozen_audio_encoder_is_cached(loaded):
    family = loaded.family
    assert family.cache_plan(apply_strategy(loaded.model, "projector+lora:r=4")) == CachePlan(layers=2, whole=True)
    assert family.prefix_shape(loaded.model) == (50, 32)  # the longest item: a full window's positions


@pytest.mark.parametrize("spec, plan", [("freeze:n=1", CachePlan(layers=1, whole=False)), ("full", None)])
def test_the_frozen_bottom_of_the_audio_encoder_is_cached(tiny_qwen2_audio_dir, spec, plan):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    assert loaded.family.cache_plan(apply_strategy(loaded.model, spec)) == plan


def test_every_strategy_for_llm_families_is_tested_here():
    from asrtune.strategies import STRATEGIES

    tested = {"projector", "lora", "full", "freeze", "reinit", "adapter", "decoder"}
    assert {n for n in STRATEGIES.names() if "qwen2_audio" in STRATEGIES.get(n).families} <= tested


def test_decoder_trains_the_llm_with_the_audio_encoder_frozen(loaded):
    names = _trainable_names(apply_strategy(loaded.model, "decoder"))
    assert names and not any("audio_tower" in n for n in names) and "lm_head.weight" in names


def _config(model_dir, data, strategy, **loop) -> RunConfig:
    settings = dict(max_steps=4, batch_size=2, eval_every=4, eval_batch_size=3, max_new_tokens=6, log_every=1,
                    warmup_ratio=0.0, num_workers=0)
    settings.update(loop)
    return RunConfig(model=str(model_dir), strategy=strategy, seed=3, optim=OptimConfig(learning_rate=1e-2), data=DataConfig(train=str(data[0]), eval=str(data[1])), loop=LoopConfig(**settings))


@pytest.fixture(scope="module")
def llm_run(tiny_qwen2_audio_dir, llm_data, tmp_path_factory):
    """One projector+LoRA run on the tiny Qwen2-Audio (4 steps, real decoding), shared by readers."""
    from asrtune.training.recipe import train

    run_dir = tmp_path_factory.mktemp("llm-runs") / "projector-lora"
    # no step-0 evaluation: the kept checkpoint is the trained one, so exports differ from the base
    config = _config(tiny_qwen2_audio_dir, llm_data, "projector+lora:r=4,alpha=16", eval_at_start=False)
    results = train(config, run_dir, progress=False)
    return run_dir, results


def test_a_run_trains_evaluates_and_caches_the_audio_encoder(llm_run):
    run_dir, results = llm_run
    assert results["steps"] == 4 and results["strategy"] == "projector+lora:r=4,alpha=16"
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert results["encoder_cache"]["whole"] and results["encoder_cache"]["hits"] > 0
    assert 0 < results["trainable_params"] < results["total_params"]
    assert "final" in results and (run_dir / "predictions.jsonl").is_file()


def test_a_run_folder_reloads_and_evaluates_as_the_run_scored_it(llm_run, llm_data):
    from asrtune.evaluation.decode import evaluate_dataset

    run_dir, results = llm_run
    reloaded = load_model(str(run_dir))
    assert reloaded.family.name == "qwen2_audio"
    evaluation = evaluate_dataset(reloaded, _dataset(reloaded, llm_data[1]), max_new_tokens=6, progress=False)
    assert evaluation.scores.wer == pytest.approx(results["final_wer"])


def test_a_run_resumes_to_more_steps(llm_run, tmp_path):
    import shutil

    from asrtune.training.recipe import train

    run_dir, results = llm_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = results["config"]
    resumed = train(_config(config["model"], (config["data"]["train"], config["data"]["eval"]), config["strategy"],
                            max_steps=5, eval_every=5), copy, resume=True, progress=False)
    assert resumed["steps"] == 5


def test_export_hf_loads_in_plain_transformers_and_transcribes_as_asrtune(llm_run, llm_data, tmp_path):
    """The merged folder: Qwen2AudioForConditionalGeneration + AutoProcessor, greedy, gives evaluate's text."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from asrtune.cli import main
    from asrtune.evaluation.decode import transcribe_dataset

    run_dir, _ = llm_run
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--to", "hf", "--out", str(out)]) == 0
    marker = json.loads((out / "asrtune_export.json").read_text())
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    base = load_model(json.loads((run_dir / "results.json").read_text())["base_model"]).model
    for name in ("model.multi_modal_projector.linear.weight", "model.language_model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(model.get_parameter(name), base.get_parameter(name)), name  # trained and merged
    dataset = _dataset(load_model(str(run_dir)), llm_data[1])
    expected = transcribe_dataset(load_model(str(run_dir)), dataset, max_new_tokens=6, progress=False)
    for utterance, hypothesis in zip(dataset.utterances, expected, strict=True):
        audio, rate = sf.read(utterance.audio, dtype="float32")
        inputs = processor(text=marker["prompt"], audio=[audio], sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        text = processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        assert text.strip() == hypothesis
    assert any(expected)  # the tiny model says something, so the comparison compares text


def test_learning_rate_groups_per_component(loaded):
    from asrtune.training.lr_control import parameter_groups

    model = apply_strategy(loaded.model, "full")
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 1e-5, 3e-4)}
    assert {name: g["lr"] for name, g in groups.items()} == {"audio_encoder": 1e-5, "projector": 3e-4, "llm": 1e-4}
    core = model.model
    assert sum(p.numel() for p in groups["projector"]["params"]) == sum(
        p.numel() for p in core.multi_modal_projector.parameters())
    assert sum(p.numel() for p in groups["audio_encoder"]["params"]) == sum(
        p.numel() for p in core.audio_tower.parameters() if p.requires_grad)
    lora = apply_strategy(load_model(str(loaded.base_dir)).model, "projector+lora:r=4")
    names = {g["name"] for g in parameter_groups(lora, 1e-4, None, None)}
    assert names == {"projector", "llm"}  # LoRA sits in the LLM; the frozen audio encoder has no group


def test_lr_search_targets_the_projector():
    from asrtune.training.lr_search import SearchSettings

    assert SearchSettings(target="projector_learning_rate").target == "projector_learning_rate"
    with pytest.raises(AsrtuneError, match="projector_learning_rate"):
        SearchSettings(target="decoder_learning_rate")


def test_inspect_counts_an_llm_strategy_module_by_module(tiny_qwen2_audio_dir, capsys):
    from asrtune.cli import main

    assert main(["inspect", str(tiny_qwen2_audio_dir), "--strategy", "projector+lora:r=8,alpha=32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    modules = {m["module"]: m for m in summary["modules"]}
    assert modules["multi_modal_projector.linear"]["trainable"] == 32 * 32 + 32
    lora = sum(m["trainable"] for name, m in modules.items() if name.startswith("language_model.layers"))
    assert summary["trainable"] == lora + 32 * 32 + 32 and lora > 0


def test_refusals_and_loops_count_in_the_hallucination_metrics():
    from asrtune.evaluation.hallucination import hallucination_stats, refusal_in

    references = ["open the door", "good morning", "i am sorry i am late", "blue sky today"]
    hypotheses = ["open the door", "I'm sorry, as an AI I cannot transcribe this audio.", "i am sorry i am late",
                  "blue sky blue sky blue sky blue sky"]
    stats = hallucination_stats(references, hypotheses, "en")
    assert (stats.refusals, stats.loops, stats.flagged) == (1, 1, 2)
    assert stats.refusal_rate == 0.25 and stats.examples == (1, 3)
    assert refusal_in("I’m sorry, I can't help") == "i'm sorry"
    assert refusal_in("i am sorry i am late", "i am sorry i am late") is None  # the speaker said it


def test_the_repetition_guard_stops_a_looping_row_only():
    from asrtune.models.guards import RepetitionStop

    guard = RepetitionStop(prompt_width=2, max_n=3, min_repeats=3, min_unigram_repeats=5)
    rows = torch.tensor([[9, 9, 5, 6, 5, 6, 5, 6], [9, 9, 1, 2, 3, 4, 5, 6], [9, 9, 7, 7, 7, 7, 8, 8]])
    assert guard(rows, None).tolist() == [True, False, False]
    assert guard.stopped == {0}
    assert guard.looping([4] * 5) and not guard.looping([4] * 4)


def test_decoding_bounds_new_tokens_by_the_audio_duration(loaded, llm_data, monkeypatch):
    from asrtune.evaluation.decode import decode_dataset
    from asrtune.models.guards import duration_token_cap

    dataset = _dataset(loaded, llm_data[1])
    budgets: list[int] = []
    real = loaded.model.generate

    def recording(**kwargs):
        budgets.append(kwargs["max_new_tokens"])
        return real(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", recording)
    decoded = decode_dataset(loaded, dataset, batch_size=2, max_new_tokens=500, progress=False)
    longest = [max(dataset.durations[:2]), dataset.durations[2]]
    assert budgets == [duration_token_cap(s) for s in longest] and all(b < 500 for b in budgets)
    assert len(decoded.hypotheses) == 3
    decode_dataset(loaded, dataset, batch_size=3, max_new_tokens=3, progress=False)
    assert budgets[-1] == 3  # a smaller cap still wins


@pytest.mark.parametrize("alias, builder", [("llm-asr-tiny-raw", "build_llm_asr_tiny"),
                                            ("llm-asr-tiny", "build_aligned")])
def test_bundled_llm_asr_tiny_resolves_to_the_assembled_folder(tiny_qwen2_audio_dir, monkeypatch, alias, builder):
    """The sources build lazily through asrtune.models.llm_asr_tiny (stubbed here: no bundled weights needed):
    the raw assembly, and the aligned one."""
    import asrtune.models.load as load
    from asrtune.models.load import resolve_source

    calls = []
    monkeypatch.setattr(load, builder, lambda: calls.append(1) or tiny_qwen2_audio_dir)
    assert resolve_source(f"bundled:{alias}") == ("hf_dir", tiny_qwen2_audio_dir)
    assert load_model(f"bundled:{alias}").family.name == "qwen2_audio" and len(calls) == 2


def test_lr_search_centres_its_grid_on_the_family_default(tiny_qwen2_audio_dir, tiny_model_dir):
    from asrtune.models.load import source_family
    from asrtune.training.lr_search import SearchSettings, lr_grid

    assert source_family(str(tiny_qwen2_audio_dir)) == "qwen2_audio" and source_family(str(tiny_model_dir)) == "whisper"
    settings = SearchSettings(trials=3)
    assert lr_grid(settings, "lora", "qwen2_audio") == [1e-5, 1e-4, 1e-3]
    assert lr_grid(settings, "lora") == [1e-4, 1e-3, 1e-2]


def test_evaluate_runs_and_transcribe_refuses_an_llm_model_clearly(tiny_qwen2_audio_dir, llm_data, capsys):
    from asrtune.cli import main

    assert main(["evaluate", str(tiny_qwen2_audio_dir), "--data", str(llm_data[1]), "--json",
                 "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    audio = read_manifest(llm_data[1])[0].audio
    assert main(["transcribe", str(tiny_qwen2_audio_dir), audio]) == 2
    assert "runs Whisper models" in capsys.readouterr().err
