"""Training sentences that carry new terms (asrtune.data.term_sentences) and ``asrtune synth --terms``."""

from __future__ import annotations

import collections

import pytest

from conftest import espeak_or_skip, read_jsonl

from asrtune.errors import AsrtuneError
from asrtune.data.term_sentences import MEDICAL_TEMPLATES, SLOT, parse_templates, read_templates, term_sentences
from asrtune.evaluation.terms import MEDICAL_TERMS, count_terms, parse_terms, read_terms


def test_packaged_templates_have_one_slot_each():
    templates = read_templates(MEDICAL_TEMPLATES)
    assert len(templates) >= 20 and all(t.count(SLOT) == 1 for t in templates)


@pytest.mark.parametrize("lines,match", [
    ([], "no templates"), (["no slot here"], "exactly one"), (["{term} and {term}"], "exactly one"),
    (["say {term}", "say {term}"], "twice"),
])
def test_bad_templates_are_errors(lines, match):
    with pytest.raises(AsrtuneError, match=match):
        parse_templates(lines)


def test_every_term_in_per_term_different_templates_templates_used_evenly():
    terms = parse_terms(["warfarin", "atrial fibrillation", "colonoscopy", "amoxicillin"])
    templates = parse_templates(["{term} was noted.", "Please spell {term}.", "We discussed {term} today.",
                                 "Note on {term}.", "Ask about {term} again."])
    sentences = term_sentences(terms.terms, templates, per_term=3, seed=1)
    assert len(sentences) == 12 and len(set(sentences)) == 12
    counts = count_terms(sentences, terms)
    assert counts.sum(axis=0).tolist() == [3, 3, 3, 3] and counts.sum(axis=1).tolist() == [1] * 12
    assert "Warfarin was noted." in sentences or "Atrial fibrillation was noted." in sentences  # capitalised
    used = collections.Counter(t for s in sentences for t in templates if s.lower().endswith(
        t.split(SLOT)[1].lower()) and s.lower().startswith(t.split(SLOT)[0].lower()))
    assert max(used.values()) - min(used.values()) <= 1
    assert term_sentences(terms.terms, templates, per_term=3, seed=1) == sentences  # seeded
    with pytest.raises(AsrtuneError, match="per-term"):
        term_sentences(terms.terms, templates, per_term=0)
    with pytest.raises(AsrtuneError, match="templates"):
        term_sentences(terms.terms, templates, per_term=6)


def test_synth_terms_speaks_the_sentences_into_a_manifest(tmp_path, capsys):
    espeak_or_skip()
    from asrtune.cli import main

    (tmp_path / "terms.txt").write_text("# new words\nwarfarin\nherpes zoster\n", encoding="utf-8")
    code = main(["synth", "--terms", str(tmp_path / "terms.txt"), "--per-term", "2", "--out", str(tmp_path / "out"),
                 "--voices", "en-us,en-gb", "--language", "en", "--prefix", "terms"])
    assert code == 0, capsys.readouterr().err
    rows = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert len(rows) == 4 and {r["voice"] for r in rows} == {"en-us", "en-gb"}
    counts = count_terms([r["text"] for r in rows], read_terms(tmp_path / "terms.txt"))
    assert counts.sum(axis=0).tolist() == [2, 2]
    assert all(r["duration"] > 0.5 and r["id"].startswith("terms-") for r in rows)


def test_synth_needs_a_textfile_or_terms(tmp_path, capsys):
    from asrtune.cli import main

    assert main(["synth", "--out", str(tmp_path)]) == 2
    assert "TEXTFILE or --terms" in capsys.readouterr().err
    (tmp_path / "lines.txt").write_text("hello\n")
    assert main(["synth", str(tmp_path / "lines.txt"), "--terms", MEDICAL_TERMS, "--out", str(tmp_path)]) == 2
