"""``asrtune align AUDIO TRANSCRIPT --model MODEL [--json] [--language L]``: every word's time in a recording."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("align")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "align", help="forced alignment: the time of every word of a known transcript in a recording",
        description="The transcript is fed to the model window by window (30 s), teacher-forced, and every word "
                    "is timed from the cross-attention of the model's alignment heads (DTW), its edges moved onto "
                    "pauses; sentences the audio does not contain are found and marked (heard: false).")
    parser.add_argument("audio", type=Path, help="the recording (anything libsndfile reads; any length)")
    parser.add_argument("transcript", type=Path, help="a UTF-8 text file: what the recording says")
    parser.add_argument("--model", default="bundled:tiny.en",
                        help="Whisper model: run folder, bundled:NAME, HF folder or id, CTranslate2 folder")
    parser.add_argument("--language", default=None, help="the transcript's language (multilingual models)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: duration, words [{word, start, end, score, heard}], not_heard")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.api import align
    from asrtune.errors import AsrtuneError
    from asrtune.report import print_table

    if not args.transcript.is_file():
        raise AsrtuneError(f"transcript not found: {args.transcript}")
    try:
        text = args.transcript.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise AsrtuneError(f"{args.transcript} is not UTF-8 text: {error}") from error
    started = time.perf_counter()
    alignment = align(args.model, args.audio, text, language=args.language, device=args.device,
                      progress=not args.json)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps(alignment.as_dict(), ensure_ascii=False))
    else:
        for word in alignment.words:
            print(f"{word.start:8.2f} {word.end:8.2f}  {word.text}{'' if word.heard else '  (not heard)'}")
    heard = sum(word.heard for word in alignment.words)
    print_table(["align", ""], [
        ["model", args.model],
        ["audio", f"{args.audio} ({alignment.duration:.1f} s, {alignment.windows} windows)"],
        ["words", f"{heard} of {len(alignment.words)} heard"],
        ["not in the audio", "; ".join(alignment.unheard_units) or "none"],
        ["time", f"{seconds:.1f} s"],
    ], file=sys.stderr)
    return 0
