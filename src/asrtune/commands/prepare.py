"""``asrtune prepare SRC --out OUT.jsonl [--report REPORT.json] [--format auto|...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asrtune.commands import COMMANDS


def _format_names() -> list[str]:
    from asrtune.data.formats import FORMATS

    return ["auto", *FORMATS.names()]


def _rules_epilog() -> str:
    from asrtune.data.clean import rules_in_order

    lines = [f"  {rule.name:<17} {rule.explanation}" for rule in rules_in_order()]
    return "drop reasons, checked in this order (the first that fails is recorded):\n" + "\n".join(lines)


@COMMANDS.register("prepare")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="read a corpus, drop bad rows with reasons, write a clean manifest and a report",
        description="Read a corpus (asrtune JSONL, NeMo manifest, Common Voice TSV, audiofolder, Kaldi "
        "directory, or a datasets folder from save_to_disk), check every row, write the kept rows as an "
        "asrtune manifest and every dropped row, with its reason, to the report. Exits 1 only when no row "
        "is kept.",
        epilog=_rules_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", type=Path, help="the corpus: a manifest or TSV file, or a folder")
    parser.add_argument("--out", required=True, type=Path, help="manifest of kept rows (JSONL)")
    parser.add_argument(
        "--report", type=Path, default=None, help="report JSON (default: OUT's name with .report.json)"
    )
    parser.add_argument(
        "--format", default="auto", choices=_format_names(), help="corpus format (default: detect)"
    )
    parser.add_argument(
        "--split", default=None, help="split to read (Common Voice folder, datasets DatasetDict)"
    )
    parser.add_argument(
        "--model",
        default="bundled:tiny.en",
        help="model whose tokenizer bounds transcript length; the label check runs it",
    )
    parser.add_argument("--language", default=None, help="language of rows that name none")
    parser.add_argument("--min-duration", type=float, default=0.2, help="drop shorter pieces (seconds)")
    parser.add_argument(
        "--max-duration",
        type=float,
        default=30.0,
        help="split (where timing is known) or drop longer rows (seconds; Whisper: 30)",
    )
    parser.add_argument(
        "--min-cps", type=float, default=1.0, help="lowest plausible letters+digits per second"
    )
    parser.add_argument(
        "--max-cps", type=float, default=25.0, help="highest plausible letters+digits per second"
    )
    parser.add_argument(
        "--charset",
        action="store_true",
        help="drop transcripts with characters outside their language's script",
    )
    parser.add_argument(
        "--normalize",
        default="",
        metavar="STEPS",
        help="text normalisation before the checks, comma-separated: nfc, lower, punct, spaces",
    )
    parser.add_argument(
        "--label-check",
        action="store_true",
        help="transcribe kept rows with --model and flag those whose CER is above --max-cer (report only)",
    )
    parser.add_argument("--max-cer", type=float, default=0.5, help="label check threshold")
    parser.add_argument(
        "--align",
        default=None,
        metavar="MODEL",
        help="force-align rows longer than --max-duration that have no timing (a long recording and its plain "
        "transcript) with this Whisper model, and cut them into pieces at word boundaries, at pauses where "
        "possible; text the audio does not contain is dropped (reason alignment)",
    )
    parser.add_argument(
        "--min-alignment-score",
        type=float,
        default=0.05,
        help="with --align: drop pieces whose words' mean token probability (geometric) is below this",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.data.clean import CleanSettings
    from asrtune.data.prepare import PrepareSettings, prepare, summary_rows
    from asrtune.data.textnorm import parse_steps
    from asrtune.report import print_table

    settings = PrepareSettings(
        format=args.format,
        split=args.split,
        model=args.model,
        normalize=parse_steps(args.normalize),
        label_check=args.label_check,
        max_cer=args.max_cer,
        progress=not args.no_progress,
        clean=CleanSettings(
            min_seconds=args.min_duration,
            max_seconds=args.max_duration,
            min_chars_per_second=args.min_cps,
            max_chars_per_second=args.max_cps,
            charset=args.charset,
            language=args.language,
            align=bool(args.align),
            min_alignment_score=args.min_alignment_score,
        ),
    )
    report_path = args.report or args.out.with_name(args.out.stem + ".report.json")
    report = prepare(args.src, args.out, report_path, settings,
                     check_labels=_label_check(args) if args.label_check else None,
                     aligner=_aligner(args) if args.align else None)
    print_table(["", "rows", "duration", "what"], summary_rows(report))
    segmentation = report["segmentation"]
    if segmentation["cut_pieces"] or segmentation["split_rows"]:
        print(
            f"long audio: {segmentation['cut_pieces']} rows cut from their files by segment times, "
            f"{segmentation['split_rows']} rows split at word times into "
            f"{segmentation['split_pieces']} pieces"
        )
    if report["normalization"]["changed"]:
        print(
            f"text normalised ({', '.join(report['normalization']['steps'])}): "
            f"{report['normalization']['changed']} transcripts changed"
        )
    aligned = report.get("alignment")
    if aligned:
        print(
            f"forced alignment ({args.align}): {aligned['rows_aligned']} rows, {aligned['words_kept']} of "
            f"{aligned['words']} words kept ({aligned['words_not_heard']} not in the audio), "
            f"{aligned['seconds_kept']:.1f} of {aligned['seconds_aligned']:.1f} s in pieces; "
            f"{aligned['pieces_dropped']} pieces dropped (reason alignment)"
        )
    check = report.get("label_check")
    if check:
        print(
            f"label check ({check['model']}): {check['flagged_count']} of {check['checked']} kept rows have "
            f"CER > {check['max_cer']} (listed in the report; not dropped)"
        )
    print(f"report: {report_path}")
    if not report["kept"]:
        print(
            f"asrtune: error: no row of {args.src} was kept; see the reasons in {report_path}",
            file=sys.stderr,
        )
        return 1
    print(f"manifest: {args.out} ({report['kept']} rows)")
    return 0


def _label_check(args: argparse.Namespace):
    """The label check ``prepare`` runs on the kept rows: ``--model`` loaded only when it runs."""
    from asrtune.evaluation.labelcheck import label_check
    from asrtune.runs.load import load_model

    def check(kept):
        return label_check(kept, load_model(args.model), max_cer=args.max_cer, language=args.language,
                           progress=not args.no_progress)

    return check


def _aligner(args: argparse.Namespace):
    """Forced alignment for ``prepare --align``: the model loaded once, on the first row that needs it."""
    from asrtune.inference.align import AlignOptions, row_aligner
    from asrtune.inference.longform import prepare_for_inference
    from asrtune.runs.load import load_model

    aligners = []

    def align(row, samples):
        if not aligners:
            loaded = prepare_for_inference(load_model(args.align))
            aligners.append(row_aligner(loaded, AlignOptions(language=args.language)))
        return aligners[0](row, samples)

    return align
