"""The embedded demo's data splits, voices and verdicts (the full demo is too slow for the unit suite)."""

from __future__ import annotations

from conftest import write_tiny_manifest

from asrtune import demo
from asrtune.data.manifest import read_manifest


def test_demo_splits_are_disjoint_and_deterministic():
    splits = demo.demo_splits(seed=0)
    medical = demo.corpus_lines("medical_en")
    assert (
        len(splits["train"]) == demo.SPLIT["train"] and len(splits["validation"]) == demo.SPLIT["validation"]
    )
    assert len(splits["test"]) == len(medical) - demo.SPLIT["train"] - demo.SPLIT["validation"] > 0
    assert len(splits["general"]) == demo.GENERAL_SENTENCES
    train, validation, test = (set(splits[k]) for k in ("train", "validation", "test"))
    assert not (train & validation) and not (train & test) and not (validation & test)
    assert train | validation | test == set(medical)
    assert demo.demo_splits(seed=0) == splits
    assert demo.demo_splits(seed=1)["test"] != splits["test"]


def test_test_and_general_sets_are_read_by_voices_training_never_hears():
    voices = demo.split_voices()
    heard = set(voices["train"]) | set(voices["validation"])
    assert heard and not heard & set(voices["test"]) and not heard & set(voices["general"])
    general = set(demo.demo_splits(seed=0, replay=10)["general"])
    assert not general & set(demo.demo_splits(seed=0, replay=10)["train"])  # replayed sentences are others


def test_verdicts_domain_target_and_general_within_ten_percent():
    sets = {"test": {"role": "test", "wer": 0.30, "base": {"wer": 0.64}},
            "voice": {"role": "general", "wer": 0.21, "base": {"wer": 0.20}},
            "real": {"role": "general", "wer": 0.25, "base": {"wer": 0.20}}}
    assert demo.verdicts(sets) == {"domain_target_met": True, "voice_within": True, "real_within": False}
    sets["test"]["wer"] = 0.33
    assert demo.verdicts(sets)["domain_target_met"] is False
    assert demo.verdicts(sets, domain_target=0.7)["domain_target_met"] is True


def test_real_english_subset_spreads_over_the_manifest(tmp_path):
    manifest = write_tiny_manifest(tmp_path, [f"prompt {i}" for i in range(9)], "real.jsonl")
    subset = read_manifest(demo.real_english_subset(manifest, tmp_path / "sub", n=3))
    assert [u.text for u in subset] == ["prompt 0", "prompt 3", "prompt 6"]


def _counts(loops: int, too_long: int, refusals: int) -> dict:
    return {"loops": loops, "too_long": too_long, "refusals": refusals, "rate": 0.0}


def _set(role: str, n: int, wer: float, base: float) -> dict:
    return {"role": role, "n": n, "wer": wer, "wer_ci95": [wer - 0.01, wer + 0.01], "cer": wer / 2,
            "hallucination": _counts(0, 1, 0),
            "base": {"wer": base, "wer_ci95": [base - 0.01, base + 0.01], "cer": base / 2,
                     "hallucination": _counts(2, 3, 4)},
            "relative_wer_change": wer / base - 1, "delta_wer_ci95": [wer - base - 0.01, wer - base + 0.01]}


def test_the_demo_trains_under_its_relative_budget_and_reports_a_forgetful_model_as_such(tmp_path, monkeypatch,
                                                                                       capsys):
    """run_demo end to end with the training replaced: its config, results.json and printed verdicts."""
    from conftest import espeak_or_skip

    espeak_or_skip()
    seen = {}

    def fake_train(config, run_dir):
        seen["config"] = config
        sets = {"test": _set("test", 60, 0.30, 0.86), "everyday_heldout_voice": _set("general", 40, 0.30, 0.23)}
        return {"evaluation": {"sets": sets}, "best_within_budget": False, "best_general_wer_rise": 0.3,
                "trainable_params": 10, "total_params": 100, "train_seconds": 1.0, "steps": 60, "best_step": 40}

    monkeypatch.setattr(demo, "train", fake_train)
    settings = demo.DemoSettings(steps=5)
    results = demo.run_demo(tmp_path / "demo", real_en=None, settings=settings)
    config = seen["config"]
    assert config.loop.forgetting_measure == "relative" and config.loop.forgetting_budget == 0.10
    assert config.loop.interpolation == demo.DEMO_SETTINGS.interpolation and config.loop.interpolation
    assert config.loop.max_steps == 5 and config.strategy == demo.DEMO_SETTINGS.strategy
    assert [g.name for g in config.data.general] == ["everyday_heldout_voice"]
    voices = {u.voice for u in read_manifest(config.data.test)}
    assert voices == set(demo.TEST_VOICES)
    assert results["verdicts"] == {"domain_target_met": True, "everyday_heldout_voice_within": False}
    out = capsys.readouterr().out
    assert "domain WER at most 0.5x the base model's: yes" in out and "everyday, held-out voice within +10%: NO" in out
    assert "loops / run-ons / refusals, before -> after" in out and "2 / 3 / 4 -> 0 / 1 / 0" in out
    assert results["sets"]["test"]["hallucination"] == {"loops": 0, "too_long": 1, "refusals": 0,
                                                        "base": {"loops": 2, "too_long": 3, "refusals": 4}}
    assert "NO checkpoint stayed within the forgetting budget (general WER at most 10% above" in out
    assert "real English: not measured (not requested" in out
    saved = (tmp_path / "demo" / "results.json").read_text()
    assert '"forgetting_measure": "relative"' in saved


def test_the_demo_names_an_interpolated_model_as_such(tmp_path, monkeypatch, capsys):
    from conftest import espeak_or_skip

    espeak_or_skip()

    def fake_train(config, run_dir):
        sets = {"test": _set("test", 60, 0.33, 0.86), "everyday_heldout_voice": _set("general", 40, 0.06, 0.23)}
        return {"evaluation": {"sets": sets}, "best_within_budget": True, "best_general_wer_rise": 0.0,
                "trainable_params": 10, "total_params": 100, "train_seconds": 1.0, "steps": 30, "best_step": 30,
                "best_interpolation": 0.5}

    monkeypatch.setattr(demo, "train", fake_train)
    results = demo.run_demo(tmp_path / "demo", real_en=None, settings=demo.DemoSettings(steps=2))
    assert results["best_interpolation"] == 0.5
    assert results["verdicts"] == {"domain_target_met": True, "everyday_heldout_voice_within": True}
    out = capsys.readouterr().out
    assert "kept model: the base model + 0.5 x (step 30 - base): a weight interpolation" in out


def test_the_demo_scores_its_medical_terms_before_and_after(tmp_path, monkeypatch, capsys):
    """The run config names the built-in term list; results.json and the printed table carry its recall."""
    import json

    from conftest import espeak_or_skip

    from asrtune.evaluation.terms import MEDICAL_TERMS, term_report

    espeak_or_skip()
    references = ["the patient takes amoxicillin for otitis media", "start metformin today", "no terms here"]
    base = ["the patient takes them a facility for a Q-tatitis media", "start met for men today", "no terms here"]
    tuned = ["the patient takes amoxicillin for otitis media", "start met for men today", "no terms here"]
    seen = {}

    def fake_train(config, run_dir):
        seen["terms"] = config.data.terms
        test = {**_set("test", 3, 0.2, 0.8), "terms": term_report(references, tuned, config.data.terms, "en",
                                                                   base_hypotheses=base, resamples=50)}
        sets = {"test": test, "everyday_heldout_voice": _set("general", 40, 0.06, 0.23)}
        return {"evaluation": {"sets": sets}, "best_within_budget": True, "best_general_wer_rise": 0.0,
                "trainable_params": 10, "total_params": 100, "train_seconds": 1.0, "steps": 2, "best_step": 2}

    monkeypatch.setattr(demo, "train", fake_train)
    demo.run_demo(tmp_path / "demo", real_en=None, settings=demo.DemoSettings(steps=2))
    assert seen["terms"] == MEDICAL_TERMS
    terms = json.loads((tmp_path / "demo" / "results.json").read_text())["terms"]
    assert (terms["term_hits"], terms["term_occurrences"]) == (2, 3)  # amoxicillin, otitis media; not metformin
    assert (terms["base"]["term_hits"], terms["base"]["term_recall"]) == (0, 0.0)
    assert abs(terms["delta_term_recall"] - 2 / 3) < 1e-9
    assert terms["top_missed"][0]["term"] == "metformin"
    out = capsys.readouterr().out
    assert "before | 0.000 (0/3)" in out and "after  | 0.667 (2/3)" in out
    assert "most missed after training: metformin (1/1)" in out


def test_the_llm_demo_adapts_the_aligned_model_under_the_budget_and_reports_its_target(tmp_path, monkeypatch,
                                                                                        capsys):
    """run_demo for bundled:llm-asr-tiny with the training replaced: its model, strategy, budget and 0.7x target."""
    from dataclasses import replace

    from conftest import espeak_or_skip

    espeak_or_skip()
    seen = {}

    def fake_train(config, run_dir):
        seen["config"] = config
        sets = {"test": _set("test", 60, 0.60, 0.90), "everyday_heldout_voice": _set("general", 40, 0.52, 0.50)}
        return {"evaluation": {"sets": sets}, "best_within_budget": True, "best_general_wer_rise": 0.04,
                "trainable_params": 10, "total_params": 100, "train_seconds": 1.0, "steps": 5, "best_step": 5}

    monkeypatch.setattr(demo, "train", fake_train)
    settings = demo.demo_settings(demo.LLM_DEMO_MODEL)
    assert settings.model == "bundled:llm-asr-tiny" and settings.domain_target == 0.7
    assert demo.demo_settings() == demo.DEMO_SETTINGS and demo.DEMO_SETTINGS.model == demo.DEMO_MODEL
    assert demo.DEMO_SETTINGS.domain_target == 0.5 and demo.DEMO_SETTINGS.projector_learning_rate is None
    results = demo.run_demo(tmp_path / "demo", real_en=None, settings=replace(settings, steps=5))
    config = seen["config"]
    assert config.model == demo.LLM_DEMO_MODEL and config.strategy == settings.strategy
    assert config.optim.learning_rate == settings.learning_rate
    assert config.loop.forgetting_budget == 0.10 and config.loop.forgetting_measure == "relative"
    assert config.loop.interpolation == () and config.loop.ctc_weight == settings.ctc_weight
    assert [g.name for g in config.data.general] == ["everyday_heldout_voice"]
    assert results["verdicts"] == {"domain_target_met": True, "everyday_heldout_voice_within": True}
    out = capsys.readouterr().out
    assert "asrtune demo: bundled:llm-asr-tiny" in out and "forgetting budget 0.1 (relative)" in out
    assert "domain WER at most 0.7x the base model's: yes" in out
    assert "everyday, held-out voice within +10%: yes" in out


def test_the_demo_command_picks_each_models_settings(tmp_path, monkeypatch):
    from asrtune.cli import main

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda output_dir, real_en, settings: calls.append((output_dir, settings)))
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--real-en", "none"]) == 0
    assert main(["demo", "--model", "bundled:llm-asr-tiny", "--real-en", "none", "--steps", "7"]) == 0
    assert main(["demo", "--model", "bundled:llm-asr-tiny", "--real-en", "none", "--forgetting-budget", "0.5",
                 "--ctc-weight", "0.25"]) == 0
    (whisper_dir, whisper), (llm_dir, llm), (_, budgeted) = calls
    assert whisper == demo.DEMO_SETTINGS and str(whisper_dir) == "runs/demo"
    assert str(llm_dir) == "runs/demo-llm" and llm.model == demo.LLM_DEMO_MODEL and llm.steps == 7
    assert llm.strategy == demo.LLM_DEMO_SETTINGS.strategy and llm.forgetting_budget == 0.10
    assert budgeted.forgetting_budget == 0.5 and budgeted.model == demo.LLM_DEMO_MODEL
    assert budgeted.ctc_weight == 0.25 and whisper.ctc_weight == 0.0
