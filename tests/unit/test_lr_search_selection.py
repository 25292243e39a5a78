"""lr-search's choice: trials compared at equal steps only, and a best at an end of the range searched
past (or warned about). Training is scripted: WER is a function of (lr, steps)."""

from __future__ import annotations

import json
import math

import pytest

import asrtune.training.lr_search as lr_search
from asrtune.config import config_from_dict
from asrtune.training.lr_search import SearchSettings, extension_grid, run_lr_search


def _script(monkeypatch, wer):
    """Trials "train" instantly: their WER at ``steps`` is ``wer(lr, steps)``; returns the calls made."""
    calls = []

    def train_to(config, run_dir, steps, progress=False, **kwargs):
        lr = config.optim.learning_rate
        calls.append((lr, steps))
        return {"step": steps, "eval_wer": wer(lr, steps), "loss": 1.0 / steps}

    monkeypatch.setattr(lr_search, "_train_to", train_to)
    return calls


def _config():
    return config_from_dict({"model": "m", "strategy": "full"})


def test_best_is_chosen_at_equal_steps_not_from_a_pruned_trial(tmp_path, monkeypatch):
    # Rung 1 (10 steps): 3e-5 leads and 1e-4 is third, so 1e-4 is pruned with WER 0.45 after 10 steps.
    # Rung 2 (20 steps): the survivors score 0.50 and 0.47. The old code took the lowest WER over all
    # trials, whatever their steps: 1e-4's 0.45 from 10 steps. At equal steps the choice is 1e-5.
    table = {(1e-6, 10): 0.6, (1e-5, 10): 0.40, (3e-5, 10): 0.30, (1e-4, 10): 0.45,
             (3e-5, 20): 0.50, (1e-5, 20): 0.47}
    calls = _script(monkeypatch, lambda lr, steps: table[(lr, steps)])
    settings = SearchSettings(min_lr=1e-6, max_lr=1e-4, trials=4, rung_steps=10, max_steps=20)
    grid = lr_search.lr_grid(settings, "full")
    assert grid == [1e-6, 4.64e-6, 2.15e-5, 1e-4]  # log-spaced; the table above uses its own lrs
    monkeypatch.setattr(lr_search, "lr_grid", lambda settings, spec, family: [1e-6, 1e-5, 3e-5, 1e-4])
    result = run_lr_search(_config(), tmp_path, settings, progress=False)
    assert result["best_lr"] == 1e-5 and result["best_steps"] == 20
    assert result["selection"] == "lowest validation WER at step 20 among the 2 trials scored there"
    trials = {t["lr"]: t for t in result["trials"]}
    assert trials[1e-4]["pruned"] and trials[1e-4]["steps"] == 10 and trials[1e-4]["wer"] == 0.45
    assert (trials[1e-4]["rank_at_last_rung"], trials[1e-4]["compared_with"]) == (3, 4)
    assert (trials[1e-5]["rank_at_last_rung"], trials[1e-5]["compared_with"]) == (1, 2)
    assert trials[3e-5]["rungs"] == {"10": 0.30, "20": 0.50}
    assert result["edge"] is None and result["warning"] is None and result["extensions"] == []
    assert sorted(calls) == sorted([(lr, 10) for lr in (1e-6, 1e-5, 3e-5, 1e-4)] + [(3e-5, 20), (1e-5, 20)])
    saved = json.loads((tmp_path / "lr_search.json").read_text())
    assert saved["best_lr"] == 1e-5 and saved["best_steps"] == 20 and saved["complete"]


def _valley(best_lr):
    """WER lowest at ``best_lr``, rising by 0.1 per decade either side, a little lower with more steps."""
    return lambda lr, steps: 0.3 + 0.1 * abs(math.log10(lr / best_lr)) - 0.001 * steps


def test_a_best_at_the_top_of_the_range_is_searched_a_decade_higher(tmp_path, monkeypatch):
    # As on the demo with configs/lr-search-smoke.yaml: 1e-6..1e-4, best 1e-4, the top of the range.
    calls = _script(monkeypatch, _valley(3e-4))
    settings = SearchSettings(min_lr=1e-6, max_lr=1e-4, trials=4, rung_steps=10, max_steps=40)
    result = run_lr_search(_config(), tmp_path, settings, progress=False)
    assert result["extensions"] == [{"direction": "high", "from": 1e-4, "lrs": [3.16e-4, 1e-3]}]
    assert result["best_lr"] == 3.16e-4 and result["edge"] is None and result["warning"] is None
    assert result["range"] == [1e-6, 1e-3]
    # the incumbent raced the new trials from the first rung, at equal steps (the real _train_to reads
    # its rung-10 score back from its metrics instead of training it again)
    assert calls.count((1e-4, 10)) == 2 and (3.16e-4, 10) in calls and (1e-3, 10) in calls


def test_a_best_still_at_an_end_is_said_loudly(tmp_path, monkeypatch):
    _script(monkeypatch, _valley(1.0))  # the optimum lies far above any range searched
    settings = SearchSettings(min_lr=1e-6, max_lr=1e-4, trials=3, rung_steps=10, max_steps=20, extend=1)
    result = run_lr_search(_config(), tmp_path, settings, progress=False)
    assert result["best_lr"] == 1e-3 and result["edge"] == "high" and len(result["extensions"]) == 1
    assert "the optimum may lie above it" in result["warning"] and "extended 1 decade" in result["warning"]
    quiet = run_lr_search(_config(), tmp_path / "no-extension",
                          SearchSettings(min_lr=1e-6, max_lr=1e-4, trials=3, rung_steps=10, max_steps=20, extend=0),
                          progress=False)
    assert quiet["best_lr"] == 1e-4 and quiet["edge"] == "high" and quiet["extensions"] == []
    assert "is the highest tried (range 1e-06 to 0.0001)" in quiet["warning"]


def test_a_best_at_the_bottom_is_searched_lower(tmp_path, monkeypatch):
    _script(monkeypatch, _valley(3e-7))
    result = run_lr_search(_config(), tmp_path, SearchSettings(min_lr=1e-6, max_lr=1e-4, trials=3, rung_steps=5,
                                                               max_steps=10), progress=False)
    assert result["extensions"] == [{"direction": "low", "from": 1e-6, "lrs": [1e-7]}]
    assert result["best_lr"] == 1e-7 and result["edge"] == "low"  # 0.348 against 1e-6's 0.352, at 5 steps
    assert "the optimum may lie below it" in result["warning"] and "--min-lr" in result["warning"]


def test_extension_grid_spans_one_decade_at_the_grid_density():
    assert extension_grid([1e-6, 4.64e-6, 2.15e-5, 1e-4], "high") == [3.16e-4, 1e-3]
    assert extension_grid([1e-4, 1e-3, 1e-2], "low") == [1e-5]
    assert extension_grid([1e-4, 1e-2], "high") == [1e-1]


def test_bad_extend_is_refused():
    from asrtune.errors import AsrtuneError

    with pytest.raises(AsrtuneError, match="extend"):
        SearchSettings(extend=-1)
