"""``asrtune lr-search CONFIG --output-dir DIR [--then-train]``: choose the LR by validation WER."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("lr-search")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lr-search", help="metric-driven learning-rate search (successive halving)")
    parser.add_argument("config", help="run config YAML (its strategy, data and batch settings are searched)")
    parser.add_argument("--output-dir", required=True, type=Path, help="search folder (trials/, lr_search.json)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--trials", type=int, default=4, help="log-spaced learning rates to try")
    parser.add_argument("--rung-steps", type=int, default=10, help="steps before the first cut")
    parser.add_argument("--max-steps", type=int, default=40, help="longest trial")
    parser.add_argument("--min-lr", type=float, default=None, help="range start (default: strategy default / 10)")
    parser.add_argument("--max-lr", type=float, default=None, help="range end (default: strategy default x 10)")
    parser.add_argument("--extend", type=int, default=1,
                        help="when the best LR is at an end of the range, extend it a decade that way and search "
                        "on, at most this many times (0: never; a warning says the optimum may lie beyond)")
    parser.add_argument("--target", choices=["learning_rate", "encoder_learning_rate", "projector_learning_rate"],
                        default="learning_rate",
                        help="search the LR of every parameter, or one group's only: the (audio) encoder's, or "
                             "the projector's (LLM families); with the others set, learning_rate is the "
                             "decoder's / LLM's")
    parser.add_argument("--then-train", action="store_true",
                        help="train the full run (the config's loop) with the chosen LR into DIR/final")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.config import load_config
    from asrtune.report import print_table
    from asrtune.training.lr_search import SearchSettings, run_lr_search
    from asrtune.training.recipe import train

    config = load_config(args.config, args.set or [])
    settings = SearchSettings(min_lr=args.min_lr, max_lr=args.max_lr, trials=args.trials,
                              rung_steps=args.rung_steps, max_steps=args.max_steps, target=args.target,
                              extend=args.extend)
    result = run_lr_search(config, args.output_dir, settings)
    print_table(["lr", "eval WER", "train loss", "steps", "rank there", "pruned"], [
        [f"{t['lr']:.3g}", f"{t['wer']:.4f}", f"{t['loss']:.4f}" if t["loss"] is not None else "-",
         str(t["steps"]), f"{t['rank_at_last_rung']}/{t['compared_with']}", "yes" if t["pruned"] else ""]
        for t in result["trials"]])
    print(f"\nbest {args.target}: {result['best_lr']:.3g}, {result['selection']}  "
          f"({args.output_dir / 'lr_search.json'}, {args.output_dir / 'lr_search.png'})")
    if result["warning"]:
        message = f"WARNING: {result['warning']}"
        print(f"\n{'!' * len(message)}\n{message}\n{'!' * len(message)}")
        print(message, file=sys.stderr)
    if args.then_train:
        source = f"lr-search {args.output_dir / 'lr_search.json'} (best of {len(result['trials'])} trials)"
        optim = dataclasses.replace(config.optim, **{args.target: result["best_lr"]}, learning_rate_source=source)
        final = train(dataclasses.replace(config, optim=optim), args.output_dir / "final")
        print(f"full run with {args.target}={result['best_lr']:.3g}: final WER {final['final_wer']:.4f} "
              f"({args.output_dir / 'final'})")
    return 0
