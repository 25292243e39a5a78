"""``init_from: RUN``: a run starts from another run's kept weights, with its own strategy on top."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig, config_hash, load_config, save_config
from asrtune.errors import AsrtuneError
from asrtune.runs.load import load_model
from asrtune.strategies import apply_strategy
from asrtune.runs.load import load_run_model, load_start_model
from asrtune.runs.weights import save_trainable
from asrtune.training.recipe import train

from conftest import save_tiny

SOT, NO_TIMESTAMPS = 50257, 50362


def _logits(model: torch.nn.Module) -> torch.Tensor:
    features = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[SOT, NO_TIMESTAMPS, 464]])).logits


def _fake_run(base_dir, run_dir, spec: str, **config) -> torch.nn.Module:
    """A run folder whose best checkpoint holds random (non-zero) trained parameters."""
    model = apply_strategy(load_start_model(RunConfig(model=str(base_dir), **config)).model, spec)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    run_dir.mkdir(parents=True)
    save_config(RunConfig(model=str(base_dir), strategy=spec, **config), run_dir / "config.yaml")
    (run_dir / "checkpoints" / "best").mkdir(parents=True)
    save_trainable(model, run_dir / "checkpoints" / "best", {"step": 5, "wer": 0.25})
    return model.eval()


def test_init_from_is_a_config_key_resolved_against_the_yaml_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("init_from: ../runs/first\nstrategy: lora\n")
    config = load_config(tmp_path / "configs" / "run.yaml")
    assert config.init_from == str((tmp_path / "runs" / "first").resolve())
    assert RunConfig().init_from == ""
    assert config_hash(config) != config_hash(dataclasses.replace(config, init_from=""))
    with pytest.raises(AsrtuneError, match="unknown config key"):
        load_config(None, ["init_form=x"])


@pytest.mark.parametrize("first, second", [("lora:r=2,alpha=4", "adapter:d=4"), ("full", "adapter:d=4"),
                                           ("adapter:d=4", "lora:r=2"), ("prompt:n=3", "adapter:d=4")])
def test_the_next_strategy_starts_from_the_other_runs_weights(tiny_model_dir, tmp_path, first, second):
    source = _fake_run(tiny_model_dir, tmp_path / "first", first)
    expected = _logits(source)
    start = load_start_model(RunConfig(model=str(tiny_model_dir), init_from=str(tmp_path / "first")))
    assert start.strategy == "" and type(start.model).__name__ == "WhisperForConditionalGeneration"
    assert not any(hasattr(p, "asrtune_added") for p in start.model.parameters())
    torch.testing.assert_close(_logits(start.model), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, _logits(load_model(str(tiny_model_dir)).model), atol=1e-3)
    # The second strategy (identity at step 0) goes on top; only its own parameters train.
    model = apply_strategy(start.model, second)
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=1e-5)
    marker = ".adapter." if second.startswith("adapter") else ".lora_"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(marker in n for n in trainable)
    if first.startswith("adapter"):  # the first run's adapters stay, frozen, and are not this run's
        assert any(".adapter." in n for n, p in model.named_parameters() if not p.requires_grad)


def test_a_run_started_from_another_reloads_on_top_of_it(tiny_model_dir, tmp_path):
    source = _fake_run(tiny_model_dir, tmp_path / "first", "lora:r=2,alpha=4")
    second = _fake_run(tiny_model_dir, tmp_path / "second", "adapter:d=4", init_from=str(tmp_path / "first"))
    reloaded = load_run_model(tmp_path / "second").model
    torch.testing.assert_close(_logits(reloaded), _logits(second), rtol=0, atol=1e-5)
    assert not torch.allclose(_logits(reloaded), _logits(source), atol=1e-4)  # the second run's adapters count
    third = load_start_model(RunConfig(model=str(tiny_model_dir), init_from=str(tmp_path / "second")))
    torch.testing.assert_close(_logits(third.model), _logits(second), rtol=0, atol=1e-5)  # chains


def test_missing_runs_checkpoints_and_other_models_are_clear_errors(tiny_model_dir, tmp_path):
    def start(run):
        return load_start_model(RunConfig(model=str(tiny_model_dir), init_from=str(run)))

    with pytest.raises(AsrtuneError, match=r"init_from: .*nope is not a run folder"):
        start(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrtuneError, match=r"init_from: .*empty holds no run \(no config.yaml\)"):
        start(tmp_path / "empty")
    (tmp_path / "fresh").mkdir()
    save_config(RunConfig(model=str(tiny_model_dir), strategy="lora"), tmp_path / "fresh" / "config.yaml")
    with pytest.raises(AsrtuneError, match="run has no checkpoint yet"):
        start(tmp_path / "fresh")
    wider = save_tiny(tmp_path / "wider", d_model=48, encoder_attention_heads=2, decoder_attention_heads=2)
    _fake_run(wider, tmp_path / "other", "lora:r=2,alpha=4")
    with pytest.raises(AsrtuneError, match=r"shape does not match this run's model .*d_model 48 vs 32"):
        start(tmp_path / "other")


def test_training_from_another_run_records_it_and_starts_from_its_weights(tiny_model_dir, tiny_data, tmp_path):
    train_manifest, eval_manifest = tiny_data
    loop = LoopConfig(max_steps=2, batch_size=2, eval_every=2, eval_batch_size=4, max_new_tokens=4, log_every=1,
                      warmup_ratio=0.0, num_workers=0, mixed_precision="no")
    first = RunConfig(model=str(tiny_model_dir), strategy="lora:r=2,alpha=4", seed=1,
                      data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
                      optim=OptimConfig(learning_rate=1e-2), loop=loop)
    train(first, tmp_path / "first", progress=False)
    second = dataclasses.replace(first, strategy="adapter:d=4", init_from=str(tmp_path / "first"))
    results = train(second, tmp_path / "second", progress=False)
    record = results["provenance"]["init_from"]
    assert record["run"] == str((tmp_path / "first").resolve()) and record["strategy"] == "lora:r=2,alpha=4"
    assert record["checkpoint"] == "best" and record["config_hash"] == config_hash(first)
    assert results["config"]["init_from"] == str(tmp_path / "first")
    assert json.loads((tmp_path / "second" / "results.json").read_text())["provenance"]["init_from"] == record
    start = load_start_model(second).model
    assert results["trainable_params"] == sum(p.numel() for n, p in apply_strategy(start, "adapter:d=4")
                                              .named_parameters() if p.requires_grad)
    load_run_model(tmp_path / "second")  # the kept checkpoint loads on top of the first run's weights
