"""One set as the page shows it: a row per utterance and the set's summary, all computed here.

The page's script only filters and sorts what this module computed: per-utterance diffs, errors and WER
before and after, the change and its category (regression, improvement, unchanged errors, correct),
flags, term hits and misses, manifest fields; and per set the WER/CER before and after with their
intervals (the numbers :func:`asrtune.training.evidence.set_report` wrote into the run's ``results.json``),
the flags counted, the most frequent substitutions and the words gained and lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import jiwer
import numpy as np

from asrtune.evaluation.bootstrap import (
    bootstrap_ratio,
    bootstrap_wer,
    paired_bootstrap_delta,
    paired_bootstrap_ratio_delta,
    utterance_counts,
)
from asrtune.evaluation.hallucination import nonspeech_stats
from asrtune.evaluation.metrics import score
from asrtune.evaluation.normalize import normalizer_for
from asrtune.evaluation.terms import term_report, term_scores
from asrtune.explore.align import FLAGS, Alignment, align_all, hypothesis_flags
from asrtune.explore.clips import Clip
from asrtune.explore.sources import SetSource

__all__ = ["CATEGORIES", "TOP", "build_view"]

NONSPEECH_SET = "nonspeech"  # asrtune.training.evidence.NONSPEECH_SET (that module imports torch)
# (key, label) of the categories a row falls in, with a base model / without one
CATEGORIES = {
    True: (
        ("regression", "regressions"),
        ("improvement", "improvements"),
        ("unchanged", "unchanged errors"),
        ("correct", "correct before and after"),
    ),
    False: (("errors", "with errors"), ("correct", "correct")),
}
TOP = 10  # substitutions and words gained / lost listed in the summary
MODELS = ("before", "after")


@dataclass(frozen=True)
class _Model:
    """One model's hypotheses of the set, normalised and aligned."""

    texts: tuple[str, ...]
    words: list[list[str]]
    alignments: list[Alignment]
    terms: np.ndarray | None  # (N, T) term occurrences in the hypotheses


def _category(before: Alignment | None, after: Alignment) -> str:
    if before is None:
        return "errors" if after.errors else "correct"
    if after.errors != before.errors:
        return "regression" if after.errors > before.errors else "improvement"
    return "unchanged" if after.errors else "correct"


def _top_pairs(alignments: list[Alignment]) -> list[list]:
    counts = Counter(pair for a in alignments for pair in a.pairs)
    return [[ref, hyp, n] for (ref, hyp), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]


def _gained_lost(ref_words: list[list[str]], before: _Model, after: _Model) -> dict:
    gained, lost = Counter(), Counter()
    for words, b, a in zip(ref_words, before.alignments, after.alignments, strict=True):
        for index in a.hits - b.hits:
            gained[words[index]] += 1
        for index in b.hits - a.hits:
            lost[words[index]] += 1

    def top(counter: Counter) -> list[list]:
        return [[w, n] for w, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]

    return {
        "gained": top(gained),
        "lost": top(lost),
        "gained_total": sum(gained.values()),
        "lost_total": sum(lost.values()),
    }


def _char_counts(refs: list[str], hyps: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) character edits and reference characters of each pair, as jiwer's CER counts them."""
    output = jiwer.process_characters(refs, hyps)
    edits = [
        sum(
            max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
            for c in chunks
            if c.type != "equal"
        )
        for chunks in output.alignments
    ]
    return np.array(edits, dtype=np.int64), np.array([len(r) for r in output.references], dtype=np.int64)


def _metric(
    name: str, after: float | None, after_ci, before: float | None = None, before_ci=None, delta_ci=None
) -> dict:
    delta = None if before is None or after is None else after - before
    return {
        "name": name,
        "before": before,
        "before_ci": before_ci,
        "after": after,
        "after_ci": after_ci,
        "delta": delta,
        "delta_ci": delta_ci,
    }


def _wer_report(source: SetSource, texts: tuple[str, ...]) -> tuple[dict, object]:
    """WER, CER, reference words and the WER interval of one model: what ``set_report`` writes for a set (that
    function lives beside the decoding code, which imports torch; explore needs none of it)."""
    scores = score(list(source.references), list(texts), source.language)
    counts = utterance_counts(list(source.references), list(texts), source.language)
    return {
        "wer": scores.wer,
        "cer": scores.cer,
        "wer_ci95": list(bootstrap_wer(counts)),
        "reference_words": scores.reference_words,
    }, counts


def _summary(source: SetSource, normalised_refs: list[str], models: dict[str, _Model]) -> dict:
    """The set's numbers: WER / CER (intervals), term recall, top substitutions, words gained and lost.

    The numbers are those :func:`asrtune.training.evidence.set_report` gives (tested): the same functions,
    the same seeds.
    """
    summary: dict = {"metrics": [], "subs": {m: _top_pairs(models[m].alignments) for m in models}}
    scored = [i for i, r in enumerate(normalised_refs) if r]
    if source.role == NONSPEECH_SET or not scored:
        words = {
            m: nonspeech_stats(list(source.ids), list(models[m].texts), source.language).words_per_clip
            for m in models
        }
        summary["metrics"].append(_metric("words per clip", words["after"], None, words.get("before")))
        return summary
    after, after_counts = _wer_report(source, source.after)
    before, before_counts = _wer_report(source, source.before) if source.before is not None else ({}, None)
    delta_ci = (
        list(paired_bootstrap_delta(before_counts, after_counts)) if before_counts is not None else None
    )
    summary["metrics"].append(
        _metric("WER", after["wer"], after["wer_ci95"], before.get("wer"), before.get("wer_ci95"), delta_ci)
    )
    chars = {
        m: _char_counts([normalised_refs[i] for i in scored], [" ".join(models[m].words[i]) for i in scored])
        for m in models
    }
    cer_ci = {m: bootstrap_ratio(*chars[m]) for m in models}
    delta_ci = (
        paired_bootstrap_ratio_delta(chars["before"][0], chars["after"][0], chars["after"][1])
        if "before" in models
        else None
    )
    summary["metrics"].append(
        _metric("CER", after["cer"], cer_ci["after"], before.get("cer"), cer_ci.get("before"), delta_ci)
    )
    if source.terms is not None:
        terms = term_report(
            source.references, source.after, source.terms, source.language, base_hypotheses=source.before
        )
        base = terms.get("base") or {}
        summary["metrics"].append(
            _metric(
                f"term recall ({terms['term_hits']} of {terms['term_occurrences']} after)",
                terms["term_recall"],
                terms["term_recall_ci95"],
                base.get("term_recall"),
                base.get("term_recall_ci95"),
                terms.get("delta_term_recall_ci95"),
            )
        )
        summary["metrics"].append(
            _metric("term insertions", terms["term_insertions"], None, base.get("term_insertions"))
        )
    summary["reference_words"] = after["reference_words"]
    if "before" in models:
        summary.update(_gained_lost([r.split() for r in normalised_refs], models["before"], models["after"]))
    return summary


def _model(texts: tuple[str, ...], ref_words: list[list[str]], source: SetSource, normalise) -> _Model:
    words = [normalise(t).split() for t in texts]
    term_words = source.terms.for_language(source.language).words if source.terms else ()
    counts = (
        term_scores(source.references, texts, source.terms, source.language).hypothesis
        if source.terms
        else None
    )
    return _Model(texts=texts, words=words, alignments=align_all(ref_words, words, term_words), terms=counts)


def _model_row(
    model: _Model, i: int, source: SetSource, name: str, ref_words: list[str], ref_terms: np.ndarray | None
) -> dict:
    alignment = model.alignments[i]
    row = {
        "text": model.texts[i],
        "diff": alignment.tokens,
        "errors": alignment.errors,
        "wer": alignment.errors / len(ref_words) if ref_words else None,
        "flags": hypothesis_flags(
            source.references[i],
            model.texts[i],
            ref_words,
            model.words[i],
            truncated=source.ids[i] in source.truncated.get(name, ()),
        ),
    }
    if ref_terms is not None:
        names, hyp = source.terms.terms, model.terms[i]
        row["hits"] = [names[t] for t in np.flatnonzero(np.minimum(ref_terms[i], hyp))]
        row["misses"] = [names[t] for t in np.flatnonzero(ref_terms[i] > hyp)]
        row["inserted"] = [names[t] for t in np.flatnonzero(hyp > ref_terms[i])]
    return row


def _flag_counts(rows: list[dict], has_before: bool) -> list[list]:
    """[flag, hypotheses before with it (None: no base model), after] for every flag."""
    return [
        [
            flag,
            sum(flag in r["before"]["flags"] for r in rows) if has_before else None,
            sum(flag in r["after"]["flags"] for r in rows),
        ]
        for flag in FLAGS
    ]


def _options(rows: list[dict], has_before: bool) -> dict:
    """Each filter's choices with how many rows each selects."""
    categories = Counter(r["cat"] for r in rows)
    flags = Counter(f"{flag}:{m}" for r in rows for m in MODELS if r.get(m) for flag in r[m]["flags"])
    terms = Counter(t for r in rows for t in r["terms"])
    fields: dict[str, Counter] = {}
    for r in rows:
        for key, value in r["fields"].items():
            fields.setdefault(key, Counter())[value] += 1
    return {
        "categories": [[k, label, categories[k]] for k, label in CATEGORIES[has_before]],
        "flags": [
            [f"{flag}:{m}", f"{flag} ({m})", flags[f"{flag}:{m}"]]
            for m in MODELS
            for flag in FLAGS
            if flags[f"{flag}:{m}"]
        ],
        "terms": [[t, n] for t, n in sorted(terms.items(), key=lambda kv: (-kv[1], kv[0]))],
        "fields": [
            [key, [[v, n] for v, n in sorted(c.items())]]
            for key, c in sorted(fields.items())
            if 1 < len(c) < len(rows) or len(rows) == 1
        ],
    }


def _row(
    i: int, source: SetSource, models: dict[str, _Model], ref_words: list[str], ref_terms, clip: Clip
) -> dict:
    per_model = {m: _model_row(models[m], i, source, m, ref_words, ref_terms) for m in models}
    before, after = per_model.get("before"), per_model["after"]
    terms = {t for m in per_model.values() for key in ("hits", "misses", "inserted") for t in m.get(key, ())}
    texts = [source.ids[i], source.references[i], *(m["text"] for m in per_model.values())]
    return {
        "id": source.ids[i],
        "audio": clip.audio,
        "duration": clip.duration,
        "ref": source.references[i],
        "words": len(ref_words),
        "before": before,
        "after": after,
        "delta": after["wer"] - before["wer"] if before and after["wer"] is not None else None,
        "cat": _category(models["before"].alignments[i] if before else None, models["after"].alignments[i]),
        "fields": clip.fields,
        "terms": sorted(terms),
        "q": "\n".join(texts).lower(),
    }


def _notes(source: SetSource, models: dict[str, _Model]) -> list[str]:
    """What the page cannot show of this set, and why."""
    unknown = [
        f"{m}: {'the first 20 ids only' if m in source.truncated else 'not recorded'}"
        for m in models
        if m not in source.truncation_known
    ]
    if not unknown:
        return []
    return [f"the truncated flag (a hypothesis cut at max_new_tokens) is incomplete; {'; '.join(unknown)}"]


def build_view(source: SetSource, clips: dict[str, Clip]) -> dict:
    """Everything the page shows of one set.

    Returns:
        ``{"source", "name", "role", "language", "before_label", "after_label", "has_before", "rows",
        "summary", "options", "notes"}``; each row ``{"id", "audio", "duration", "ref", "words", "before",
        "after", "delta", "cat", "fields", "terms", "q"}`` where ``before`` / ``after`` are ``{"text",
        "diff", "errors", "wer", "flags"}`` (plus ``hits``, ``misses``, ``inserted`` with a term list) and
        ``delta`` is WER after minus before (None: no base model, or a reference with no words).
    """
    normalise = normalizer_for(source.language)
    normalised_refs = [" ".join(normalise(r).split()) for r in source.references]
    ref_words = [r.split() for r in normalised_refs]
    models = {"after": _model(source.after, ref_words, source, normalise)}
    if source.before is not None:
        models = {"before": _model(source.before, ref_words, source, normalise), **models}
    ref_terms = None
    if source.terms:
        ref_terms = term_scores(source.references, source.references, source.terms, source.language).reference
    missing = Clip(audio=None, duration=None)
    rows = [
        _row(i, source, models, ref_words[i], ref_terms, clips.get(utt_id) or missing)
        for i, utt_id in enumerate(source.ids)
    ]
    summary = _summary(source, normalised_refs, models)
    summary["flags"] = _flag_counts(rows, source.before is not None)
    return {
        "source": source.source,
        "name": source.name,
        "role": source.role,
        "language": source.language,
        "before_label": source.before_label,
        "after_label": source.after_label,
        "has_before": source.before is not None,
        "rows": rows,
        "summary": summary,
        "options": _options(rows, source.before is not None),
        "notes": _notes(source, models),
    }
