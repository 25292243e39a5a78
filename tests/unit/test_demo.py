"""The embedded demo's data splits and scoring helper (the full demo is too slow for the unit suite)."""

from __future__ import annotations

from conftest import write_tiny_manifest

from asrtune import demo


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


def test_demo_scoring_helper_runs(tiny_loaded, tmp_path):
    manifests = {
        "test": write_tiny_manifest(tmp_path, ["hello world", "good morning"], "test.jsonl"),
        "general": write_tiny_manifest(tmp_path, ["the cat sat"], "general.jsonl"),
    }
    scored = demo._score(tiny_loaded, manifests)
    assert (scored.medical.scores.n, scored.general.scores.n) == (2, 1)
