"""``asrtune demo [--output-dir DIR]``: the embedded default, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("demo")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the embedded default: medical dictation on tiny.en, offline")
    parser.add_argument("--output-dir", default="runs/demo", type=Path, help="demo folder")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.demo import run_demo

    run_demo(args.output_dir, steps=args.steps)
    return 0
