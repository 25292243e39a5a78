"""Golden losses: a few fixed-seed steps of every registered strategy on the tiny random Whisper.

The per-step losses are recorded in ``golden/strategy_losses.json``; a change in what a strategy
trains, in the loss, the batch order, the schedule or the optimizer shows up as a failing test and a
diff of that file. Refresh it on purpose: ``ASRTUNE_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py``,
then read the diff.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from conftest import read_jsonl
from test_training import ScriptedEvaluation

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.strategies import STRATEGIES
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train

GOLDEN = Path(__file__).parent / "golden" / "strategy_losses.json"
SPECS = {
    "full": "full",
    "freeze": "freeze:n=1",
    "reinit": "reinit:m=1",
    "adapter": "adapter:d=8",
    "lora": "lora:r=4,alpha=8,dropout=0",
    "decoder": "decoder",
    "prompt": "prompt:n=4",
}


def test_every_registered_strategy_has_a_golden_run():
    assert {n for n in STRATEGIES.names() if "whisper" in STRATEGIES.get(n).families} == set(SPECS)


def _losses(spec: str, model_dir: Path, data: tuple[Path, Path], run_dir: Path) -> list[float]:
    train_manifest, eval_manifest = data
    config = RunConfig(
        model=str(model_dir), strategy=spec, seed=7,
        data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
        optim=OptimConfig(learning_rate=1e-3),
        loop=LoopConfig(max_steps=4, batch_size=2, grad_accum_steps=1, eval_every=4, max_new_tokens=4,
                        warmup_ratio=0.0, num_workers=0, mixed_precision="no"),
    )
    train(config, run_dir, progress=False, final_evaluation=False,
          parts=RecipeParts(score=ScriptedEvaluation(itertools.repeat(0.5))))
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_losses(name, tiny_model_dir, tiny_data, tmp_path):
    losses = _losses(SPECS[name], tiny_model_dir, tiny_data, tmp_path / "run")
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("ASRTUNE_UPDATE_GOLDEN"):
        recorded[name] = {"spec": SPECS[name], "losses": losses}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n")
    assert name in recorded, f"no golden losses for {name}: run with ASRTUNE_UPDATE_GOLDEN=1"
    assert recorded[name]["spec"] == SPECS[name]
    assert len(set(losses)) > 1  # it trained
    # fp32 on one thread; the tolerance admits another CPU's summation order, not a behaviour change
    assert losses == pytest.approx(recorded[name]["losses"], rel=1e-4)
