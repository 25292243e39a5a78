"""The ``asrtune`` command line. Errors are one clear line, not a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from asrtune.errors import AsrtuneError

__all__ = ["main"]


def _quiet_libraries() -> None:
    """Keep the terminal for asrtune's own bars and tables."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _cmd_train(args: argparse.Namespace) -> int:
    from asrtune.config import load_config
    from asrtune.report import print_table
    from asrtune.training.recipe import train

    config = load_config(args.config, args.set or [])
    results = train(config, args.output_dir, resume=args.resume)
    baseline = (results.get("baseline_subset") or {}).get("wer")
    print_table(["", "value"], [
        ["strategy", results["strategy"]],
        ["trainable params", f"{results['trainable_params']:,} ({results['trainable_percent']:.2f}%)"],
        ["eval WER at step 0", f"{baseline:.4f}" if baseline is not None else "-"],
        ["final WER (best ckpt)", f"{results['final_wer']:.4f}"],
        ["best step", str(results["best_step"])],
        ["train seconds", f"{results['train_seconds']:.1f}"],
        ["run", str(args.output_dir)],
    ])
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from asrtune.evaluation.decode import evaluate_dataset, write_predictions
    from asrtune.models.load import load_model
    from asrtune.report import print_table

    loaded = load_model(args.model)
    rows = read_manifest(args.data)
    dataset = FeatureDataset(rows, loaded.processor, multilingual=loaded.multilingual, language=args.language)
    evaluation = evaluate_dataset(loaded, dataset, language=args.language, batch_size=args.batch_size)
    if args.predictions:
        write_predictions(evaluation, args.predictions)
    s = evaluation.scores
    print_table(["metric", "value"], [
        ["WER (normalised)", f"{s.wer:.4f}"], ["CER (normalised)", f"{s.cer:.4f}"],
        ["WER (raw)", f"{s.raw_wer:.4f}"], ["subs / dels / ins", f"{s.substitutions} / {s.deletions} / {s.insertions}"],
        ["utterances", str(s.n)],
    ], file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), **s.as_dict()}))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from asrtune.data.synth import SynthSettings, read_text_lines, synthesise_lines

    settings = SynthSettings(voice=args.voice, seed=args.seed)
    manifest = synthesise_lines(read_text_lines(args.textfile), args.out, settings=settings,
                                prefix=args.prefix, language=args.language)
    print(manifest)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from asrtune.demo import run_demo

    run_demo(Path(args.output_dir), steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrtune", description="Fine-tune and domain-adapt Whisper.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a model with one strategy")
    train.add_argument("config", help="run config YAML")
    train.add_argument("--output-dir", required=True, type=Path, help="run folder")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set loop.max_steps=50 --set strategy=full")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="WER/CER of a model or run on a manifest")
    evaluate.add_argument("model", help="bundled:NAME, HF id or folder, CTranslate2 folder, or run folder")
    evaluate.add_argument("--data", required=True, type=Path, help="manifest JSONL")
    evaluate.add_argument("--language", default=None, help="language for rows without one")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--predictions", type=Path, help="write per-utterance hypotheses here (JSONL)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    evaluate.set_defaults(func=_cmd_evaluate)

    synth = commands.add_parser("synth", help="speak a text file with espeak-ng into a manifest")
    synth.add_argument("textfile", type=Path, help="one utterance per line")
    synth.add_argument("--voice", default="en-us", help="espeak-ng voice (espeak-ng --voices)")
    synth.add_argument("--out", required=True, type=Path, help="output folder (audio/ + manifest.jsonl)")
    synth.add_argument("--language", default=None, help="language code written into the manifest")
    synth.add_argument("--prefix", default="utt", help="utterance id prefix")
    synth.add_argument("--seed", type=int, default=0, help="seed for per-line rate and pitch")
    synth.set_defaults(func=_cmd_synth)

    demo = commands.add_parser("demo", help="the embedded default: medical dictation on tiny.en, offline")
    demo.add_argument("--output-dir", default="runs/demo", help="demo folder")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's own)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return args.func(args)
    except AsrtuneError as error:
        print(f"asrtune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asrtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
