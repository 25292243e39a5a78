"""``asrtune synth TEXTFILE [--voice V | --voices V1,V2,...] --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("synth")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="speak a text file with espeak-ng into a manifest")
    parser.add_argument("textfile", type=Path, help="one utterance per line")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice (espeak-ng --voices)")
    parser.add_argument("--voices", default=None,
                        help="comma-separated espeak-ng voices and variants (en-us,en-gb+f2,en-029+m5): the lines "
                             "are spread over them in turn, each row recording its voice (replaces --voice)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (audio/ + manifest.jsonl)")
    parser.add_argument("--language", default=None, help="language code written into the manifest")
    parser.add_argument("--prefix", default="utt", help="utterance id prefix")
    parser.add_argument("--seed", type=int, default=0, help="seed for per-line rate and pitch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.data.synth import SynthSettings, parse_voices, read_text_lines, synthesise_lines

    voices = parse_voices(args.voices) if args.voices else ()
    settings = SynthSettings(voice=args.voice, voices=voices, seed=args.seed)
    manifest = synthesise_lines(read_text_lines(args.textfile), args.out, settings=settings,
                                prefix=args.prefix, language=args.language)
    print(manifest)
    return 0
