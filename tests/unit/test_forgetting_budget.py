"""The recipe keeps the best target checkpoint among those within the forgetting budget."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import read_jsonl, write_tiny_manifest

from asrtune.config import DataConfig, GeneralSet, LoopConfig, OptimConfig, RunConfig
from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.forgetting import Transcripts
from asrtune.evaluation.metrics import score
from asrtune.training.evidence import decoding_key
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train

GENERAL_TEXT = "apple banana cherry grape lemon"
WRONG = ["melon", "peach", "plum", "kiwi", "fig"]


def with_errors(errors: int) -> str:
    words = GENERAL_TEXT.split()
    return " ".join(WRONG[:errors] + words[errors:])


class Script:
    """Scripted evaluations: eval WERs by call, general hypotheses with a scripted number of wrong words."""

    def __init__(self, eval_wers, general_errors):
        self.eval_wers, self.general_errors = iter(eval_wers), iter(general_errors)

    def __call__(self, loaded, dataset, config):
        refs = [u.text for u in dataset.utterances]
        if refs[0] == GENERAL_TEXT:
            hyps = [with_errors(next(self.general_errors))] * len(refs)
            scores = score(refs, hyps)
        else:
            wer = next(self.eval_wers)
            hyps = ["x"] * len(refs)
            scores = dataclasses.replace(score(refs, hyps), wer=wer)
        return Evaluation(
            scores=scores, hypotheses=hyps, references=refs, ids=[u.id for u in dataset.utterances]
        )


def fruit_config(model_dir, data, general: Path, *, learning_rate: float = 1e-4, **loop) -> RunConfig:
    """A decoder run on the tiny model, evaluated every step, with one general set, ``fruit``."""
    return RunConfig(
        model=str(model_dir), strategy="decoder", seed=0,
        data=DataConfig(train=str(data[0]), eval=str(data[1]),
                        general=(GeneralSet(name="fruit", manifest=str(general)),)),
        optim=OptimConfig(learning_rate=learning_rate),
        loop=LoopConfig(batch_size=2, eval_every=1, eval_batch_size=4, max_new_tokens=4, warmup_ratio=0.0,
                        **loop),
    )


def fruit_base(config: RunConfig) -> dict[str, Transcripts]:
    """The base model's ``fruit`` transcripts: one wrong word in five (WER 0.2) on both utterances."""
    return {"fruit": Transcripts(["u0", "u1"], [GENERAL_TEXT] * 2, [with_errors(1)] * 2, "en",
                                 decoding_key(config))}


@pytest.mark.parametrize(("budget", "measure", "best_step"),
                         [(0.03, "absolute", 3), (1.0, "absolute", 2), (0.5, "relative", 3), (3.0, "relative", 2)])
def test_budget_decides_the_kept_checkpoint(
    tiny_model_dir, tiny_data, tmp_path, budget, measure, best_step
):
    general = write_tiny_manifest(tmp_path / "general", [GENERAL_TEXT, GENERAL_TEXT], "general.jsonl")
    # Steps 0..3: target WER best at step 2, but there the general WER rose by 2 words in 5 (+0.4).
    script = Script([0.9, 0.5, 0.3, 0.4, 0.4], [1, 1, 3, 1])
    config = RunConfig(
        model=str(tiny_model_dir),
        strategy="decoder",
        seed=0,
        data=DataConfig(
            train=str(tiny_data[0]),
            eval=str(tiny_data[1]),
            general=(GeneralSet(name="fruit", manifest=str(general)),),
        ),
        optim=OptimConfig(learning_rate=1e-4),
        loop=LoopConfig(
            max_steps=3,
            batch_size=2,
            eval_every=1,
            eval_batch_size=4,
            max_new_tokens=4,
            warmup_ratio=0.0,
            forgetting_budget=budget,
            forgetting_measure=measure,
        ),
    )
    # The base model's general transcripts: one wrong word in five (WER 0.2) on both utterances,
    # decoded (so the recipe is told) with the run's own decoding settings.
    base = {"fruit": Transcripts(["u0", "u1"], [GENERAL_TEXT] * 2, [with_errors(1)] * 2, "en",
                                 decoding_key(config))}
    results = train(config, tmp_path / "run", progress=False, baseline_transcripts=base,
                    parts=RecipeParts(score=script))

    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_wer" in r]
    # +2 words in 5 at step 2: +0.4 WER points, twice the base model's 0.2 (relative +2.0)
    rise = 0.4 if measure == "absolute" else 2.0
    assert [r["general_wer_rise"]["fruit"] for r in evals] == pytest.approx([0.0, 0.0, rise, 0.0])
    assert [r["within_budget"] for r in evals] == [True, True, budget >= rise, True]
    assert results["best_step"] == best_step
    assert results["best_subset_wer"] == {3: 0.4, 2: 0.3}[best_step]
    assert results["best_general_wer_rise"] == pytest.approx({3: 0.0, 2: rise}[best_step])
    assert results["best_within_budget"] is True and results["forgetting_budget"] == budget
    assert results["forgetting_measure"] == measure
    meta = json.loads((tmp_path / "run" / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["step"] == best_step
    # The given base transcripts were used (not re-decoded) and the run reports forgetting on the set.
    stored = json.loads((tmp_path / "run" / "base_transcripts.json").read_text())["sets"]
    assert stored["fruit"]["hypotheses"] == [with_errors(1)] * 2
    assert list(stored) == ["eval", "fruit", "nonspeech"]
    evidence = results["evaluation"]
    assert evidence["sets"]["fruit"]["role"] == "general"
    assert evidence["sets"]["fruit"]["base"]["wer"] == pytest.approx(0.2)
    assert evidence["forgetting"]["max"] == pytest.approx(evidence["sets"]["fruit"]["delta_wer"])
    assert (tmp_path / "run" / "evaluation" / "fruit.jsonl").is_file()


def test_relative_rise_against_a_perfect_base_is_infinite_unless_nothing_rose():
    from asrtune.evaluation.forgetting import wer_rise

    base = Transcripts(["u0"], [GENERAL_TEXT], [GENERAL_TEXT], "en")
    same = Transcripts(["u0"], [GENERAL_TEXT], [GENERAL_TEXT], "en")
    worse = Transcripts(["u0"], [GENERAL_TEXT], [with_errors(1)], "en")
    assert wer_rise(same, base, "relative") == 0.0
    assert wer_rise(worse, base, "relative") == float("inf")
    assert wer_rise(worse, base, "absolute") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="measure"):
        wer_rise(worse, base, "percent")


def test_without_a_budget_general_sets_are_scored_before_and_after_only(
    tiny_model_dir, tiny_data, tmp_path
):
    general = write_tiny_manifest(tmp_path / "general", [GENERAL_TEXT, GENERAL_TEXT], "general.jsonl")
    # Eval WERs for steps 0..2 and the final pass; no general hypotheses scripted: scoring the set during training fails.
    script = Script([0.9, 0.5, 0.3, 0.3], [])
    config = fruit_config(tiny_model_dir, tiny_data, general, max_steps=2, forgetting_budget=float("inf"))
    base = fruit_base(config)
    results = train(config, tmp_path / "run", progress=False, baseline_transcripts=base,
                    parts=RecipeParts(score=script))

    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_wer" in r]
    assert len(evals) == 3 and not any("general_wer_rise" in r for r in evals)
    assert results["best_step"] == 2
    fruit = results["evaluation"]["sets"]["fruit"]
    assert fruit["base"]["wer"] == pytest.approx(0.2) and "delta_wer" in fruit  # the final pass scored it
