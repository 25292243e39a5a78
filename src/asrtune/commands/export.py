"""``asrtune export RUN_OR_MODEL --to hf|ct2 --out DIR [--quantization Q]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asrtune.commands import COMMANDS

@COMMANDS.register("export")
def add(subparsers: argparse._SubParsersAction) -> None:
    from asrtune.export.quantization import DEFAULT_QUANTIZATION, QUANTIZATIONS

    parser = subparsers.add_parser("export", help="merged HF model or CTranslate2 (faster-whisper) folder")
    parser.add_argument("model", help="run folder, bundled:NAME, HF folder or id, or CTranslate2 folder")
    parser.add_argument("--to", required=True, choices=("hf", "ct2"),
                        help="hf: merged transformers folder; ct2: CTranslate2 / faster-whisper folder")
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None,
                        help=f"ct2 weight type (default {DEFAULT_QUANTIZATION}, as faster-whisper's "
                             "published models; int8 is what faster-whisper runs on a CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier asrtune export at --out")
    parser.add_argument("--no-check", action="store_true",
                        help="ct2: skip decoding a fixed input with both runtimes to compare their tokens")
    parser.set_defaults(func=run)


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def run(args: argparse.Namespace) -> int:
    from asrtune.errors import AsrtuneError
    from asrtune.export.ct2 import export_ct2
    from asrtune.export.merge import export_hf, load_merged
    from asrtune.export.quantization import DEFAULT_QUANTIZATION
    from asrtune.report import print_table

    if args.to == "hf" and args.quantization:
        raise AsrtuneError("--quantization applies to --to ct2 only (an hf export keeps float32 weights)")
    started = time.perf_counter()
    merged = load_merged(args.model)
    rows = [["source", args.model], ["strategy merged", merged.strategy or "none"]]
    if args.to == "hf":
        export_hf(merged, args.out, overwrite=args.overwrite)
        rows.append(["load with", f"WhisperForConditionalGeneration.from_pretrained({str(args.out)!r})"])
    else:
        quantization = args.quantization or DEFAULT_QUANTIZATION
        check = export_ct2(merged, args.out, quantization=quantization, overwrite=args.overwrite,
                           check=not args.no_check)
        rows.append(["quantization", quantization])
        if check is not None:
            rows.append(["HF vs ctranslate2 greedy tokens", check.describe()])
        rows.append(["load with", f"faster_whisper.WhisperModel({str(args.out)!r})"])
    rows += [["output", f"{args.out} ({_size_mb(args.out):.1f} MB)"],
             ["seconds", f"{time.perf_counter() - started:.1f}"]]
    print_table(["export", args.to], rows)
    return 0
