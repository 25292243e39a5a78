"""Atomic folders, trainable-parameter checkpoints and run-folder reloading."""

from __future__ import annotations

import json

import pytest
import torch

from asrtune.config import RunConfig, save_config
from asrtune.errors import AsrtuneError
from asrtune.paths import write_dir_atomically
from asrtune.runs.load import load_model, load_run_model
from asrtune.runs.weights import load_trainable, save_trainable, trainable_state
from asrtune.strategies import apply_strategy


def test_write_dir_atomically_creates_and_replaces(tmp_path):
    target = tmp_path / "ckpt" / "best"
    write_dir_atomically(target, lambda folder: (folder / "a.txt").write_text("one"))
    assert (target / "a.txt").read_text() == "one"
    write_dir_atomically(target, lambda folder: (folder / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in target.parent.iterdir()) == ["best"]  # no staging or retired folders left


def test_write_dir_atomically_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "best"
    write_dir_atomically(target, lambda folder: (folder / "a.txt").write_text("old"))

    def crash(folder):
        (folder / "half.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(target, crash)
    assert (target / "a.txt").read_text() == "old" and not (target / "half.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _lora(tiny_model_dir, spec="lora:r=2,alpha=4", seed=0):
    model = apply_strategy(load_model(str(tiny_model_dir)).model, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def test_trainable_state_holds_only_what_trains(tiny_model_dir):
    model = _lora(tiny_model_dir)
    state = trainable_state(model)
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in state)


def test_save_and_load_trainable_round_trip(tiny_model_dir, tmp_path):
    trained = _lora(tiny_model_dir, seed=1)
    save_trainable(trained, tmp_path, {"step": 7, "wer": 0.25})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"step": 7, "wer": 0.25}
    fresh = _lora(tiny_model_dir, seed=2)
    meta = load_trainable(fresh, tmp_path)
    assert meta == {"step": 7, "wer": 0.25}
    expected = dict(trained.named_parameters())
    assert all(torch.equal(p, expected[n]) for n, p in fresh.named_parameters())


def test_load_trainable_refuses_another_strategy(tiny_model_dir, tmp_path):
    (tmp_path / "lora").mkdir()
    save_trainable(_lora(tiny_model_dir), tmp_path / "lora", {})
    full = apply_strategy(load_model(str(tiny_model_dir)).model, "full")
    with pytest.raises(AsrtuneError, match="does not match the strategy"):
        load_trainable(full, tmp_path / "lora")
    other_rank = _lora(tiny_model_dir, "lora:r=2,alpha=4,targets=k_proj")
    with pytest.raises(AsrtuneError, match="does not match the strategy"):
        load_trainable(other_rank, tmp_path / "lora")


def _fake_run(tiny_model_dir, run_dir, which=("best",), spec="lora:r=2,alpha=4"):
    save_config(RunConfig(model=str(tiny_model_dir), strategy=spec), run_dir / "config.yaml")
    trained = _lora(tiny_model_dir, spec, seed=3)
    for name in which:
        write_dir_atomically(
            run_dir / "checkpoints" / name, lambda f: save_trainable(trained, f, {"step": 1})
        )
    return trained


def _logits(model):
    features = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[50257, 50362, 464]])).logits


def test_run_folder_loads_as_a_model(tiny_model_dir, tmp_path):
    trained = _fake_run(tiny_model_dir, tmp_path, which=("best",))
    loaded = load_model(str(tmp_path))
    assert loaded.strategy == "lora:r=2,alpha=4"
    assert loaded.source == str(tmp_path) and loaded.base_dir == tiny_model_dir
    assert loaded.model.training is False
    assert torch.equal(_logits(loaded.model), _logits(trained))
    assert not torch.equal(_logits(loaded.model), _logits(load_model(str(tiny_model_dir)).model))


def test_run_folder_falls_back_to_last(tiny_model_dir, tmp_path):
    trained = _fake_run(tiny_model_dir, tmp_path, which=("last",))
    assert torch.equal(_logits(load_run_model(tmp_path).model), _logits(trained))


def test_run_folder_without_checkpoint(tiny_model_dir, tmp_path):
    save_config(RunConfig(model=str(tiny_model_dir)), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(AsrtuneError, match="no checkpoint yet"):
        load_model(str(tmp_path))
