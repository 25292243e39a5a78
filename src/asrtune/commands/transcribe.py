"""``asrtune transcribe MODEL AUDIO... [--format txt|json|srt|vtt] [--prompt TERMS] [--bias FILE [--bias-weight W]]
[--num-beams N] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asrtune.commands import COMMANDS
from asrtune.commands.evaluate import BIAS_WEIGHT, add_beams_argument, add_bias_arguments


@COMMANDS.register("transcribe")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transcribe", help="long-form transcription with timestamps (txt, json, srt, vtt)",
        description="Audio of any length is decoded window by window (30 s), each window conditioned on the "
                    "previous one's text, as openai/whisper and faster-whisper do; --batch-size decodes "
                    "several files side by side.")
    parser.add_argument("model", help="run folder, bundled:NAME, HF folder or id, or CTranslate2 folder")
    parser.add_argument("audio", nargs="+", type=Path, help="audio files (anything libsndfile reads)")
    parser.add_argument("--language", default=None,
                        help="language code (multilingual models; default: detect)")
    parser.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    parser.add_argument("--batch-size", type=int, default=4, help="files decoded side by side")
    parser.add_argument("--format", default="txt", choices=("txt", "json", "srt", "vtt"))
    parser.add_argument("--prompt", default=None,
                        help="domain vocabulary or preceding text, fed through Whisper's prompt for every "
                             "window")
    add_bias_arguments(parser)
    add_beams_argument(parser)
    parser.add_argument("--no-condition-on-previous-text", action="store_true",
                        help="decode each window without the previous window's text")
    parser.add_argument("--no-fallback", action="store_true",
                        help="greedy only: no re-decoding at higher temperatures when a window looks "
                             "repetitive or unlikely (faster, deterministic)")
    parser.add_argument("--word-timestamps", action="store_true",
                        help="time every word (forced alignment of the transcript on the alignment heads' "
                             "cross-attention): words in json, a cue per word in srt, inline times in vtt")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest text per 30 s window, in tokens (default: what the decoder allows)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="write NAME.FORMAT per file here (default: print to stdout)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(func=run)


def _output_names(paths: list[Path], fmt: str) -> list[str]:
    """``stem.fmt`` per file; a stem seen twice gets ``-2``, ``-3``… so no output overwrites another."""
    names, seen = [], {}
    for path in paths:
        count = seen[path.stem] = seen.get(path.stem, 0) + 1
        names.append(f"{path.stem}{'' if count == 1 else f'-{count}'}.{fmt}")
    return names


def _bias_text(args: argparse.Namespace) -> str:
    if args.bias is None:
        return "none"
    weight = BIAS_WEIGHT if args.bias_weight is None else args.bias_weight
    start = weight if args.bias_start_weight is None else args.bias_start_weight
    return f"{args.bias}, weight {weight:g} (start {start:g})"


def run(args: argparse.Namespace) -> int:
    from asrtune.api import transcribe_audio
    from asrtune.inference.formats import render
    from asrtune.inference.longform import timestamp_issues
    from asrtune.report import print_table

    names = _output_names(args.audio, args.format)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)

    def write(index: int, transcript) -> None:  # files are written as soon as their batch is decoded
        (args.output_dir / names[index]).write_text(render(transcript, args.format), encoding="utf-8")

    transcripts, stats = transcribe_audio(
        args.model, args.audio, language=args.language, task=args.task, batch_size=args.batch_size,
        prompt=args.prompt, condition_on_previous_text=not args.no_condition_on_previous_text,
        fallback=not args.no_fallback, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        bias=args.bias, bias_weight=args.bias_weight, bias_start_weight=args.bias_start_weight,
        device=args.device, on_file=write if args.output_dir else None, word_timestamps=args.word_timestamps)
    if not args.output_dir:
        for transcript in transcripts:  # in the order given
            if args.format == "json":
                print(json.dumps(transcript.as_dict(), ensure_ascii=False))  # one object per line (JSONL)
                continue
            if len(transcripts) > 1:
                print(f"==> {transcript.audio} <==")
            sys.stdout.write(render(transcript, args.format))
    window = stats.window_seconds
    for transcript in transcripts:
        issues = timestamp_issues(transcript, window=window)
        if issues:
            print(f"asrtune: warning: {transcript.audio}: {issues[0]}"
                  f"{f' (and {len(issues) - 1} more)' if len(issues) > 1 else ''}", file=sys.stderr)
    print_table(["transcribe", ""], [
        ["model", args.model],
        ["files", str(stats.files)],
        ["audio", f"{stats.audio_seconds:.1f} s"],
        ["decoding", (f"sequential {window} s windows, previous text "
                      f"{'off' if args.no_condition_on_previous_text else 'on'}, "
                      f"{'greedy' if args.num_beams == 1 else f'{args.num_beams} beams'}"
                      f"{'' if args.no_fallback else ', temperature fallback'}, "
                      f"{args.batch_size} file(s) per batch, {stats.device}")],
        ["prompt", f"{len(args.prompt.split())} words" if args.prompt else "none"],
        ["words", "timed: forced alignment (alignment heads, DTW)" if args.word_timestamps else "not timed"],
        ["biasing", _bias_text(args)],
        ["decode time", f"{stats.decode_seconds:.1f} s"],
        ["RTF", f"{stats.rtf:.3f}"],
        ["output", str(args.output_dir) if args.output_dir else "stdout"],
    ], file=sys.stderr)
    return 0
