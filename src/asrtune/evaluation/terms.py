"""Term accuracy: are the domain's words right?

A term list has one term or phrase a line (blank lines and ``#`` comments skipped). Terms and
transcripts go through the same normaliser WER uses (:func:`asrtune.evaluation.normalize.normalizer_for`),
then a term occurs wherever its words appear as whole consecutive words (``colitis`` is not found
in ``pancolitis``). Per set:

* ``term_recall``: the share of term occurrences in the references that the hypotheses have,
  counted per utterance (a term twice in a reference needs it twice in the hypothesis);
* ``term_insertions``: term occurrences in the hypotheses beyond those in their references (a term
  the reference lacks, or more often than the reference has it).

WER on a sentence with one drug name says little; term recall says whether the drug name is right.
The packaged list ``packaged:medical_terms_en`` holds the drugs, conditions and procedures of the
demo's medical corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from asrtune.data.corpora import PACKAGED_PREFIX
from asrtune.errors import AsrtuneError
from asrtune.evaluation.bootstrap import bootstrap_ratio, paired_bootstrap_ratio_delta
from asrtune.evaluation.normalize import normalizer_for
from asrtune.languages import canonical_language

__all__ = ["TermList", "TermCounts", "PACKAGED_PREFIX", "MEDICAL_TERMS", "parse_terms", "read_terms",
           "packaged_term_lists", "count_terms", "term_scores", "term_report", "TOP_MISSED"]

MEDICAL_TERMS = "packaged:medical_terms_en"  # the demo's built-in list
TOP_MISSED = 10  # terms listed in a report's ``top_missed``


@dataclass(frozen=True, eq=False)
class TermList:
    """Terms as written (first spelling kept) and their normalised words.

    Attributes:
        terms: each term as written in the list, duplicates dropped.
        words: each term's words after normalisation (same order as ``terms``).
        duplicates: lines dropped because an earlier line normalised to the same words.
        language: the language whose normaliser made ``words``.
        source: where the list came from (a path or ``packaged:NAME``).
        lines: the raw non-comment lines, to normalise again for another language.
    """

    terms: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    duplicates: int
    language: str | None
    source: str
    lines: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.terms)

    def for_language(self, language: str | None) -> TermList:
        """The same list normalised for ``language`` (itself when the normaliser is the same)."""
        if canonical_language(language) == canonical_language(self.language):
            return self
        return parse_terms(self.lines, language=language, source=self.source)

    @cached_property
    def longest(self) -> int:
        """Words in the longest term."""
        return max(len(w) for w in self.words)


def parse_terms(lines: Sequence[str], *, language: str | None = None, source: str = "<terms>") -> TermList:
    """A :class:`TermList` from lines of text (comments and blank lines skipped).

    Raises:
        AsrtuneError: no term is left, or a term has no words after normalisation.
    """
    normalise = normalizer_for(language)
    kept = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    terms, words, seen = [], [], set()
    for line in kept:
        normalised = tuple(normalise(line).split())
        if not normalised:
            raise AsrtuneError(f"{source}: term {line!r} has no words after normalisation")
        if normalised in seen:
            continue
        seen.add(normalised)
        terms.append(" ".join(line.split()))
        words.append(normalised)
    if not terms:
        raise AsrtuneError(f"{source}: the term list is empty (one term or phrase a line; # starts a comment)")
    return TermList(terms=tuple(terms), words=tuple(words), duplicates=len(kept) - len(terms),
                    language=language, source=source, lines=tuple(kept))


def packaged_term_lists() -> list[str]:
    """Names of the packaged term lists (``packaged:NAME``)."""
    folder = resources.files("asrtune.data.corpora")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir()
                  if p.name.endswith(".txt") and "_terms_" in p.name)


def _read_text(spec: str | Path) -> str:
    text = str(spec)
    if text.startswith(PACKAGED_PREFIX):
        name = text.removeprefix(PACKAGED_PREFIX)
        if name not in packaged_term_lists():
            raise AsrtuneError(f"no packaged term list {name!r} (packaged: {', '.join(packaged_term_lists())})")
        return resources.files("asrtune.data.corpora").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    path = Path(text).expanduser()
    if not path.is_file():
        raise AsrtuneError(f"term list not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AsrtuneError(f"{path}: cannot read the term list ({error})") from error


def read_terms(spec: str | Path, language: str | None = None) -> TermList:
    """Read a term list: a UTF-8 file, or ``packaged:NAME`` (e.g. :data:`MEDICAL_TERMS`).

    Raises:
        AsrtuneError: a missing or unreadable file, an unknown packaged list, an empty list.
    """
    return parse_terms(_read_text(spec).splitlines(), language=language, source=str(spec))


def _occurrences(words: list[str], term: tuple[str, ...], first: dict[str, list[int]]) -> int:
    """Non-overlapping whole-word occurrences of ``term`` in ``words`` (``first``: word -> positions)."""
    count, free_from, size = 0, 0, len(term)
    for start in first.get(term[0], ()):
        if start >= free_from and tuple(words[start:start + size]) == term:
            count += 1
            free_from = start + size
    return count


def count_terms(texts: Sequence[str], terms: TermList) -> np.ndarray:
    """(N, T) occurrences of each term in each text, after the term list's normaliser."""
    normalise = normalizer_for(terms.language)
    counts = np.zeros((len(texts), len(terms)), dtype=np.int64)
    for row, text in enumerate(texts):
        words = normalise(text).split()
        positions: dict[str, list[int]] = {}
        for index, word in enumerate(words):
            positions.setdefault(word, []).append(index)
        for column, term in enumerate(terms.words):
            if term[0] in positions:
                counts[row, column] = _occurrences(words, term, positions)
    return counts


@dataclass(frozen=True, eq=False)
class TermCounts:
    """Term occurrences per utterance and term: ``reference`` and ``hypothesis``, both (N, T)."""

    terms: TermList
    reference: np.ndarray
    hypothesis: np.ndarray

    @property
    def hits(self) -> np.ndarray:
        """(N, T) occurrences the hypothesis has, at most the reference's."""
        return np.minimum(self.reference, self.hypothesis)

    @property
    def insertions(self) -> np.ndarray:
        """(N, T) occurrences in the hypothesis beyond the reference's."""
        return np.maximum(self.hypothesis - self.reference, 0)

    @property
    def occurrences(self) -> int:
        return int(self.reference.sum())

    @property
    def recall(self) -> float | None:
        return float(self.hits.sum() / self.occurrences) if self.occurrences else None


def term_scores(references: Sequence[str], hypotheses: Sequence[str], terms: TermList,
                language: str | None = None) -> TermCounts:
    """Count every term in references and hypotheses, normalised for ``language``.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    terms = terms.for_language(language)
    return TermCounts(terms=terms, reference=count_terms(references, terms),
                      hypothesis=count_terms(hypotheses, terms))


def _summary(counts: TermCounts, resamples: int) -> dict:
    hits = counts.hits.sum(axis=1)
    ci = bootstrap_ratio(hits, counts.reference.sum(axis=1), resamples=resamples) if counts.occurrences else None
    return {
        "term_recall": counts.recall,
        "term_recall_ci95": list(ci) if ci else None,
        "term_insertions": int(counts.insertions.sum()),
        "term_hits": int(hits.sum()),
        "term_occurrences": counts.occurrences,
        "utterances_with_terms": int((counts.reference.sum(axis=1) > 0).sum()),
    }


def _per_term(counts: TermCounts) -> dict[str, dict[str, int]]:
    reference, hits, insertions = counts.reference.sum(0), counts.hits.sum(0), counts.insertions.sum(0)
    return {term: {"occurrences": int(reference[i]), "hits": int(hits[i]), "insertions": int(insertions[i])}
            for i, term in enumerate(counts.terms.terms) if reference[i] or insertions[i]}


def _top_missed(per_term: dict[str, dict[str, int]], limit: int = TOP_MISSED) -> list[dict]:
    missed = [{"term": t, "missed": c["occurrences"] - c["hits"], "occurrences": c["occurrences"]}
              for t, c in per_term.items() if c["occurrences"] > c["hits"]]
    return sorted(missed, key=lambda m: (-m["missed"], m["term"]))[:limit]


def _as_term_list(terms: TermList | str | Path | Sequence[str], language: str | None) -> TermList:
    if isinstance(terms, TermList):
        return terms
    if isinstance(terms, (str, Path)):
        return read_terms(terms, language)
    return parse_terms(list(terms), language=language)


def term_report(references: Sequence[str], hypotheses: Sequence[str],
                terms: TermList | str | Path | Sequence[str], language: str | None = None, *,
                base_hypotheses: Sequence[str] | None = None, resamples: int = 1000) -> dict:
    """Term recall and insertions of one set, per term, and against a base model's hypotheses.

    Args:
        references, hypotheses: one text per utterance, in the same order.
        terms: a :class:`TermList`, a term-list path or ``packaged:NAME``, or the terms themselves.
        language: the set's language (its normaliser; None: English).
        base_hypotheses: the base model's hypotheses of the same utterances, for the change.
        resamples: bootstrap replicates of the 95% intervals.

    Returns:
        ``term_recall`` (None when the references hold no term), ``term_recall_ci95``,
        ``term_insertions``, ``term_hits``, ``term_occurrences``, ``utterances_with_terms``, ``terms``
        (list size), ``duplicates``, ``per_term`` (occurrences, hits, insertions of each term seen),
        ``top_missed``; with ``base_hypotheses`` also ``base`` (the same summary) and
        ``delta_term_recall`` with its paired ``delta_term_recall_ci95``.
    """
    term_list = _as_term_list(terms, language)
    counts = term_scores(references, hypotheses, term_list, language)
    per_term = _per_term(counts)
    report = {**_summary(counts, resamples), "terms": len(term_list), "duplicates": term_list.duplicates,
              "source": term_list.source, "per_term": per_term, "top_missed": _top_missed(per_term)}
    if base_hypotheses is not None:
        before = term_scores(references, base_hypotheses, counts.terms, language)
        report["base"] = _summary(before, resamples)
        if counts.occurrences:
            report["delta_term_recall"] = counts.recall - before.recall
            ci = paired_bootstrap_ratio_delta(before.hits.sum(1), counts.hits.sum(1), counts.reference.sum(1),
                                              resamples=resamples)
            report["delta_term_recall_ci95"] = list(ci) if ci else None
        else:
            report["delta_term_recall"] = report["delta_term_recall_ci95"] = None
    return report
