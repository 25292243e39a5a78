"""Metric-driven learning rate: the search, the documented default, WER-driven reductions, the
overfitting watch, encoder/decoder groups."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from test_training import ScriptedEvaluation, make_config

from asrtune.cli import main
from asrtune.errors import AsrtuneError
from asrtune.strategies import apply_strategy
from asrtune.training.lr_control import OverfitWatch, WerPlateau, parameter_groups, warmup_schedule
from asrtune.training.lr_search import SearchSettings, lr_grid, run_lr_search, suggested_learning_rate
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train

from conftest import read_jsonl, tiny_whisper


def test_grid_is_log_spaced_over_a_decade_either_side_of_the_default():
    grid = lr_grid(SearchSettings(trials=3), "lora")  # LoRA default 1e-3
    assert grid == [1e-4, 1e-3, 1e-2]
    custom = lr_grid(SearchSettings(trials=4, min_lr=1e-5, max_lr=1e-2), "full")
    ratios = [b / a for a, b in zip(custom, custom[1:])]
    assert all(r == pytest.approx(10.0, rel=0.01) for r in ratios)


@pytest.mark.parametrize("settings, message", [
    (dict(trials=1), "at least 2 trials"),
    (dict(rung_steps=10, max_steps=5), "rung_steps <= max_steps"),
    (dict(min_lr=1e-3, max_lr=1e-4), "min_lr < max_lr"),
    (dict(target="decoder_lr"), "target must be"),
])
def test_bad_search_settings_are_refused(settings, message):
    with pytest.raises(AsrtuneError, match=message):
        SearchSettings(**settings)


def test_suggested_learning_rate_follows_the_documented_rule():
    assert suggested_learning_rate(384, "full") == pytest.approx(1.5e-3 / 40)  # tiny
    assert suggested_learning_rate(512, "freeze:n=2") == pytest.approx(1e-3 / 40)  # base
    assert suggested_learning_rate(1280, "full") == pytest.approx(1.75e-4 / 40)  # large
    assert suggested_learning_rate(1280, "lora") == 1e-3  # added modules keep their own default
    assert suggested_learning_rate(384, "freeze:n=1+adapter") == 3e-4


def test_plateau_reduces_the_lr_with_a_reason_and_a_floor():
    plateau = WerPlateau(factor=0.5, patience=1, floor=0.3)
    assert plateau.observe(10, 0.50) is None
    change = plateau.observe(20, 0.55)
    assert change["scale_to"] == 0.5 and "worse than the best 0.5000" in change["reason"]
    assert plateau.observe(30, 0.40) is None  # improved: no change
    assert plateau.observe(40, 0.40)["scale_to"] == 0.3  # stalled; floored at 0.3, not 0.25
    assert "no better than" in plateau.changes[-1]["reason"]
    assert plateau.observe(50, 0.45) is None  # at the floor
    assert len(plateau.changes) == 2


def test_plateau_without_a_factor_never_changes_anything():
    plateau = WerPlateau(factor=None)
    assert [plateau.observe(s, w) for s, w in [(1, 0.5), (2, 0.9), (3, 0.9)]] == [None, None, None]
    assert plateau.scale == 1.0


def test_overfit_watch_warns_once_when_loss_falls_and_wer_rises():
    watch = OverfitWatch(evals=2)
    assert watch.observe(1.0, 0.30) is None
    assert watch.observe(0.8, 0.32) is None
    warning = watch.observe(0.6, 0.35)
    assert warning and "training loss fell 1.000 -> 0.600" in warning and "0.3000 -> 0.3500" in warning
    assert watch.observe(0.4, 0.40) is None  # once


def test_overfit_watch_is_quiet_when_both_improve():
    watch = OverfitWatch(evals=2)
    assert [watch.observe(l, w) for l, w in [(1.0, 0.5), (0.8, 0.4), (0.6, 0.3)]] == [None, None, None]


def test_schedule_warms_up_then_decays_or_stays_constant():
    parameter = torch.nn.Parameter(torch.zeros(1))
    plateau = WerPlateau(factor=None)
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    linear = warmup_schedule(optimizer, warmup=2, total=6, plateau=plateau)
    factors = [linear.lr_lambdas[0](s) for s in range(7)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    constant = warmup_schedule(torch.optim.SGD([parameter], lr=1.0), warmup=2, total=6, plateau=plateau, decay=False)
    assert [constant.lr_lambdas[0](s) for s in (1, 3, 6, 9)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    plateau.scale = 0.5
    assert linear.lr_lambdas[0](3) == pytest.approx(0.375)


def test_parameter_groups_split_encoder_and_decoder():
    model = apply_strategy(tiny_whisper(), "full")
    groups = {g["name"]: g for g in parameter_groups(model, 1e-4, 1e-5)}
    assert groups["encoder"]["lr"] == 1e-5 and groups["decoder"]["lr"] == 1e-4
    encoder_ids = {id(p) for p in model.model.encoder.parameters()}
    assert all(id(p) in encoder_ids for p in groups["encoder"]["params"])
    assert not any(id(p) in encoder_ids for p in groups["decoder"]["params"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == trainable


def test_parameter_groups_put_lora_with_its_side():
    model = apply_strategy(tiny_whisper(), "lora:r=2")
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, None)}
    assert groups["encoder"]["lr"] == groups["decoder"]["lr"] == 1e-3
    assert len(groups["encoder"]["params"]) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


def test_plateau_in_the_recipe_lowers_the_lr_and_logs_why(tiny_model_dir, tiny_data, tmp_path):
    scripted = RecipeParts(score=ScriptedEvaluation(itertools.chain([0.9, 0.5, 0.6], itertools.repeat(0.6))))
    config = make_config(tiny_model_dir, tiny_data, max_steps=5, eval_every=2, plateau_factor=0.5, schedule="constant")
    results = train(config, tmp_path / "run", progress=False, parts=scripted)
    # evaluations at steps 0, 2, 4, 5 score 0.9, 0.5, 0.6, 0.6: worse than the best at 4 and at 5
    assert [c["step"] for c in results["lr_changes"]] == [4, 5]
    assert "worse than the best 0.5000" in results["lr_changes"][0]["reason"]
    assert results["lr_changes"][1]["scale_to"] == 0.25
    lrs = {r["step"]: r["lr"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == pytest.approx(5e-4)  # LoRA default 1e-3, halved after 4


def test_search_picks_the_lowest_wer_trial_prunes_and_resumes(tiny_model_dir, tiny_data, tmp_path):
    # WER by learning rate: the middle one is best; pruning keeps the better half after rung 1.
    by_lr = {1e-4: 0.8, 1e-3: 0.3, 1e-2: 0.5}

    def scripted(loaded, dataset, config):
        base = by_lr[config.optim.learning_rate]
        wer = base - 0.05 * (config.loop.max_steps > 1)  # longer trials do a bit better
        return ScriptedEvaluation([wer])(loaded, dataset, config)

    config = make_config(tiny_model_dir, tiny_data)
    settings = SearchSettings(trials=3, rung_steps=1, max_steps=2)
    result = run_lr_search(config, tmp_path / "search", settings, progress=False, parts=RecipeParts(score=scripted))
    trials = {t["lr"]: t for t in result["trials"]}
    assert result["best_lr"] == 1e-3 == min(trials, key=lambda lr: trials[lr]["wer"])
    assert trials[1e-4]["pruned"] and trials[1e-4]["steps"] == 1
    assert not trials[1e-3]["pruned"] and trials[1e-3]["steps"] == 2 and trials[1e-3]["wer"] == pytest.approx(0.25)
    saved = json.loads((tmp_path / "search" / "lr_search.json").read_text())
    assert saved["best_lr"] == 1e-3 and saved["complete"]
    assert (tmp_path / "search" / "lr_search.png").stat().st_size > 0
    # Resume: nothing retrains.
    lines = (tmp_path / "search" / "trials" / "lr-0.001" / "metrics.jsonl").read_text()
    again = run_lr_search(config, tmp_path / "search", settings, progress=False, parts=RecipeParts(score=scripted))
    assert again["best_lr"] == 1e-3
    assert (tmp_path / "search" / "trials" / "lr-0.001" / "metrics.jsonl").read_text() == lines


def test_lr_search_cli_then_train_records_where_the_lr_came_from(tiny_model_dir, tiny_data, tmp_path, capsys):
    config = make_config(tiny_model_dir, tiny_data, max_steps=2, eval_every=1)
    config_path = tmp_path / "run.yaml"
    from asrtune.config import save_config

    save_config(config, config_path)
    code = main(["lr-search", str(config_path), "--output-dir", str(tmp_path / "s"), "--trials", "2",
                 "--rung-steps", "1", "--max-steps", "1", "--extend", "0", "--then-train"])
    assert code == 0
    search = json.loads((tmp_path / "s" / "lr_search.json").read_text())
    # Two trials: the best is always at an end of the range, and with no extension that is said loudly.
    assert search["edge"] in ("low", "high") and search["warning"]
    assert f"WARNING: {search['warning']}" in capsys.readouterr().out
    final = json.loads((tmp_path / "s" / "final" / "results.json").read_text())
    assert final["learning_rate"] == search["best_lr"]
    assert final["learning_rate_source"].startswith("lr-search ")
    assert math.isfinite(final["final_wer"])
