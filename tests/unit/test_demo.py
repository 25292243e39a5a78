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


def test_verdicts_halved_domain_and_general_within_ten_percent():
    sets = {"test": {"role": "test", "wer": 0.30, "base": {"wer": 0.64}},
            "voice": {"role": "general", "wer": 0.21, "base": {"wer": 0.20}},
            "real": {"role": "general", "wer": 0.25, "base": {"wer": 0.20}}}
    assert demo.verdicts(sets) == {"domain_halved": True, "voice_within": True, "real_within": False}
    sets["test"]["wer"] = 0.33
    assert demo.verdicts(sets)["domain_halved"] is False


def test_real_english_subset_spreads_over_the_manifest(tmp_path):
    manifest = write_tiny_manifest(tmp_path, [f"prompt {i}" for i in range(9)], "real.jsonl")
    subset = read_manifest(demo.real_english_subset(manifest, tmp_path / "sub", n=3))
    assert [u.text for u in subset] == ["prompt 0", "prompt 3", "prompt 6"]
