"""A run's evaluation sets and the evidence written into ``results.json``.

Sets and their roles:

* ``eval`` (target): the validation manifest; it also chooses the checkpoint.
* ``test`` (target): an optional held-out manifest, never used for any choice.
* one set per ``data.general`` entry (general): forgetting is the WER change on these.
* ``nonspeech``: generated silence and noise clips; every word emitted there is invented.

The base model (the run's ``model``, no strategy) is decoded once on every set; its transcripts
are kept in ``base_transcripts.json`` so a resumed run, or a sweep's other strategies, reuse them.
Per set the evidence holds WER, CER, S/I/D, a bootstrap 95% CI, the base's numbers, the change
(with a paired-bootstrap CI) and the hallucination shares; with ``data.terms``, also term recall and
term insertions (:mod:`asrtune.evaluation.terms`), the base's and the change.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from asrtune.config import RunConfig, absolute_model
from asrtune.data.feature_cache import FeatureCache
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.bootstrap import bootstrap_wer, paired_bootstrap_delta, utterance_counts
from asrtune.evaluation.decode import Evaluation, scoring_language, transcribe_sharded
from asrtune.evaluation.forgetting import Transcripts
from asrtune.evaluation.hallucination import hallucination_stats, nonspeech_stats, write_nonspeech_clips
from asrtune.evaluation.metrics import score
from asrtune.evaluation.terms import TermList, read_terms, term_report
from asrtune.models.load import LoadedModel
from asrtune.runs.load import load_start_model

__all__ = [
    "EvalSet",
    "TARGET",
    "GENERAL",
    "NONSPEECH_SET",
    "build_eval_sets",
    "transcripts_of",
    "decode_sets",
    "base_transcripts",
    "pristine_copy",
    "save_transcripts",
    "load_transcripts",
    "set_report",
    "evidence",
    "write_set_predictions",
    "BASE_TRANSCRIPTS",
    "decoding_key",
]

TARGET, GENERAL, NONSPEECH_SET = "target", "general", "nonspeech"
BASE_TRANSCRIPTS = "base_transcripts.json"


@dataclass(frozen=True, eq=False)
class EvalSet:
    """A named set of utterances with its role (target, general or nonspeech) and features.

    ``terms``: the run's term list (``data.terms``), scored on this set (None: no term scores).
    """

    name: str
    role: str
    dataset: FeatureDataset
    terms: TermList | None = None


def transcripts_of(evaluation: Evaluation, dataset: FeatureDataset, language: str | None) -> Transcripts:
    return Transcripts(
        evaluation.ids, evaluation.references, evaluation.hypotheses, scoring_language(dataset, language)
    )


def build_eval_sets(
    config: RunConfig,
    loaded: LoadedModel,
    nonspeech_dir: Path,
    *,
    eval_set: FeatureDataset | None = None,
    progress: bool = False,
    write_clips: bool = True,
) -> dict[str, EvalSet]:
    """Features for every evaluation set of a run, in report order (eval, test, general..., nonspeech).

    Args:
        config: the run config (``data.eval``, ``data.test``, ``data.general``, language, task).
        loaded: a model whose processor extracts the features.
        nonspeech_dir: where the generated non-speech clips are written.
        eval_set: the eval set when the caller already has it (the recipe does).
        write_clips: write the non-speech clips (False: they are there already, written by the main process).
    """
    cache = (
        FeatureCache.for_extractor(loaded.processor.feature_extractor) if config.data.feature_cache else None
    )
    common = dict(
        processor=loaded.processor,
        multilingual=loaded.multilingual,
        language=config.language,
        task=config.task,
        progress=progress,
        cache=cache,
    )
    terms = read_terms(config.data.terms, config.language) if config.data.terms else None
    sets = {}
    if eval_set is not None or config.data.eval:
        dataset = eval_set
        if dataset is None:
            dataset = FeatureDataset(read_manifest(config.data.eval), desc="features eval", **common)
        sets["eval"] = EvalSet("eval", TARGET, dataset, terms)
    if config.data.test:
        sets["test"] = EvalSet(
            "test", TARGET, FeatureDataset(read_manifest(config.data.test), desc="features test", **common), terms
        )
    for general in config.data.general:
        sets[general.name] = EvalSet(
            general.name,
            GENERAL,
            FeatureDataset(read_manifest(general.manifest), desc=f"features {general.name}", **common),
            terms,
        )
    clips = write_nonspeech_clips(nonspeech_dir, language=config.language, write=write_clips)
    sets["nonspeech"] = EvalSet(
        "nonspeech",
        NONSPEECH_SET,
        FeatureDataset(clips, desc="features nonspeech", **{**common, "cache": None}),
    )
    return sets


def decode_sets(
    loaded: LoadedModel,
    sets: dict[str, EvalSet],
    config: RunConfig,
    *,
    progress: bool = False,
    device: torch.device | None = None,
    processes=None,
) -> dict[str, Transcripts]:
    """Greedy transcripts of every set by one model.

    ``processes`` (an :class:`asrtune.training.distributed.Processes`): each process decodes every
    ``world``-th utterance and all of them get every transcript.
    """
    out = {}
    for name, item in sets.items():
        hypotheses = transcribe_sharded(
            loaded,
            item.dataset,
            processes,
            language=config.language,
            task=config.task,
            batch_size=config.loop.eval_batch_size,
            max_new_tokens=config.loop.max_new_tokens,
            decoding=config.loop.decoding,
            progress=progress,
            device=device,
            desc=f"decode {name}",
            ctc=config.loop.ctc_only,
        )
        utterances = item.dataset.utterances
        out[name] = Transcripts(
            [u.id for u in utterances],
            [u.text for u in utterances],
            hypotheses,
            scoring_language(item.dataset, config.language),
        )
    return out


def pristine_copy(base: LoadedModel, path: Path, given: dict[str, Transcripts] | None) -> LoadedModel | None:
    """A copy of the base model to decode its transcripts with, taken before a strategy changes it.

    None when ``path`` already holds transcripts (a resumed run) or some were given (a sweep): then
    only sets they lack are decoded, by a freshly loaded base. A copy costs memory for a moment but
    is far cheaper than loading the model (and its tokenizer) a second time.
    """
    if path.is_file() or given:
        return None
    return LoadedModel(
        model=copy.deepcopy(base.model), processor=base.processor, source=base.source, base_dir=base.base_dir
    )


def save_transcripts(transcripts: dict[str, Transcripts], path: Path, model: str) -> None:
    path.write_text(
        json.dumps(
            {"model": model, "sets": {k: v.as_dict() for k, v in transcripts.items()}},
            ensure_ascii=False,
            indent=1,
        )
    )


def load_transcripts(path: Path) -> dict[str, Transcripts]:
    return {k: Transcripts.from_dict(v) for k, v in json.loads(path.read_text())["sets"].items()}


def decoding_key(config: RunConfig) -> str:
    """Every setting that changes the base model's transcripts, as a canonical JSON string.

    The base model is decoded with the run's settings (the model, or the run ``init_from`` names,
    ``loop.max_new_tokens``, ``loop.decoding``, no prompt, ``language``, ``task``, fp32, the full 30 s
    input), exactly as :func:`decode_sets` decodes the tuned one; stored transcripts are reused only under
    the same key, so base and tuned are always decoded alike (a sweep's strategies may change
    ``loop.max_new_tokens``). ``loop_guard`` marks greedy transcripts decoded with the repetition guard:
    those stored before it are decoded again.
    """
    decoding = {"num_beams": 1, "loop_guard": True} if config.loop.decoding == "greedy" else {
        "decoding": config.loop.decoding}
    return json.dumps(
        {
            "model": absolute_model(config.model, Path.cwd()),
            "max_new_tokens": config.loop.max_new_tokens,
            "prompt": None,
            "language": config.language,
            "task": config.task,
            **decoding,
            "dtype": "float32",
            "short_input": False,
            **({"init_from": config.init_from} if config.init_from else {}),  # the keys of plain runs stay
            **({"ctc": True} if config.loop.ctc_only else {}),  # an alignment stage decodes with CTC
        },
        sort_keys=True,
    )


def _matches(transcripts: Transcripts | None, item: EvalSet, key: str) -> bool:
    return (
        transcripts is not None
        and transcripts.decoding == key
        and transcripts.ids == tuple(u.id for u in item.dataset.utterances)
        and transcripts.references == tuple(u.text for u in item.dataset.utterances)
    )


def base_transcripts(
    config: RunConfig,
    sets: dict[str, EvalSet],
    path: Path,
    *,
    given: dict[str, Transcripts] | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    base: LoadedModel | None = None,
    processes=None,
) -> dict[str, Transcripts]:
    """The base model's transcripts of every set: from ``path``, from ``given``, or decoded now.

    Only sets with no stored transcripts (same ids and texts, decoded under the same
    :func:`decoding_key`) are decoded, by ``base`` when given,
    else by ``config.model`` loaded afresh (the run's own copy already carries its strategy), used
    and freed. The result is written to ``path`` (by the main process only, with ``processes``).
    """
    known = load_transcripts(path) if path.is_file() else {}
    known = {**(given or {}), **known}
    key = decoding_key(config)
    found = {name: known[name] for name, item in sets.items() if _matches(known.get(name), item, key)}
    missing = {name: item for name, item in sets.items() if name not in found}
    if missing:
        # the model the run starts from: init_from names another run's kept weights
        model = base or load_start_model(config)
        if device is not None:
            model.model.to(device)
        found.update(decode_sets(model, missing, config, progress=progress, device=device, processes=processes))
        found.update({name: dataclasses.replace(found[name], decoding=key) for name in missing})
        del model
        gc.collect()
    ordered = {name: found[name] for name in sets}
    if processes is None or processes.is_main:
        save_transcripts(ordered, path, config.model)
    return ordered


def _scores(transcripts: Transcripts, resamples: int) -> tuple[dict, object]:
    refs, hyps = list(transcripts.references), list(transcripts.hypotheses)
    scores = score(refs, hyps, transcripts.language)
    counts = utterance_counts(refs, hyps, transcripts.language)
    low, high = bootstrap_wer(counts, resamples=resamples)
    summary = {
        "wer": scores.wer,
        "cer": scores.cer,
        "raw_wer": scores.raw_wer,
        "substitutions": scores.substitutions,
        "insertions": scores.insertions,
        "deletions": scores.deletions,
        "reference_words": scores.reference_words,
        "n": scores.n,
        "wer_ci95": [low, high],
        "hallucination": hallucination_stats(refs, hyps, transcripts.language).as_dict(),
    }
    return summary, counts


def _term_scores(report: dict, terms: TermList, tuned: Transcripts, base: Transcripts | None,
                 resamples: int) -> None:
    """Add term recall and insertions (the tuned model's, the base's, the change) to a set's report."""
    found = term_report(list(tuned.references), list(tuned.hypotheses), terms, tuned.language,
                        base_hypotheses=list(base.hypotheses) if base is not None else None, resamples=resamples)
    report["term_recall"] = found["term_recall"]
    report["term_insertions"] = found["term_insertions"]
    if "base" in found:
        report["base"]["term_recall"] = found["base"]["term_recall"]
        report["base"]["term_insertions"] = found["base"]["term_insertions"]
        report["delta_term_recall"] = found["delta_term_recall"]
    report["terms"] = found


def set_report(role: str, tuned: Transcripts, base: Transcripts | None, *, resamples: int = 1000,
               terms: TermList | None = None) -> dict:
    """Scores of one set, the base's, and the change (tuned - base, with a paired bootstrap CI).

    With ``terms``: also ``term_recall``, ``term_insertions`` (and the base's, ``delta_term_recall``)
    and the whole term report under ``terms`` (see :func:`asrtune.evaluation.terms.term_report`).
    """
    if role == NONSPEECH_SET:
        report = {
            "role": role,
            **nonspeech_stats(list(tuned.ids), list(tuned.hypotheses), tuned.language).as_dict(),
        }
        if base is not None:
            before = nonspeech_stats(list(base.ids), list(base.hypotheses), base.language)
            report["base"] = before.as_dict()
            report["delta_words_per_clip"] = report["words_per_clip"] - before.words_per_clip
        return report
    summary, counts = _scores(tuned, resamples)
    report = {"role": role, **summary}
    if base is not None:
        base = base.subset(tuned.ids)
        base_summary, base_counts = _scores(base, resamples)
        report["base"] = base_summary
        report["delta_wer"] = summary["wer"] - base_summary["wer"]
        report["delta_wer_ci95"] = list(paired_bootstrap_delta(base_counts, counts, resamples=resamples))
        report["relative_wer_change"] = (
            report["delta_wer"] / base_summary["wer"] if base_summary["wer"] else None
        )
        report["delta_cer"] = summary["cer"] - base_summary["cer"]
    if terms is not None:
        _term_scores(report, terms, tuned, base, resamples)
    return report


def evidence(
    sets: dict[str, EvalSet],
    tuned: dict[str, Transcripts],
    base: dict[str, Transcripts] | None,
    *,
    resamples: int = 1000,
) -> dict:
    """Everything ``results.json`` reports beyond the eval WER: per-set scores, forgetting, hallucination.

    Returns:
        ``{"main_set": "test" (or the first target set), "sets": {name: set_report},
        "forgetting": {"per_set", "max", "mean"} | None, "hallucination": the main set's shares,
        "terms": the main set's term recall and insertions (and the base's) | None}``;
        words on non-speech are ``sets["nonspeech"]``.
    """
    reports = {
        name: set_report(item.role, tuned[name], (base or {}).get(name), resamples=resamples, terms=item.terms)
        for name, item in sets.items()
        if name in tuned
    }
    general = {
        name: r["delta_wer"] for name, r in reports.items() if r["role"] == GENERAL and "delta_wer" in r
    }
    targets = [name for name, r in reports.items() if r["role"] == TARGET]
    main = "test" if "test" in reports else (targets[0] if targets else None)
    hallucination = None
    if main:
        hallucination = {
            "set": main,
            **{k: reports[main]["hallucination"][k] for k in ("rate", "loop_rate", "long_rate")},
        }
        if "base" in reports[main]:
            hallucination["base_rate"] = reports[main]["base"]["hallucination"]["rate"]
    return {
        "main_set": main,
        "sets": reports,
        "forgetting": {
            "per_set": general,
            "max": max(general.values()),
            "mean": sum(general.values()) / len(general),
        }
        if general
        else None,
        "hallucination": hallucination,
        "terms": _main_terms(main, reports[main]) if main and "term_recall" in reports[main] else None,
    }


def _main_terms(main: str, report: dict) -> dict:
    base = report.get("base", {})
    return {"set": main, "term_recall": report["term_recall"], "term_insertions": report["term_insertions"],
            "base_term_recall": base.get("term_recall"), "base_term_insertions": base.get("term_insertions"),
            "delta_term_recall": report.get("delta_term_recall")}


def write_set_predictions(
    folder: Path, tuned: dict[str, Transcripts], base: dict[str, Transcripts] | None
) -> None:
    """``folder/<set>.jsonl``: id, reference, the base model's hypothesis and the tuned one's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, transcripts in tuned.items():
        before = (base or {}).get(name)
        before_by_id = dict(zip(before.ids, before.hypotheses, strict=True)) if before else {}
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for utt_id, ref, hyp in zip(
                transcripts.ids, transcripts.references, transcripts.hypotheses, strict=True
            ):
                row = {"id": utt_id, "reference": ref, "base": before_by_id.get(utt_id), "hypothesis": hyp}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
