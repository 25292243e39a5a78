"""What cutting the encoder's 30 s padding costs in WER (speed lever 3), measured in one run.

    python benchmarks/short_input.py --models bundled:tiny.en runs/demo/run \\
        --test runs/demo/data/test/manifest.jsonl [--json]

For each model: greedy WER on the test manifest and decoding seconds, with the encoder fed the full
30 s window (what Whisper was trained on, and what faster-whisper does) and with the window cut to
each batch's longest utterance. ``--train-steps N`` adds the training side: the same strategy is
trained N steps on ``--train`` with and without ``loop.short_input`` and both runs are scored both
ways, so the table says whether a model trained on short inputs keeps working on 30 s ones.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.runs.load import load_model
from asrtune.report import print_table


def score_both_ways(model: str, test: Path, batch_size: int) -> list[dict]:
    loaded = load_model(model)
    dataset = FeatureDataset(read_manifest(test), loaded.processor, multilingual=loaded.multilingual,
                             progress=False)
    rows = []
    for short in (False, True):
        started = time.perf_counter()
        evaluation = evaluate_dataset(loaded, dataset, batch_size=batch_size, progress=False, short_input=short)
        rows.append({"model": model, "input": "cut to batch" if short else "30 s",
                     "wer": round(evaluation.scores.wer, 4), "cer": round(evaluation.scores.cer, 4),
                     "decode_seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def train_both_ways(args: argparse.Namespace) -> list[str]:
    from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
    from asrtune.training.recipe import train

    runs = []
    for short in (False, True):
        out = args.work_dir / f"{args.strategy.replace(':', '_')}-{'short' if short else 'full'}"
        config = RunConfig(model=args.models[0], strategy=args.strategy,
                           data=DataConfig(train=str(args.train), eval=str(args.eval), eval_limit=16),
                           optim=OptimConfig(learning_rate=args.learning_rate),
                           loop=LoopConfig(max_steps=args.train_steps, batch_size=8, eval_at_start=False,
                                           eval_every=args.train_steps, short_input=short))
        train(config, out, progress=False, final_evaluation=False)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        seconds = [m["seconds"] for m in metrics if "seconds" in m]
        print(f"{out.name}: {sum(seconds) / len(seconds):.2f} s/step", file=sys.stderr, flush=True)
        runs.append(str(out))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bundled:tiny.en"])
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train", type=Path, help="training manifest (with --train-steps)")
    parser.add_argument("--eval", type=Path, help="validation manifest (with --train-steps)")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-short-input"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    models = list(args.models)
    if args.train_steps:
        if not (args.train and args.eval):
            parser.error("--train-steps needs --train and --eval")
        models += train_both_ways(args)
    rows = [row for model in models for row in score_both_ways(model, args.test, args.batch_size)]
    print_table(["model", "encoder input", "test WER", "CER", "decode s"],
                [[r["model"], r["input"], f"{r['wer']:.3f}", f"{r['cer']:.3f}", f"{r['decode_seconds']:.1f}"]
                 for r in rows])
    if args.json:
        print(json.dumps({"results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
