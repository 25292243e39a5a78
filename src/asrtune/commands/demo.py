"""``asrtune demo [--model M] [--output-dir DIR] [--real-en MANIFEST|none]``: the embedded default, offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("demo")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the embedded default: medical dictation on tiny.en (or an LLM-based ASR), offline")
    parser.add_argument("--model", default="bundled:tiny.en", choices=("bundled:tiny.en", "bundled:llm-asr-tiny"),
                        help="the model to fine-tune, each with its own demo settings (bundled:llm-asr-tiny: the "
                             "LLM-based demo; see README)")
    parser.add_argument("--output-dir", default=None, type=Path,
                        help="demo folder (default runs/demo; runs/demo-llm for bundled:llm-asr-tiny)")
    parser.add_argument("--real-en", default="runs/real-en/manifest.jsonl",
                        help="real-English general set built by `asrtune data real-en` (none: leave it out; "
                             "missing: the demo says so and runs without it)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    parser.add_argument("--strategy", default=None, help="strategy spec (default: the demo's own)")
    parser.add_argument("--learning-rate", type=float, default=None, help="peak learning rate")
    parser.add_argument("--forgetting-budget", type=float, default=None,
                        help="largest general-WER rise a kept checkpoint may have (see --forgetting-measure)")
    parser.add_argument("--forgetting-measure", choices=("absolute", "relative"), default=None,
                        help="the budget in WER points (absolute) or as a share of the base model's WER (relative)")
    parser.add_argument("--replay", type=int, default=None,
                        help="everyday sentences (training voices) mixed into training")
    parser.add_argument("--ctc-weight", type=float, default=None,
                        help="LLM-based demo: add this times the CTC loss of the projected audio to the "
                             "cross-entropy (loop.ctc_weight; keeps the projector tied to what is said)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    parser.add_argument("--interpolation", type=_weights, default=None,
                        help="comma-separated weights a in (0, 1): also score base + a x (trained - base) "
                             "(WiSE-FT) for checkpoint selection; 'none': off")
    parser.set_defaults(func=run)


def _weights(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from asrtune.demo import DEMO_MODEL, demo_settings, run_demo

    given = {"strategy": args.strategy, "learning_rate": args.learning_rate, "steps": args.steps,
             "forgetting_budget": args.forgetting_budget, "forgetting_measure": args.forgetting_measure,
             "replay": args.replay, "eval_every": args.eval_every, "interpolation": args.interpolation,
             "ctc_weight": args.ctc_weight}
    settings = replace(demo_settings(args.model), **{k: v for k, v in given.items() if v is not None})
    real_en = None if str(args.real_en).lower() == "none" else Path(args.real_en)
    output_dir = args.output_dir or Path("runs/demo" if args.model == DEMO_MODEL else "runs/demo-llm")
    run_demo(output_dir, real_en=real_en, settings=settings)
    return 0
