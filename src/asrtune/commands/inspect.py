"""``asrtune inspect MODEL --strategy SPEC [--json]``: what a strategy would train."""

from __future__ import annotations

import argparse
import json

from asrtune.commands import COMMANDS


@COMMANDS.register("inspect")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="trainable parameters of a strategy, per module")
    parser.add_argument("model", help="bundled:NAME, HF id or folder, CTranslate2 folder")
    parser.add_argument("--strategy", required=True, help="strategy spec, e.g. freeze:n=20+lora:r=8")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.inspection import count_parameters, module_counts
    from asrtune.report import print_table
    from asrtune.runs.load import load_model
    from asrtune.strategies import apply_strategy, parse_spec

    parse_spec(args.strategy)  # a bad spec fails before the model loads
    model = load_model(args.model).model
    _, base_total = count_parameters(model)
    model = apply_strategy(model, args.strategy)
    trainable, total = count_parameters(model)
    modules = module_counts(model)
    summary = {
        "model": args.model,
        "strategy": args.strategy,
        "trainable": trainable,
        "total": base_total,
        "added": total - base_total,
        "trainable_percent": 100.0 * trainable / base_total,
        "modules": [m.as_dict() for m in modules],
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print_table(["module", "trainable", "total", "% trainable"], [
        [m.module, f"{m.trainable:,}", f"{m.total:,}", f"{100 * m.trainable / m.total:.1f}"] for m in modules
    ])
    print()
    print_table(["", "parameters"], [
        ["trainable", f"{trainable:,} ({summary['trainable_percent']:.2f}% of the base model)"],
        ["base model", f"{base_total:,}"],
        ["added by the strategy", f"{summary['added']:,}"],
    ])
    return 0
