"""``asrtune synth TEXTFILE [--voice V | --voices V1,V2,...] --out DIR``, or
``asrtune synth --terms FILE [--per-term K] [--templates FILE] ... --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("synth")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="speak a text file with espeak-ng into a manifest")
    parser.add_argument("textfile", type=Path, nargs="?", default=None,
                        help="one utterance per line (or --terms instead)")
    parser.add_argument("--terms", default=None,
                        help="instead of TEXTFILE: a term list (one term or phrase a line; "
                             "packaged:medical_terms_en) put into sentence templates, for text-only domain data")
    parser.add_argument("--per-term", type=int, default=3, help="with --terms: sentences per term")
    parser.add_argument("--templates", default="packaged:medical_templates_en",
                        help="with --terms: sentence templates, one a line, each with one {term} slot")
    parser.add_argument("--voice", default="en-us", help="espeak-ng voice (espeak-ng --voices)")
    parser.add_argument("--voices", default=None,
                        help="comma-separated espeak-ng voices and variants (en-us,en-gb+f2,en-029+m5): the lines "
                             "are spread over them in turn, each row recording its voice (replaces --voice)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (audio/ + manifest.jsonl)")
    parser.add_argument("--language", default=None, help="language code written into the manifest")
    parser.add_argument("--prefix", default="utt", help="utterance id prefix")
    parser.add_argument("--seed", type=int, default=0, help="seed for per-line rate and pitch")
    parser.set_defaults(func=run)


def _lines(args: argparse.Namespace) -> list[str]:
    """The sentences to speak: the text file's lines, or the term list put into the templates."""
    from asrtune.data.synth import read_text_lines
    from asrtune.errors import AsrtuneError

    if (args.textfile is None) == (args.terms is None):
        raise AsrtuneError("synth takes a TEXTFILE or --terms FILE (one of the two)")
    if args.textfile is not None:
        return read_text_lines(args.textfile)
    from asrtune.data.term_sentences import read_templates, term_sentences
    from asrtune.evaluation.terms import read_terms

    return term_sentences(read_terms(args.terms, args.language).terms, read_templates(args.templates),
                          per_term=args.per_term, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from asrtune.data.synth import SynthSettings, parse_voices, synthesise_lines

    voices = parse_voices(args.voices) if args.voices else ()
    settings = SynthSettings(voice=args.voice, voices=voices, seed=args.seed)
    manifest = synthesise_lines(_lines(args), args.out, settings=settings,
                                prefix=args.prefix, language=args.language)
    print(manifest)
    return 0
