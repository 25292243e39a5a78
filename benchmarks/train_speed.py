"""Training throughput: asrtune's recipe against the plain transformers ``Seq2SeqTrainer`` recipe.

Both sides: bundled tiny.en, the demo's medical training sentences (the first ``--utterances``),
batch 8, the same steps, AdamW with 10% warm-up and linear decay, the same frozen parameters (the
strategy is applied to the model the Trainer gets too), no evaluation, no checkpoints. Each side runs
in its own process so its peak RSS is its own. asrtune's time includes building its encoder-prefix
cache, which is charged to it; samples/s = steps x batch / (cache seconds + loop seconds). The
baseline's is the Trainer's own ``train_samples_per_second``.

    python benchmarks/train_speed.py [--steps 24] [--utterances 64] [--sides …] [--short-input] [--json]

Sides, per strategy (``--sides``, default all that apply):

- ``baseline``: the Trainer as the plain recipe runs it, fp32 (its default arithmetic) — the
  reference every ratio is taken against;
- ``asrtune``: asrtune's defaults (``loop.mixed_precision=auto``: bf16 autocast where the hardware
  multiplies bf16 natively, which this machine's AMX does);
- ``baseline-bf16``: the Trainer with ``bf16=True``, the same arithmetic as asrtune's default — so the
  table shows what the frozen-prefix cache and the loop add on top of the precision (only run where
  asrtune's auto picks bf16);
- ``asrtune-fp32``: asrtune with ``loop.mixed_precision=no``: the exact levers alone;
- ``asrtune-bf16``: asrtune with ``loop.mixed_precision=bf16`` (on a CPU whose ``auto`` stays fp32: what bf16
  autocast gives there);
- ``asrtune-short`` (``--short-input``): asrtune with ``loop.short_input`` (the encoder fed each
  batch's longest utterance instead of 30 s; not exact, see README for its measured WER cost).

``--json``: the last line is {"results": [{"strategy", "asrtune_sps", "baseline_sps", "ratio",
"peak_rss_mb", …}]}, with ``<side>_sps`` and ``<side>_ratio`` (against ``baseline``) for the other
sides. Numbers only; nothing here asserts on seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

STRATEGIES = ["full", "freeze:n=3", "adapter:d=64,encoder_layers=top-1", "lora:r=32,alpha=64"]
MODEL = "bundled:tiny.en"


def _data(work: Path, utterances: int) -> tuple[Path, Path]:
    from asrtune.data.manifest import read_manifest, write_manifest
    from asrtune.data.synth import SynthSettings, synthesise_lines
    from asrtune.demo import demo_splits

    splits = demo_splits()
    train = synthesise_lines(splits["train"][:utterances], work / "train", settings=SynthSettings(seed=0),
                             prefix="train", language="en", progress=False)
    evaluation = work / "eval.jsonl"  # the recipe wants an eval set; the benchmark never evaluates
    write_manifest(read_manifest(train)[:2], evaluation)
    return train, evaluation


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_asrtune(strategy: str, steps: int, train: Path, evaluation: Path, out: Path, *, short_input: bool = False,
                mixed_precision: str = "auto") -> dict:
    from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
    from asrtune.training.recipe import train as train_run

    config = RunConfig(model=MODEL, strategy=strategy, data=DataConfig(train=str(train), eval=str(evaluation)),
                       optim=OptimConfig(learning_rate=1e-5),
                       loop=LoopConfig(max_steps=steps, batch_size=8, eval_every=steps + 1, eval_at_start=False,
                                       short_input=short_input, mixed_precision=mixed_precision))
    results = train_run(config, out, progress=False, final_evaluation=False)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loop_seconds = sum(m["seconds"] for m in metrics if "seconds" in m)
    cache_seconds = (results.get("encoder_cache") or {}).get("seconds", 0.0)
    return {"sps": steps * 8 / (loop_seconds + cache_seconds), "cache_seconds": cache_seconds,
            "loop_seconds": loop_seconds, "peak_rss_mb": _peak_rss_mb(),
            "mixed_precision": results["mixed_precision"]}


def run_baseline(strategy: str, steps: int, train: Path, out: Path, *, bf16: bool = False) -> dict:
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from asrtune.data.features import FeatureDataset, collate
    from asrtune.data.manifest import read_manifest
    from asrtune.runs.load import load_model
    from asrtune.strategies import apply_strategy

    loaded = load_model(MODEL)
    model = apply_strategy(loaded.model, strategy)
    dataset = FeatureDataset(read_manifest(train), loaded.processor, multilingual=False, progress=False)

    def collator(items: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate(items)
        return {"input_features": batch["input_features"], "labels": batch["labels"]}

    arguments = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, max_steps=steps, learning_rate=1e-5,
        warmup_steps=0.1, lr_scheduler_type="linear",  # a float < 1 is a ratio in transformers 5
        optim="adamw_torch_fused", weight_decay=0.0, max_grad_norm=1.0,  # the Trainer's default, as asrtune's
        bf16=bf16, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[],
        dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Seq2SeqTrainer(model=model, args=arguments, train_dataset=dataset, data_collator=collator)
    metrics = trainer.train().metrics
    return {"sps": metrics["train_samples_per_second"], "peak_rss_mb": _peak_rss_mb()}


# side -> what runs it; "baseline" is the reference the ratios are taken against
SIDES = {
    "baseline": lambda a, train, evaluation, out: run_baseline(a.strategy, a.steps, train, out),
    "asrtune": lambda a, train, evaluation, out: run_asrtune(a.strategy, a.steps, train, evaluation, out / "run"),
    "baseline-bf16": lambda a, train, evaluation, out: run_baseline(a.strategy, a.steps, train, out, bf16=True),
    "asrtune-fp32": lambda a, train, evaluation, out: run_asrtune(a.strategy, a.steps, train, evaluation,
                                                                  out / "run", mixed_precision="no"),
    "asrtune-bf16": lambda a, train, evaluation, out: run_asrtune(a.strategy, a.steps, train, evaluation,
                                                                  out / "run", mixed_precision="bf16"),
    "asrtune-short": lambda a, train, evaluation, out: run_asrtune(a.strategy, a.steps, train, evaluation,
                                                                   out / "run", short_input=True),
}


def _child(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.side}-") as out:  # the run's checkpoints go with it
        print(json.dumps(SIDES[args.side](args, Path(args.train), Path(args.eval), Path(out))))
    return 0


def _sides(args: argparse.Namespace) -> list[str]:
    from asrtune.training.precision import native_bf16

    sides = list(args.sides or ["baseline", "asrtune", "baseline-bf16", "asrtune-fp32"])
    if not args.sides and not native_bf16():  # asrtune trains in fp32 here: both bf16 columns would repeat it
        sides = ["baseline", "asrtune"]
    if args.short_input and "asrtune-short" not in sides:
        sides.append("asrtune-short")
    return ["baseline", *[side for side in sides if side != "baseline"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES)
    parser.add_argument("--sides", nargs="*", choices=list(SIDES), help="default: all but asrtune-short")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-train-speed"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--short-input", action="store_true",
                        help="also time asrtune with loop.short_input (speed lever 3, not exact: see README)")
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--eval", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return _child(args)

    sides = _sides(args)
    train, evaluation = _data(args.work_dir, args.utterances)
    rows = []
    for strategy in args.strategies:
        measured = {}
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--strategy", strategy, "--steps", str(args.steps),
                       "--train", str(train), "--eval", str(evaluation)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            measured[side] = json.loads(output.strip().splitlines()[-1])
        reference = measured["baseline"]["sps"]
        row = {"strategy": strategy}
        for side in sides:
            key = side.replace("-", "_")
            row[f"{key}_sps"] = round(measured[side]["sps"], 3)
            if side != "baseline":
                row["ratio" if side == "asrtune" else f"{key}_ratio"] = round(measured[side]["sps"] / reference, 2)
            row["peak_rss_mb" if side == "asrtune" else f"{key}_peak_rss_mb"] = round(measured[side]["peak_rss_mb"])
            if "cache_seconds" in measured[side]:
                row[f"{key}_cache_seconds"] = round(measured[side]["cache_seconds"], 1)
            if "mixed_precision" in measured[side]:
                row[f"{key}_mixed_precision"] = measured[side]["mixed_precision"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    from asrtune.report import print_table

    others = [side for side in sides if side not in ("baseline", "asrtune")]
    header = ["strategy", "Seq2SeqTrainer fp32 samples/s", "asrtune samples/s", "ratio",
              *[f"{side} samples/s (ratio)" for side in others], "peak RSS MB (asrtune / Trainer)"]
    table = []
    for r in rows:
        line = [r["strategy"], f"{r['baseline_sps']:.2f}",
                f"{r['asrtune_sps']:.2f} ({r['asrtune_mixed_precision']})", f"{r['ratio']:.2f}x"]
        for side in others:
            key = side.replace("-", "_")
            line.append(f"{r[f'{key}_sps']:.2f} ({r[f'{key}_ratio']:.2f}x)")
        line.append(f"{r['peak_rss_mb']} / {r['baseline_peak_rss_mb']}")
        table.append(line)
    print_table(header, table)
    if args.json:
        print(json.dumps({"results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
