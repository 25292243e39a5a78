"""Weight interpolation (WiSE-FT): mixes of the step-0 and end-of-training weights compete for selection."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_jsonl, write_tiny_manifest
from safetensors.torch import load_file
from test_forgetting_budget import GENERAL_TEXT, Script, fruit_base, fruit_config

from asrtune.config import LoopConfig
from asrtune.errors import AsrtuneError
from asrtune.training.interpolation import load_start, mix_trainable
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train


def test_mix_sets_each_trainable_parameter_between_start_and_end():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model[1].requires_grad_(False)
    frozen = model[1].weight.detach().clone()
    start = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2)}
    end = {"0.weight": torch.full((2, 3), 4.0), "0.bias": torch.full((2,), -2.0)}
    mix_trainable(model, start, end, 0.25)
    assert torch.equal(model[0].weight, torch.full((2, 3), 1.0))
    assert torch.equal(model[0].bias, torch.full((2,), -0.5))
    assert torch.equal(model[1].weight, frozen)  # only what trains is mixed
    with pytest.raises(AsrtuneError, match="do not match"):
        mix_trainable(model, {"0.weight": start["0.weight"]}, end, 0.5)


def test_missing_start_weights_say_why(tmp_path):
    with pytest.raises(AsrtuneError, match="started without loop.interpolation"):
        load_start(tmp_path)


@pytest.mark.parametrize("weight", [0.0, 1.0, 1.5, -0.2])
def test_interpolation_weights_lie_strictly_between_start_and_end(weight):
    with pytest.raises(AsrtuneError, match="loop.interpolation"):
        LoopConfig(interpolation=(weight,))


def test_an_interpolated_model_is_kept_when_every_checkpoint_forgets(tiny_model_dir, tiny_data, tmp_path):
    general = write_tiny_manifest(tmp_path / "general", [GENERAL_TEXT, GENERAL_TEXT], "general.jsonl")
    # Steps 0, 1, 2, then the mix 0.5: steps 1 and 2 beat step 0 on target WER but add 2 wrong general
    # words in 5; the mix keeps part of the gain (0.4) and forgets nothing.
    script = Script([0.9, 0.5, 0.3, 0.4, 0.4], [1, 3, 3, 1])
    config = fruit_config(tiny_model_dir, tiny_data, general, learning_rate=1e-3, max_steps=2, forgetting_budget=0.1,
                          interpolation=(0.5,))
    base = fruit_base(config)
    results = train(config, tmp_path / "run", progress=False, baseline_transcripts=base,
                    parts=RecipeParts(score=script))

    checkpoints = tmp_path / "run" / "checkpoints"
    assert results["best_step"] == 2 and results["best_interpolation"] == 0.5
    assert results["best_subset_wer"] == 0.4 and results["best_within_budget"] is True
    meta = json.loads((checkpoints / "best" / "meta.json").read_text())
    assert meta["step"] == 2 and meta["interpolation"] == 0.5
    start, last, best = (load_file(str(checkpoints / name / "trainable.safetensors"))
                         for name in ("start", "last", "best"))
    assert set(best) == set(start) == set(last)
    moved = [name for name in start if not torch.equal(start[name], last[name])]
    assert moved, "training changed nothing: the test cannot tell a mix from either end"
    for name in start:
        torch.testing.assert_close(best[name], start[name] + 0.5 * (last[name] - start[name]))
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_wer" in r]
    assert [r.get("interpolation") for r in evals] == [None, None, None, 0.5]
    assert [r["kept"] for r in evals] == [True, False, False, True]


def test_a_resume_drops_the_interpolation_records_it_will_score_again(tmp_path):
    from asrtune.runs.layout import RunDir

    run = RunDir(tmp_path)
    records = [{"step": 0, "eval_wer": 0.9}, {"step": 2, "eval_wer": 0.5},
               {"step": 2, "eval_wer": 0.6, "interpolation": 0.5}, {"step": 3, "loss": 1.0}]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run.truncate_metrics(2) == 2
    assert read_jsonl(run.metrics) == records[:2]
