"""Term lists, term recall and term insertions (asrtune.evaluation.terms) and where they are reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asrtune.errors import AsrtuneError
from asrtune.evaluation.terms import (
    MEDICAL_TERMS,
    count_terms,
    packaged_term_lists,
    parse_terms,
    read_terms,
    term_report,
)


def test_parse_skips_comments_blanks_and_counts_duplicates_after_normalisation():
    terms = parse_terms(["# drugs", "", "Amoxicillin", "  amoxicillin. ", "atrial  fibrillation", "Anaemia",
                         "anemia"], language="en")
    assert terms.terms == ("Amoxicillin", "atrial fibrillation", "Anaemia")
    assert terms.words == (("amoxicillin",), ("atrial", "fibrillation"), ("anemia",))  # British spelling too
    assert terms.duplicates == 2
    assert terms.longest == 2


@pytest.mark.parametrize("lines", [[], ["# only a comment", "   "]])
def test_an_empty_list_is_an_error(lines):
    with pytest.raises(AsrtuneError, match="empty"):
        parse_terms(lines)


def test_a_term_without_words_is_an_error():
    with pytest.raises(AsrtuneError, match="no words"):
        parse_terms(["warfarin", "!!!"])


def test_read_terms_file_and_errors(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("# mine\nwarfarin\n\nherpes zoster\n", encoding="utf-8")
    assert read_terms(path).terms == ("warfarin", "herpes zoster")
    with pytest.raises(AsrtuneError, match="not found"):
        read_terms(tmp_path / "missing.txt")
    with pytest.raises(AsrtuneError, match="no packaged term list"):
        read_terms("packaged:nope")


def test_whole_word_and_phrase_matches_only():
    terms = parse_terms(["colitis", "atrial fibrillation", "a b a"])
    texts = ["Pancolitis, not colitis; colitis again.", "atrial and fibrillation", "Atrial fibrillation!",
             "a b a b a b a"]
    counts = count_terms(texts, terms)
    assert counts.tolist() == [[2, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 2]]  # non-overlapping phrase matches


def test_recall_counts_occurrences_and_insertions_count_extra_ones():
    refs = ["warfarin then warfarin again", "start metformin", "no term here", "metformin"]
    hyps = ["warfarin then wharf again", "start metformin metformin", "warfarin", "met for min"]
    report = term_report(refs, hyps, ["warfarin", "metformin"], "en", resamples=200)
    assert report["term_occurrences"] == 4  # warfarin twice, metformin twice
    assert report["term_hits"] == 2  # one warfarin of two, one metformin of two
    assert report["term_recall"] == pytest.approx(0.5)
    assert report["term_insertions"] == 2  # a second metformin, a warfarin the reference lacks
    assert report["utterances_with_terms"] == 3
    assert report["per_term"]["warfarin"] == {"occurrences": 2, "hits": 1, "insertions": 1}
    assert [m["term"] for m in report["top_missed"]] == ["metformin", "warfarin"]
    low, high = report["term_recall_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_report_against_a_base_model():
    refs = ["give warfarin", "give metformin", "give ceftriaxone", "nothing"]
    base = ["give war for in", "give met for min", "give ceftriaxone", "nothing"]
    tuned = ["give warfarin", "give metformin", "give ceftriaxone", "nothing"]
    report = term_report(refs, tuned, ["warfarin", "metformin", "ceftriaxone"], base_hypotheses=base,
                         resamples=200)
    assert report["term_recall"] == 1.0
    assert report["base"]["term_recall"] == pytest.approx(1 / 3)
    assert report["delta_term_recall"] == pytest.approx(2 / 3)
    low, high = report["delta_term_recall_ci95"]
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0


def test_no_term_in_the_references_gives_no_recall():
    report = term_report(["hello there"], ["hello warfarin"], ["warfarin"])
    assert report["term_recall"] is None and report["term_recall_ci95"] is None
    assert report["term_insertions"] == 1


def test_lengths_must_match():
    with pytest.raises(ValueError, match="references"):
        term_report(["a"], [], ["a"])


def test_packaged_medical_terms_all_occur_in_the_medical_corpus():
    from asrtune.demo import corpus_lines

    assert "medical_terms_en" in packaged_term_lists()
    terms = read_terms(MEDICAL_TERMS, "en")
    assert len(terms) >= 100 and terms.duplicates == 0
    counts = count_terms(corpus_lines("medical_en"), terms).sum(axis=0)
    assert not [t for t, n in zip(terms.terms, counts) if n == 0]
    assert count_terms(corpus_lines("general_en"), terms).sum() == 0  # domain words, not everyday ones


def test_config_data_terms_is_checked_and_resolved(tmp_path):
    from asrtune.config import load_config

    (tmp_path / "terms.txt").write_text("warfarin\n", encoding="utf-8")
    config_path = tmp_path / "run.yaml"
    config_path.write_text("data:\n  terms: terms.txt\n")
    assert load_config(config_path).data.terms == str((tmp_path / "terms.txt").resolve())
    assert load_config(None, ["data.terms=packaged:medical_terms_en"]).data.terms == MEDICAL_TERMS
    with pytest.raises(AsrtuneError, match="term list not found"):
        load_config(None, [f"data.terms={tmp_path / 'missing.txt'}"])
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(AsrtuneError, match="empty"):
        load_config(None, [f"data.terms={tmp_path / 'empty.txt'}"])


def test_set_report_and_evidence_carry_terms():
    from asrtune.evaluation.forgetting import Transcripts
    from asrtune.training.evidence import TARGET, set_report

    terms = parse_terms(["warfarin", "metformin"])
    refs = ("give warfarin", "give metformin", "rest")
    tuned = Transcripts(("a", "b", "c"), refs, ("give warfarin", "give met for min", "rest"), "en")
    base = Transcripts(("a", "b", "c"), refs, ("give war for in", "give met for min", "rest"), "en")
    report = set_report(TARGET, tuned, base, resamples=100, terms=terms)
    assert report["term_recall"] == 0.5 and report["base"]["term_recall"] == 0.0
    assert report["delta_term_recall"] == 0.5 and report["term_insertions"] == 0
    assert report["terms"]["top_missed"][0]["term"] == "metformin"
    assert "term_recall" not in set_report(TARGET, tuned, base, resamples=100)
    json.dumps(report)  # results.json must be able to hold it


def test_sweep_table_gets_term_columns_only_when_runs_have_them():
    from asrtune.analysis.tables import BaseRecord, Row, dataset_table

    base = BaseRecord(dataset="d", wer=0.6, wer_ci=(0.5, 0.7), hallucination=0.0, nonspeech_words=0.0,
                      term_recall=0.1, term_insertions=0)
    common = dict(dataset="d", label="lora", spec="lora", seeds=1, wer=0.3, wer_sd=0.0, wer_ci=(0.2, 0.4),
                  trainable=10, total=100, train_seconds=1.0, forgetting=None, hallucination=0.0,
                  nonspeech_words=0.0, within_budget=True, cka=None)
    header, table = dataset_table("d", base, [Row(**common, term_recall=0.55, term_insertions=2)])
    assert header[-2:] == ["term recall %", "term insertions"]
    assert [r[-2:] for r in table] == [["10.0", "0"], ["55.0", "2"]]
    plain_base = BaseRecord(dataset="d", wer=0.6, wer_ci=(0.5, 0.7), hallucination=0.0, nonspeech_words=0.0)
    header, _ = dataset_table("d", plain_base, [Row(**common)])
    assert "term recall %" not in header


def test_bootstrap_ratio_matches_the_point_estimate_on_constant_data():
    from asrtune.evaluation.bootstrap import bootstrap_ratio, paired_bootstrap_ratio_delta

    low, high = bootstrap_ratio(np.array([1, 1, 1]), np.array([2, 2, 2]), resamples=50)
    assert low == high == 0.5
    assert bootstrap_ratio(np.array([0, 0]), np.array([0, 0])) is None
    low, high = paired_bootstrap_ratio_delta(np.array([0, 1]), np.array([1, 2]), np.array([1, 2]), resamples=50)
    assert low > 0 and high <= 1.0


def test_a_run_with_data_terms_reports_term_recall_per_set(tiny_model_dir, tiny_data, tmp_path):
    from conftest import read_jsonl

    from asrtune.config import DataConfig, LoopConfig, RunConfig
    from asrtune.evaluation.forgetting import Transcripts
    from asrtune.training.evidence import decoding_key
    from asrtune.training.recipe import train

    (tmp_path / "terms.txt").write_text("hello world\nthe cat\nopen the door\n", encoding="utf-8")
    config = RunConfig(
        model=str(tiny_model_dir), strategy="full",
        data=DataConfig(train=str(tiny_data[0]), eval=str(tiny_data[1]), terms=str(tmp_path / "terms.txt")),
        loop=LoopConfig(max_steps=1, batch_size=2, eval_every=1, eval_batch_size=4, max_new_tokens=4,
                        warmup_ratio=0.0),
    )
    rows = read_jsonl(tiny_data[1])
    refs = [r["text"] for r in rows]
    # a base model that got every word right: its term recall is 1
    base = {"eval": Transcripts([r["id"] for r in rows], refs, refs, "en", decoding_key(config))}
    results = train(config, tmp_path / "run", progress=False, baseline_transcripts=base)
    evaluation = results["evaluation"]
    report = evaluation["sets"]["eval"]
    assert report["terms"]["term_occurrences"] == 2  # "hello world", "the cat" in "the cat sat"
    assert report["base"]["term_recall"] == 1.0
    assert report["delta_term_recall"] == pytest.approx(report["term_recall"] - 1.0)
    assert evaluation["terms"]["set"] == "eval" and evaluation["terms"]["base_term_recall"] == 1.0
    assert "term_recall" not in evaluation["sets"]["nonspeech"]
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["evaluation"]["sets"]["eval"]["term_recall"] == report["term_recall"]
