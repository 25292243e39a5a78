"""The training recipe on the tiny random Whisper: run folders, checkpoint choice, resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import read_jsonl

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig, config_from_dict, config_hash
from asrtune.errors import AsrtuneError
from asrtune.data.manifest import manifests_digest
from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.metrics import Scores, score
from asrtune.runs.load import load_model
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train
from test_training_data import crashing_sampler

LORA = "lora:r=4,alpha=8"
RESULT_KEYS = {
    "model",
    "base_model",
    "strategy",
    "learning_rate",
    "steps",
    "best_step",
    "stopped_early",
    "baseline_subset",
    "best_subset_wer",
    "final",
    "final_wer",
    "final_raw_wer",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "train_seconds",
    "git_sha",
    "config_hash",
    "data_digest",
    "config",
}


def make_config(model_dir, data, **loop) -> RunConfig:
    train_manifest, eval_manifest = data
    settings = dict(
        max_steps=3,
        batch_size=2,
        eval_every=2,
        eval_batch_size=4,
        max_new_tokens=4,
        log_every=1,
        warmup_ratio=0.0,
        num_workers=0,
    )
    settings.update(loop)
    return RunConfig(
        model=str(model_dir),
        strategy=LORA,
        seed=1,
        data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
        loop=LoopConfig(**settings),
    )


def with_steps(config: RunConfig, max_steps: int) -> RunConfig:
    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, max_steps=max_steps))


def _probe_inputs():
    features = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(11))
    return features, torch.tensor([[50257, 50362, 464, 3797, 3332], [50257, 50362, 15496, 995, 50256]])


def logits(model):
    features, decoder_ids = _probe_inputs()
    model.eval()
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=decoder_ids).logits


class Capture:
    """The recipe's apply_strategy part, keeping the model the recipe trains."""

    def __init__(self):
        self.model = None

    def __call__(self, model, spec):
        from asrtune.strategies import apply_strategy

        self.model = apply_strategy(model, spec)
        return self.model


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """One real LoRA run (3 steps, real decoding for evaluation), shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    config = make_config(tiny_model_dir, tiny_data)
    capture = Capture()
    results = train(config, run_dir, progress=False, parts=RecipeParts(apply_strategy=capture))
    return config, run_dir, results, capture.model


def test_run_folder_layout_and_results(lora_run, tiny_model_dir):
    config, run_dir, results, _ = lora_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "predictions.jsonl",
        "checkpoints/best/trainable.safetensors",
        "checkpoints/best/meta.json",
        "checkpoints/last/trainable.safetensors",
        "checkpoints/last/training_state.pt",
        "checkpoints/last/state.json",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert RESULT_KEYS <= set(results)
    assert (results["model"], results["base_model"], results["strategy"]) == (
        str(run_dir),
        str(tiny_model_dir),
        LORA,
    )
    assert results["steps"] == 3 and results["stopped_early"] is False
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_wer" in r]
    lowest = min(r["eval_wer"] for r in evals)
    assert results["best_step"] == next(r["step"] for r in evals if r["eval_wer"] == lowest)  # the first lowest
    assert results["learning_rate"] == 1e-3  # LoRA's default: optim.learning_rate is null
    # q and v LoRA (r=4) on 6 attentions of width 32.
    assert results["trainable_params"] == 6 * 2 * (4 * 32 + 32 * 4)
    base = load_model(str(tiny_model_dir)).model
    assert results["total_params"] == sum(p.numel() for p in base.parameters())  # tied weights counted once
    assert results["trainable_percent"] == pytest.approx(
        100 * results["trainable_params"] / results["total_params"]
    )
    assert results["train_seconds"] > 0
    assert results["config_hash"] == config_hash(config)
    assert results["data_digest"] == manifests_digest(config.data.manifests())  # what a sweep checks for staleness
    provenance = results["provenance"]  # where the numbers came from (asrtune.provenance)
    assert provenance["libraries"]["torch"] == torch.__version__ and provenance["model"]["kind"] == "folder"
    assert results["git_sha"] == provenance["asrtune"]["git_sha"]
    assert config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())) == config
    assert config_from_dict(results["config"]) == config


def test_metrics_log_every_step_and_every_evaluation(lora_run):
    _, run_dir, results, _ = lora_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_wer" in r]
    assert [r["step"] for r in losses] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["lr"] >= 0 for r in losses)
    assert [r["step"] for r in evals] == [0, 2, 3]  # step 0, every eval_every, and the last step
    best = float("inf")
    for record in evals:  # kept exactly when the WER beats the best so far
        assert record["kept"] == (record["eval_wer"] < best)
        best = min(best, record["eval_wer"])
        assert record["best_wer"] == best
    assert results["best_subset_wer"] == best
    assert results["baseline_subset"]["wer"] == evals[0]["eval_wer"]
    kept = [r["step"] for r in evals if r["kept"]]
    assert results["best_step"] == kept[-1]
    assert json.loads((run_dir / "checkpoints/best/meta.json").read_text())["step"] == kept[-1]


def test_predictions_match_the_reported_final_scores(lora_run, tiny_data):
    _, run_dir, results, _ = lora_run
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == ["u0", "u1", "u2"]
    assert [r["reference"] for r in rows] == ["hello world", "good morning", "the cat sat"]
    rescored = score([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    assert {key: results["final"][key] for key in rescored.as_dict()} == rescored.as_dict()
    assert results["final"]["max_new_tokens"] == 4  # the cut-off count is recorded beside the scores
    assert results["final"]["hit_max_new_tokens"] == len(results["final"]["hit_max_new_tokens_ids"])
    assert results["final_wer"] == rescored.wer and results["final_raw_wer"] == rescored.raw_wer


def test_tensorboard_has_loss_and_wer(lora_run):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _, run_dir, _, _ = lora_run
    events = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/wer", "eval/cer"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]  # log_every=1
    assert [e.step for e in events.Scalars("eval/wer")] == [0, 2, 3]


def test_lora_training_leaves_the_base_weights_untouched(lora_run, tiny_model_dir):
    _, run_dir, _, trained = lora_run
    base = load_model(str(tiny_model_dir)).model.state_dict()
    checked = 0
    for name, p in trained.named_parameters():
        if ".lora_" in name:
            continue
        original = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(p.detach(), base[original]), name
        checked += 1
    assert checked == len(list(load_model(str(tiny_model_dir)).model.parameters()))
    # The adapters did train: B starts at zero and is not zero at the last step.
    last = load_file(str(run_dir / "checkpoints/last/trainable.safetensors"))
    assert all(".lora_" in n for n in last)
    assert any(".lora_B." in n and t.abs().max() > 0 for n, t in last.items())


def test_best_checkpoint_reloads_through_load_model(lora_run):
    _, run_dir, results, trained = lora_run
    loaded = load_model(str(run_dir))  # a run folder is a model source
    assert loaded.strategy == LORA
    # train() ends with the best checkpoint loaded; the reloaded run computes the same logits.
    assert torch.equal(logits(loaded.model), logits(trained))


def test_refuses_to_overwrite_a_run(lora_run):
    config, run_dir, _, _ = lora_run
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(AsrtuneError, match="already holds a run"):
        train(config, run_dir, progress=False)
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_resume_continues_to_a_larger_max_steps(lora_run, tmp_path):
    config, original, _, _ = lora_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(original, run_dir)
    results = train(with_steps(config, 5), run_dir, resume=True, progress=False)
    assert results["steps"] == 5
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5]  # continues, no step twice
    assert [r["step"] for r in records if "eval_wer" in r] == [0, 2, 3, 4, 5]
    assert json.loads((run_dir / "checkpoints/last/state.json").read_text())["step"] == 5
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["loop"]["max_steps"] == 5


def test_resume_without_a_checkpoint_is_a_user_error(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(AsrtuneError, match="no checkpoint to resume"):
        train(make_config(tiny_model_dir, tiny_data), tmp_path / "never-ran", resume=True, progress=False)


def test_training_needs_both_manifests(tiny_model_dir, tiny_data, tmp_path):
    config = dataclasses.replace(
        make_config(tiny_model_dir, tiny_data), data=DataConfig(train=str(tiny_data[0]))
    )
    with pytest.raises(AsrtuneError, match="data.train and data.eval must name manifests"):
        train(config, tmp_path / "run", progress=False)


# --- scripted evaluations: which checkpoint is kept, early stopping, exact resume ----------------------


class ScriptedEvaluation:
    """The recipe's score part: returns the next WER of a script and records the weights it saw."""

    def __init__(self, wers):
        self.wers = iter(wers)
        self.seen: list[dict[str, torch.Tensor]] = []
        self.sizes: list[int] = []

    def __call__(self, loaded, dataset, config):
        self.sizes.append(len(dataset))
        self.seen.append(
            {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
        )
        wer = next(self.wers)
        n = len(dataset)
        scores = Scores(
            wer=wer,
            cer=wer,
            raw_wer=wer,
            substitutions=0,
            deletions=0,
            insertions=0,
            reference_words=n,
            n=n,
            skipped_empty=0,
        )
        return Evaluation(
            scores=scores,
            hypotheses=["x"] * n,
            references=[u.text for u in dataset.utterances],
            ids=[u.id for u in dataset.utterances],
        )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keeps_the_lowest_wer_checkpoint_and_stops_on_patience(tiny_model_dir, tiny_data, tmp_path):
    # Evaluations at steps 0, 2, 4, 6; WER best at step 2, then two evaluations without improvement.
    script = ScriptedEvaluation([0.9, 0.5, 0.7, 0.8, 0.55])
    capture = Capture()
    config = dataclasses.replace(
        make_config(tiny_model_dir, tiny_data, max_steps=20, eval_every=2, patience=2),
        strategy="full",
        optim=OptimConfig(learning_rate=1e-3),
    )
    results = train(config, tmp_path / "run", progress=False,
                    parts=RecipeParts(score=script, apply_strategy=capture))

    assert results["stopped_early"] is True and results["steps"] == 6
    assert (results["best_step"], results["best_subset_wer"]) == (2, 0.5)
    assert results["baseline_subset"]["wer"] == 0.9
    assert results["final_wer"] == 0.55  # the final evaluation on the whole eval set
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_wer" in r]
    assert [(r["step"], r["kept"]) for r in evals] == [(0, True), (2, True), (4, False), (6, False)]

    at_step = dict(zip([0, 2, 4, 6, "final"], script.seen))
    assert not _same(at_step[0], at_step[2]) and not _same(at_step[2], at_step[6])  # weights did move
    best = load_file(str(tmp_path / "run" / "checkpoints/best/trainable.safetensors"))
    assert _same(best, at_step[2])
    # `full` trains every parameter but the encoder's fixed sinusoidal positions.
    assert "model.encoder.embed_positions.weight" not in best
    assert len(best) == len(list(capture.model.parameters())) - 1
    base = load_model(str(tiny_model_dir)).model
    assert torch.equal(
        capture.model.model.encoder.embed_positions.weight, base.model.encoder.embed_positions.weight
    )
    assert _same(load_file(str(tmp_path / "run" / "checkpoints/last/trainable.safetensors")), at_step[6])
    assert _same(at_step["final"], at_step[2])  # the final score is the best checkpoint's
    assert json.loads((tmp_path / "run" / "checkpoints/best/meta.json").read_text())["step"] == 2

    reloaded = load_model(str(tmp_path / "run"))
    assert torch.equal(logits(reloaded.model), logits(capture.model))
    assert not torch.equal(logits(reloaded.model), logits(load_model(str(tiny_model_dir)).model))


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, tiny_data, tmp_path):
    scripted = RecipeParts(score=ScriptedEvaluation(itertools.repeat(0.5)))
    # LoRA dropout (0.05) draws random numbers, and 2 micro-batches a step exercise accumulation.
    config = dataclasses.replace(
        make_config(
            tiny_model_dir, tiny_data, max_steps=4, eval_every=2, grad_accum_steps=2, warmup_ratio=0.25
        ),
        optim=OptimConfig(learning_rate=1e-2),
        seed=3,
    )
    train(config, tmp_path / "straight", progress=False, parts=scripted)

    crashing = dataclasses.replace(scripted, batch_sampler=crashing_sampler(4))  # step 3's first micro-batch
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "interrupted", progress=False, parts=crashing)
    assert json.loads((tmp_path / "interrupted/checkpoints/last/state.json").read_text())["step"] == 2
    train(config, tmp_path / "interrupted", resume=True, progress=False, parts=scripted)

    straight = load_file(str(tmp_path / "straight/checkpoints/last/trainable.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted/checkpoints/last/trainable.safetensors"))
    assert straight.keys() == resumed.keys() and any(
        t.abs().max() > 0 for n, t in straight.items() if "lora_B" in n
    )
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-7)
    def losses(run):
        return [r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]

    assert losses("interrupted") == pytest.approx(losses("straight"), rel=1e-6)


def test_eval_limit_applies_during_training_but_not_to_the_final_score(tiny_model_dir, tiny_data, tmp_path):
    script = ScriptedEvaluation(itertools.repeat(0.5))
    config = make_config(tiny_model_dir, tiny_data, max_steps=2, eval_every=1)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, eval_limit=2))
    results = train(config, tmp_path / "run", progress=False, parts=RecipeParts(score=script))
    assert script.sizes == [2, 2, 2, 3]  # steps 0, 1, 2 on two eval rows; the final on all three
    assert len(read_jsonl(tmp_path / "run" / "predictions.jsonl")) == 3
    assert results["final"]["n"] == 3
    chosen = results["eval_subset"]
    assert (chosen["size"], chosen["of"], chosen["seed"]) == (2, 3, config.seed) and len(chosen["ids"]) == 2


def test_eval_limit_is_a_seeded_random_subset_not_the_first_rows(tiny_model_dir, tmp_path):
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from conftest import make_processor, write_tiny_manifest

    manifest = write_tiny_manifest(tmp_path, [f"row {i}" for i in range(20)], "eval.jsonl")
    dataset = FeatureDataset(read_manifest(manifest), make_processor(), multilingual=False)
    ids = {seed: [u.id for u in dataset.sample(5, seed).utterances] for seed in range(4)}
    assert all(len(set(chosen)) == 5 for chosen in ids.values())
    assert ids[0] == [u.id for u in dataset.sample(5, 0).utterances]  # the same seed, the same rows
    assert len({tuple(chosen) for chosen in ids.values()}) > 1  # another seed, other rows
    assert any(chosen != [f"u{i}" for i in range(5)] for chosen in ids.values())  # not the head


def test_a_failed_resume_leaves_the_run_intact(lora_run, tmp_path):
    config, original, _, trained = lora_run
    run_dir = tmp_path / "run"
    shutil.copytree(original, run_dir)
    with pytest.raises(AsrtuneError, match="has another strategy"):
        train(
            dataclasses.replace(with_steps(config, 5), strategy="full"), run_dir, resume=True, progress=False
        )
    assert (run_dir / "config.yaml").read_text() == (original / "config.yaml").read_text()
    assert torch.equal(logits(load_model(str(run_dir)).model), logits(trained))


def test_run_trained_from_a_relative_model_path_loads_from_anywhere(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tiny_model_dir.parent)
    config = dataclasses.replace(
        make_config(tiny_model_dir, tiny_data, max_steps=1), model=tiny_model_dir.name
    )  # relative to the working directory
    train(config, tmp_path / "run", progress=False,
          parts=RecipeParts(score=ScriptedEvaluation(itertools.repeat(0.5))))
    monkeypatch.chdir(tmp_path)
    assert load_model(str(tmp_path / "run")).strategy == LORA
