"""Word-level diffs of hypotheses against references, as WER counts them, and each hypothesis's flags.

Texts go through the set's normaliser (:func:`asrtune.evaluation.normalize.normalizer_for`) and jiwer's
alignment (:func:`jiwer.process_words`), exactly as :func:`asrtune.evaluation.metrics.score` does, so a
row's errors add up to the set's WER. A diff is a list of :class:`Token`: ``=`` words both have (a run
of them is one token), ``s`` a substitution (reference word, hypothesis word), ``d`` a deleted reference
word, ``i`` an inserted hypothesis word. ``term`` marks words inside an occurrence of a listed term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer

from asrtune.evaluation.hallucination import loop_in, refusal_in

__all__ = ["FLAGS", "RUN_ON_RATIO", "Alignment", "Token", "align_all", "hypothesis_flags", "term_positions"]

FLAGS = ("loop", "run-on", "refusal", "truncated")
RUN_ON_RATIO = (
    2.0  # more words than this times the reference's: asrtune.evaluation.hallucination's "too long"
)


@dataclass(frozen=True)
class Token:
    """A step of a diff: ``op`` is ``=``, ``s``, ``d`` or ``i``; ``ref``, ``hyp`` the words (``""``: none)."""

    op: str
    ref: str
    hyp: str
    term: bool = False


@dataclass(frozen=True, kw_only=True)
class Alignment:
    """One hypothesis against its reference (normalised words).

    Attributes:
        tokens: the diff, in reading order.
        substitutions, deletions, insertions: word counts, as jiwer counts them.
        pairs: each substitution's (reference word, hypothesis word).
        hits: indices of reference words the hypothesis has.
    """

    tokens: tuple[Token, ...]
    substitutions: int
    deletions: int
    insertions: int
    pairs: tuple[tuple[str, str], ...]
    hits: frozenset[int]

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def term_positions(words: Sequence[str], terms: Sequence[tuple[str, ...]]) -> set[int]:
    """Indices of the words inside a whole-word occurrence of any term (occurrences of a term do not overlap,
    as :func:`asrtune.evaluation.terms.count_terms` counts them)."""
    found: set[int] = set()
    starts: dict[str, list[int]] = {}
    for index, word in enumerate(words):
        starts.setdefault(word, []).append(index)
    for term in terms:
        free_from = 0
        for start in starts.get(term[0], ()):
            if start >= free_from and tuple(words[start : start + len(term)]) == term:
                found.update(range(start, start + len(term)))
                free_from = start + len(term)
    return found


def _tokens(chunks, ref: list[str], hyp: list[str], ref_terms: set[int], hyp_terms: set[int]) -> Alignment:
    tokens: list[Token] = []
    pairs, hits = [], set()
    counts = {"substitute": 0, "delete": 0, "insert": 0}

    def add_equal(word: str, term: bool) -> None:
        last = tokens[-1] if tokens else None
        if last is not None and last.op == "=" and last.term == term:
            tokens[-1] = Token("=", f"{last.ref} {word}", f"{last.hyp} {word}", term)
        else:
            tokens.append(Token("=", word, word, term))

    for chunk in chunks:
        ref_span = range(chunk.ref_start_idx, chunk.ref_end_idx)
        hyp_span = range(chunk.hyp_start_idx, chunk.hyp_end_idx)
        if chunk.type == "equal":
            for r in ref_span:
                add_equal(ref[r], r in ref_terms)
                hits.add(r)
        elif chunk.type == "substitute":
            for r, h in zip(ref_span, hyp_span, strict=True):
                tokens.append(Token("s", ref[r], hyp[h], r in ref_terms or h in hyp_terms))
                pairs.append((ref[r], hyp[h]))
        elif chunk.type == "delete":
            tokens += [Token("d", ref[r], "", r in ref_terms) for r in ref_span]
        else:
            tokens += [Token("i", "", hyp[h], h in hyp_terms) for h in hyp_span]
        counts[chunk.type] = counts.get(chunk.type, 0) + (
            len(hyp_span) if chunk.type == "insert" else len(ref_span)
        )
    return Alignment(
        tokens=tuple(tokens),
        substitutions=counts["substitute"],
        deletions=counts["delete"],
        insertions=counts["insert"],
        pairs=tuple(pairs),
        hits=frozenset(hits),
    )


def align_all(
    references: Sequence[list[str]], hypotheses: Sequence[list[str]], terms: Sequence[tuple[str, ...]] = ()
) -> list[Alignment]:
    """Align each (reference words, hypothesis words) pair with jiwer, in one call.

    Args:
        references, hypotheses: (N,) lists of normalised words; an empty reference aligns as insertions.
        terms: the term list's normalised words, to mark term words in the diffs.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return []
    output = jiwer.process_words([" ".join(r) for r in references], [" ".join(h) for h in hypotheses])
    return [
        _tokens(chunks, ref, hyp, term_positions(ref, terms), term_positions(hyp, terms))
        for chunks, ref, hyp in zip(output.alignments, output.references, output.hypotheses, strict=True)
    ]


def hypothesis_flags(
    reference: str, hypothesis: str, ref_words: list[str], hyp_words: list[str], *, truncated: bool = False
) -> list[str]:
    """The flags of one hypothesis, by the rules of :mod:`asrtune.evaluation.hallucination`: ``loop`` (an
    n-gram repeated back to back that the reference does not repeat), ``run-on`` (more than twice the
    reference's words), ``refusal`` (an assistant's apology or refusal), ``truncated`` (stopped at
    ``max_new_tokens`` without end-of-text, when the record says so)."""
    flags = []
    if loop_in(hyp_words, ref_words) is not None:
        flags.append("loop")
    if ref_words and len(hyp_words) > RUN_ON_RATIO * len(ref_words):
        flags.append("run-on")
    if refusal_in(hypothesis, reference) is not None:
        flags.append("refusal")
    if truncated:
        flags.append("truncated")
    return flags
