"""The biasing benchmark's sentence sets are unseen data: in no training corpus, their terms in none either."""

from __future__ import annotations

import re
from pathlib import Path

from asrtune.evaluation.terms import read_terms

ROOT = Path(__file__).resolve().parents[2]
SETS = ROOT / "benchmarks" / "data" / "biasing"
CORPORA = ROOT / "src" / "asrtune" / "data" / "corpora"


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9']+", text.lower())) + " "


def test_benchmark_sentences_and_terms_are_in_no_training_corpus():
    corpora = _words(" ".join(path.read_text(encoding="utf-8") for path in CORPORA.glob("*.txt")))
    sets = {path.stem: path.read_text(encoding="utf-8").splitlines() for path in SETS.glob("*.txt")
            if path.name != "terms.txt"}
    assert sorted(sets) == ["cardiology", "pharmacy", "radiology"] and all(len(v) == 24 for v in sets.values())
    sentences = [line for lines in sets.values() for line in lines]
    assert not [s for s in sentences if _words(s) in corpora]
    terms = read_terms(SETS / "terms.txt").terms
    assert len(terms) >= 40
    assert not [t for t in terms if _words(t) in corpora]  # not even as words inside another sentence
    spoken = _words(" ".join(sentences))
    assert not [t for t in terms if _words(t) not in spoken]  # every term is read somewhere
