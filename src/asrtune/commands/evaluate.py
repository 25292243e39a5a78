"""``asrtune evaluate MODEL --data MANIFEST [--decoding greedy|deploy] [--terms FILE] [--bias FILE [--bias-weight W]]
[--num-beams N] [--timestamps] [--json] [--save FILE.json]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asrtune.commands import COMMANDS
from asrtune.decodings import DECODINGS

BIAS_WEIGHT = 3.0  # asrtune.evaluation.biasing.DEFAULT_BIAS_WEIGHT, without importing torch to build the parser


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
    parser.add_argument("--ctc", action="store_true",
                        help="decode greedily with the CTC head (LLM-based models aligned with CTC: no LLM run)")
    parser.add_argument("--terms", default=None,
                        help="term list (one term or phrase a line; packaged:medical_terms_en): also score "
                             "term recall and term insertions")
    parser.add_argument("--decoding", choices=DECODINGS, default="greedy",
                        help="greedy (the default; --num-beams N for beam search; loops stopped by the repetition "
                             "guard) or deploy: faster-whisper's transcribe defaults (5 beams, temperature fallback "
                             "0.0-1.0, compression ratio 2.4, log-prob -1, no-speech 0.6), the WER deployment scores")
    add_bias_arguments(parser)
    add_beams_argument(parser)
    parser.add_argument("--timestamps", action="store_true",
                        help="also transcribe the rows with segments long-form, as transcribe does, and report the "
                             "segment boundary error against their times (a run folder: beside its base model's)")
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


def run(args: argparse.Namespace) -> int:
    from asrtune.api import evaluate
    from asrtune.report import print_table

    record = evaluate(args.model, args.data, language=args.language, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, short_input=args.short_input, terms=args.terms,
                      bias=args.bias, bias_weight=args.bias_weight, bias_start_weight=args.bias_start_weight,
                      num_beams=args.num_beams, decoding=args.decoding, predictions=args.predictions,
                      timestamps=args.timestamps, ctc=args.ctc)
    predictions = record.pop("predictions")  # in the files --predictions and --save name, not in the record
    rows = [
        ["WER (normalised)", f"{record['wer']:.4f}"], ["CER (normalised)", f"{record['cer']:.4f}"],
        ["WER (raw)", f"{record['raw_wer']:.4f}"],
        ["subs / dels / ins", f"{record['substitutions']} / {record['deletions']} / {record['insertions']}"],
        ["utterances", str(record["n"])],
        ["decoding", "deploy (faster-whisper's defaults)" if args.decoding == "deploy" else
         f"greedy, {args.num_beams} beam{'s' if args.num_beams > 1 else ''}"],
        ["looped / hit max_new_tokens", f"{record['loops']} / {record['hit_max_new_tokens']}"],
    ]
    if args.decoding == "deploy":
        rows.append(["temperature fallbacks / no speech",
                     f"{record['temperature_fallbacks']} / {record['no_speech']}"])
    if "bias" in record:
        bias = record["bias"]
        rows.append(["biasing", f"{args.bias}, weight {bias['weight']:g} (start {bias['start_weight']:g}), "
                                f"{record.pop('bias_sequences')} token sequences"])
        rows.append(["decoded again without the bias", str(record["bias_fallbacks"])])
    if "terms" in record:
        rows += term_rows(record["terms"])
    if "timestamps" in record:
        rows += timestamp_rows(record["timestamps"])
    print_table(["metric", "value"], rows, file=sys.stderr if args.json else sys.stdout)
    if args.save:
        from asrtune.explore.sources import save_evaluation

        save_evaluation(args.save, record, predictions, data=args.data, terms=args.terms)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    return 0


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


def _seconds(summary: dict) -> str:
    low, high = summary["median_ci95"]
    return f"median {summary['median']:.3f} s [{low:.3f}, {high:.3f}], mean {summary['mean']:.3f} s"


def timestamp_rows(quality: dict) -> list[list[str]]:
    """Table rows of the timestamp report: boundary errors (this model, its base, the paired change)."""
    rows = [["segment boundaries", f"{quality['segments']} in {quality['rows']} rows"],
            ["boundary error", _seconds(quality["boundary_error"])],
            ["long-form WER", f"{quality['long_form_wer']:.4f}"]]
    if "base" in quality:
        change = quality["median_change"]
        low, high = change["median_delta_ci95"]
        rows += [["boundary error, base", _seconds(quality["base"]["boundary_error"])],
                 ["median change vs base", f"{change['median_delta']:+.3f} s [{low:+.3f}, {high:+.3f}]"]]
    return rows
