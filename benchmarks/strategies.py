"""Every strategy through the real recipe on bundled tiny.en and the demo's medical data.

Prints, per strategy: trainable parameters (% of the base model), held-out WER before and after,
seconds per optimizer step (wall time of the training loop only, evaluation excluded), all measured
in this one run on this machine. Checkpoints are chosen on the validation split; WER is reported on
the test split, which neither training nor selection sees.

    python benchmarks/strategies.py [--steps 30] [--work-dir runs/bench-strategies] [--mixed-precision auto] [--json]

``--mixed-precision`` is the training arithmetic (``loop.mixed_precision``); test WER is always decoded in
fp32. Two runs with ``no`` and ``bf16`` (and separate work dirs) measure what bf16 training costs in WER.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asrtune.config import MIXED_PRECISION_CHOICES, DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.demo import DEMO_MODEL, demo_splits
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.models.load import load_model
from asrtune.report import print_table
from asrtune.training.recipe import train

# Learning rates for a 30-step run: seed 002's (tuned for 35 epochs) x10, as configs/sweep-smoke.yaml
# does; LoRA keeps PEFT's 1e-3.
STRATEGIES = {
    "full": {"learning_rate": 1e-4},
    "freeze:n=2": {"learning_rate": 1e-4},
    "reinit:m=1": {"learning_rate": 1e-4},
    "adapter:d=64": {"learning_rate": 1e-3},
    "adapter:d=64,encoder_layers=top-2": {"learning_rate": 1e-3},
    "lora:r=32,alpha=64": {"learning_rate": 1e-3},
    "decoder": {"learning_rate": 1e-4},
    "freeze:n=2+lora:r=32,alpha=64": {"learning_rate": 1e-3},
}


def _manifests(work: Path) -> dict[str, Path]:
    manifests = {}
    for index, (name, lines) in enumerate(demo_splits().items()):
        manifests[name] = synthesise_lines(lines, work / "data" / name, settings=SynthSettings(seed=index),
                                           prefix=name, language="en", progress=False)
    return manifests


def _test_wer(model_source: str, test: Path) -> float:
    loaded = load_model(model_source)
    dataset = FeatureDataset(read_manifest(test), loaded.processor, multilingual=loaded.multilingual, progress=False)
    return evaluate_dataset(loaded, dataset, progress=False).scores.wer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-strategies"))
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES),
                        help="specs (default: the eight above, each at its learning rate above)")
    parser.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION_CHOICES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from asrtune.cli import quiet_libraries

    quiet_libraries()  # as the CLI: generate()'s max_length/max_new_tokens notice would print once per batch
    manifests = _manifests(args.work_dir)
    baseline = _test_wer(DEMO_MODEL, manifests["test"])
    rows = []
    for spec in args.strategies:
        run_dir = args.work_dir / spec.replace(":", "_").replace(",", "_").replace("=", "").replace("+", "__")
        results_path = run_dir / "results.json"
        if results_path.exists():
            results = json.loads(results_path.read_text())
        else:
            config = RunConfig(model=DEMO_MODEL, strategy=spec, optim=OptimConfig(**STRATEGIES.get(spec, {})),
                               data=DataConfig(train=str(manifests["train"]), eval=str(manifests["validation"])),
                               loop=LoopConfig(max_steps=args.steps, batch_size=8, eval_every=max(args.steps // 2, 1),
                                               mixed_precision=args.mixed_precision))
            results = train(config, run_dir, progress=False)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        step_times = [m["seconds"] for m in metrics if "seconds" in m]
        rows.append({
            "strategy": spec,
            "trainable_params": results["trainable_params"],
            "trainable_percent": round(results["trainable_percent"], 3),
            "learning_rate": results["learning_rate"],
            "mixed_precision": results["mixed_precision"],
            "wer_before": round(baseline, 4),
            "wer_after": round(_test_wer(str(run_dir), manifests["test"]), 4),
            "seconds_per_step": round(sum(step_times) / len(step_times), 2) if step_times else None,
            "best_step": results["best_step"],
        })
        print(f"{spec}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(["strategy", "trainable", "%", "lr", "precision", "test WER before", "after", "s/step"], [
        [r["strategy"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.2f}", f"{r['learning_rate']:g}",
         r["mixed_precision"], f"{r['wer_before']:.3f}", f"{r['wer_after']:.3f}", f"{r['seconds_per_step']}"]
        for r in rows])
    if args.json:
        print(json.dumps({"steps": args.steps, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
