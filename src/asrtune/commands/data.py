"""``asrtune data real-en --out DIR``: ready-made evaluation data from the system's package manager."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("data")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build evaluation sets from installable packages")
    kinds = parser.add_subparsers(dest="kind", required=True)
    real = kinds.add_parser(
        "real-en",
        help="real recorded English (Debian's Asterisk prompts) as a general set for forgetting",
        description="Build a general-English set of real recorded speech from Debian's "
        "asterisk-core-sounds-en-g722 (prompts by one professional speaker, G.722 16 kHz) and "
        "asterisk-core-sounds-en (transcripts): taken from the installed system, else fetched with "
        "`apt-get download` and unpacked into DIR (nothing installed system-wide). Writes DIR/audio/*.wav "
        "(16 kHz), DIR/manifest.jsonl (transcripts cleaned of non-speech entries) and DIR/report.json "
        "(what was dropped and why). Name the manifest in a run's data.general.",
    )
    real.add_argument("--out", required=True, type=Path, help="output folder")
    real.add_argument("--source", type=Path, default=None,
                      help="a folder with the two .deb files, or their unpacked contents (default: installed "
                           "packages, else apt-get download)")
    real.add_argument("--no-fetch", action="store_true", help="never run apt-get; fail with what to install")
    real.add_argument("--limit", type=int, default=None, help="keep at most this many prompts")
    real.set_defaults(func=run_real_en)


def run_real_en(args: argparse.Namespace) -> int:
    from asrtune.data.real_speech import build_real_english

    report = build_real_english(args.out, source=args.source, fetch=not args.no_fetch, limit=args.limit)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report["dropped_by_reason"].items())) or "none"
    print(f"{report['source']}; kept {report['kept']} prompts ({report['hours'] * 60:.1f} min) by "
          f"{report['speaker']}; dropped: {reasons}")
    print(report["manifest"])
    return 0
