"""``asrtune train CONFIG --output-dir DIR [--set key=value ...] [--resume]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("train")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model with one strategy")
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--output-dir", required=True, type=Path, help="run folder")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set loop.max_steps=50 --set strategy=full")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.config import load_config
    from asrtune.report import print_table

    config = load_config(args.config, args.set or [])  # a bad config fails before the recipe (and model) loads
    from asrtune.training.recipe import train

    results = train(config, args.output_dir, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # several processes: the main one prints
    baseline = (results.get("baseline_subset") or {}).get("wer")
    print_table(["", "value"], [
        ["strategy", results["strategy"]],
        ["trainable params", f"{results['trainable_params']:,} ({results['trainable_percent']:.2f}%)"],
        ["eval WER at step 0", f"{baseline:.4f}" if baseline is not None else "-"],
        ["final WER (best ckpt)", f"{results['final_wer']:.4f}"],
        ["best step", str(results["best_step"])],
        ["processes x batch", f"{results['world_size']} x {config.loop.batch_size} "
                              f"(global {results['global_batch_size']})"],
        ["train seconds", f"{results['train_seconds']:.1f}"],
        ["run", str(args.output_dir)],
    ])
    return 0
