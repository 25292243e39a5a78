"""``asrtune evaluate MODEL --data MANIFEST [--terms FILE] [--bias FILE [--bias-weight W]] [--num-beams N]
[--json] [--save FILE.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asrtune.commands import COMMANDS

BIAS_WEIGHT = 2.0  # asrtune.evaluation.biasing.DEFAULT_BIAS_WEIGHT, without importing torch to build the parser


@COMMANDS.register("evaluate")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="WER/CER of a model or run on a manifest")
    parser.add_argument("model", help="bundled:NAME, HF id or folder, CTranslate2 folder, or run folder")
    parser.add_argument("--data", required=True, type=Path, help="manifest JSONL")
    parser.add_argument("--language", default=None, help="language for rows without one")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest hypothesis, in tokens")
    parser.add_argument("--short-input", action="store_true",
                        help="feed the encoder each batch's longest utterance instead of 30 s (faster; "
                             "costs accuracy on models trained on 30 s windows: see README)")
    parser.add_argument("--predictions", type=Path, help="write per-utterance hypotheses here (JSONL)")
    parser.add_argument("--terms", default=None,
                        help="term list (one term or phrase a line; packaged:medical_terms_en): also score "
                             "term recall and term insertions")
    add_bias_arguments(parser)
    add_beams_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--save", type=Path, default=None, metavar="FILE.json",
                        help="write the scores and every utterance's reference and hypothesis (asrtune explore "
                             "reads it: two saves of one manifest show before and after)")
    parser.set_defaults(func=run)


def add_bias_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bias FILE`` and ``--bias-weight W`` (evaluate and transcribe)."""
    parser.add_argument("--bias", default=None,
                        help="term list to bias decoding towards (one term or phrase a line; "
                             "packaged:medical_terms_en): a bonus for tokens that start or continue a term")
    parser.add_argument("--bias-weight", type=float, default=None,
                        help=f"the bonus for continuing a term, in log-probability (nats) per token "
                             f"(default {BIAS_WEIGHT:g}; 0: no change)")
    parser.add_argument("--bias-start-weight", type=float, default=None,
                        help="the bonus for a token that starts a term (default: --bias-weight); starting a term "
                             "needs the audio's support, continuing one is what the list knows")


def add_beams_argument(parser: argparse.ArgumentParser) -> None:
    """``--num-beams N`` (evaluate and transcribe)."""
    parser.add_argument("--num-beams", type=_positive_int, default=1,
                        help="beams per utterance (1: greedy); with --bias, beams that start a term and then "
                             "leave it fall back instead of being forced through it")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def bias_terms_from_args(args: argparse.Namespace):
    """The term list ``--bias`` names (read now, so a bad list fails before any model loads), or None.

    Raises:
        AsrtuneError: ``--bias-weight`` without ``--bias``, a missing or empty list.
    """
    from asrtune.errors import AsrtuneError
    from asrtune.evaluation.terms import read_terms

    if args.bias is None:
        if args.bias_weight is not None or args.bias_start_weight is not None:
            raise AsrtuneError("--bias-weight and --bias-start-weight need --bias FILE (the terms to bias towards)")
        return None
    return read_terms(args.bias)


def bias_from_args(args: argparse.Namespace, tokenizer, terms):
    """The ``LogitsProcessorList`` for ``--bias``/``--bias-weight`` (None without ``--bias``)."""
    from asrtune.evaluation.biasing import bias_processor

    if terms is None:
        return None
    return bias_processor(tokenizer, terms, BIAS_WEIGHT if args.bias_weight is None else args.bias_weight,
                          start_weight=args.bias_start_weight)


def run(args: argparse.Namespace) -> int:
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from asrtune.evaluation.decode import evaluate_dataset, write_predictions
    from asrtune.evaluation.terms import read_terms, term_report
    from asrtune.models.load import load_model
    from asrtune.report import print_table

    terms = read_terms(args.terms) if args.terms else None  # a bad list fails before any decoding
    bias_terms = bias_terms_from_args(args)
    loaded = load_model(args.model)
    bias = bias_from_args(args, loaded.processor.tokenizer, bias_terms)
    rows = read_manifest(args.data)
    dataset = FeatureDataset(rows, loaded.processor, multilingual=loaded.multilingual, language=args.language)
    scoring_language = _scoring_language(dataset, args.language)
    evaluation = evaluate_dataset(loaded, dataset, language=args.language, batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens, short_input=args.short_input,
                                  logits_processor=bias, num_beams=args.num_beams)
    if args.predictions:
        write_predictions(evaluation, args.predictions)
    s = evaluation.scores
    rows = [
        ["WER (normalised)", f"{s.wer:.4f}"], ["CER (normalised)", f"{s.cer:.4f}"],
        ["WER (raw)", f"{s.raw_wer:.4f}"], ["subs / dels / ins", f"{s.substitutions} / {s.deletions} / {s.insertions}"],
        ["utterances", str(s.n)], ["beams", str(args.num_beams)],
    ]
    record = {"model": args.model, "data": str(args.data), "num_beams": args.num_beams, **s.as_dict()}
    if bias is not None:
        processor = bias[0]
        rows.append(["biasing", f"{args.bias}, weight {processor.weight:g} (start {processor.start_weight:g}), "
                                f"{processor.trie.sequences} token sequences"])
        record["bias"] = {"terms": args.bias, "weight": processor.weight, "start_weight": processor.start_weight}
    if terms is not None:
        found = term_report(evaluation.references, evaluation.hypotheses, terms, scoring_language)
        rows += term_rows(found)
        record.update(term_recall=found["term_recall"], term_insertions=found["term_insertions"], terms=found)
    print_table(["metric", "value"], rows, file=sys.stderr if args.json else sys.stdout)
    if args.save:
        save_evaluation(args.save, record, evaluation, data=args.data, scoring_language=scoring_language,
                        terms=args.terms)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    return 0


def save_evaluation(path: Path, record: dict, evaluation, *, data: Path, scoring_language: str | None,
                    terms: str | None) -> None:
    """``--save``: the record, the manifest (absolute), and each utterance's id, reference, hypothesis and
    whether it stopped at ``max_new_tokens`` (format :data:`asrtune.explore.sources.SAVED_FORMAT`).

    Raises:
        AsrtuneError: the file cannot be written.
    """
    from asrtune.errors import AsrtuneError
    from asrtune.explore.sources import SAVED_FORMAT

    capped = set(evaluation.capped_ids)
    saved = {"format": SAVED_FORMAT, "version": 1, **record, "data": str(Path(data).resolve()),
             "scoring_language": scoring_language, "term_list": terms,
             "max_new_tokens": evaluation.max_new_tokens,
             "utterances": [{"id": i, "reference": r, "hypothesis": h, "truncated": i in capped}
                            for i, r, h in zip(evaluation.ids, evaluation.references, evaluation.hypotheses,
                                               strict=True)]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, ensure_ascii=False, indent=1), encoding="utf-8")
    except OSError as error:
        raise AsrtuneError(f"cannot write {path}: {error.strerror or error}") from error


def _scoring_language(dataset, language: str | None) -> str | None:
    from asrtune.languages import canonical_language

    languages = {canonical_language(u.language or language) for u in dataset.utterances}
    return languages.pop() if len(languages) == 1 else "multi"


def term_rows(found: dict) -> list[list[str]]:
    """Table rows of a term report: recall (hits / occurrences, 95% CI), insertions, the most missed."""
    recall = found["term_recall"]
    ci = found["term_recall_ci95"]
    shown = "-" if recall is None else f"{recall:.4f} ({found['term_hits']} / {found['term_occurrences']})"
    if ci:
        shown += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    missed = ", ".join(f"{m['term']} ({m['missed']})" for m in found["top_missed"][:5]) or "none"
    return [["term recall", shown], ["term insertions", str(found["term_insertions"])],
            ["most missed terms", missed]]
