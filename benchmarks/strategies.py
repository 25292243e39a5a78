"""Every strategy through the real recipe on a demo model and the demo's medical data.

Prints, per strategy: trainable parameters (% of the base model), held-out WER before and after,
seconds per optimizer step (wall time of the training loop only, evaluation excluded), all measured
in this one run on this machine. The data are the demo's (``asrtune.demo.speak_demo_data``, no
replay): training and validation read by four espeak-ng voices, the test split (60 sentences) by two
voices training never hears. Checkpoints are chosen on the validation split (``--eval-limit`` rows);
WER is reported on the test split, which neither training nor selection sees.

    python benchmarks/strategies.py [--model bundled:tiny.en] [--steps 30] [--work-dir runs/bench-strategies]
                                    [--mixed-precision auto] [--json]
    python benchmarks/strategies.py --model bundled:llm-asr-tiny --steps 60 --work-dir runs/bench-llm

Each model has its own strategies and learning rates (``STRATEGIES``); a finished run in the work
dir is reused, so an interrupted benchmark picks up where it stopped.

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
from asrtune.demo import DEMO_MODEL, LLM_DEMO_MODEL, speak_demo_data
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.runs.load import load_model
from asrtune.report import print_table
from asrtune.training.recipe import train

STRATEGIES = {
    # Whisper, for a 30-step run: seed 002's learning rates (tuned for 35 epochs) x10, as
    # configs/sweep-smoke.yaml does; LoRA keeps PEFT's 1e-3.
    DEMO_MODEL: {
        "full": {"learning_rate": 1e-4},
        "freeze:n=2": {"learning_rate": 1e-4},
        "reinit:m=1": {"learning_rate": 1e-4},
        "adapter:d=64": {"learning_rate": 1e-3},
        "adapter:d=64,encoder_layers=top-2": {"learning_rate": 1e-3},
        "lora:r=32,alpha=64": {"learning_rate": 1e-3},
        "decoder": {"learning_rate": 1e-4},
        "freeze:n=2+lora:r=32,alpha=64": {"learning_rate": 1e-3},
    },
    # The LLM assembly (issue 15): the new projector alone (SLAM-ASR) at 1e-3, as it starts random;
    # LoRA on the LLM at ms-swift / LLaMA-Factory's r=8, alpha=32, lr 1e-4; and the two together, the
    # projector keeping its own 1e-3 group.
    LLM_DEMO_MODEL: {
        "projector": {"learning_rate": 1e-3},
        "lora:r=8,alpha=32": {"learning_rate": 1e-4},
        "projector+lora:r=8,alpha=32": {"learning_rate": 1e-4, "projector_learning_rate": 1e-3},
    },
}


def _test_wer(model_source: str, test: Path, predictions: Path) -> float:
    """Test WER of ``model_source``; its hypotheses go to ``predictions``, which a later call reuses."""
    if predictions.is_file():
        rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
        if rows and rows[0].get("model") == model_source:
            return rows[0]["wer"]
    loaded = load_model(model_source)
    dataset = FeatureDataset(read_manifest(test), loaded.processor, multilingual=loaded.multilingual, progress=False)
    evaluation = evaluate_dataset(loaded, dataset, progress=False)
    header = {"model": model_source, "wer": evaluation.scores.wer}
    lines = [header] + [{"id": i, "reference": r, "hypothesis": h}
                        for i, r, h in zip(evaluation.ids, evaluation.references, evaluation.hypotheses, strict=True)]
    predictions.parent.mkdir(parents=True, exist_ok=True)
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return evaluation.scores.wer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_MODEL, choices=list(STRATEGIES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="validation rows scored at each evaluation (default: all 30)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-strategies"))
    parser.add_argument("--strategies", nargs="*", default=None,
                        help="specs (default: the model's own, each at its learning rate in STRATEGIES)")
    parser.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION_CHOICES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from asrtune.cli import quiet_libraries

    quiet_libraries()  # as the CLI: generate()'s max_length/max_new_tokens notice would print once per batch
    strategies = STRATEGIES[args.model]
    manifests = speak_demo_data(args.work_dir, progress=False)
    baseline = _test_wer(args.model, manifests["test"], args.work_dir / "base_test_predictions.jsonl")
    print(f"{args.model}: test WER before training {baseline:.4f}", file=sys.stderr, flush=True)
    rows = []
    for spec in args.strategies or list(strategies):
        run_dir = args.work_dir / spec.replace(":", "_").replace(",", "_").replace("=", "").replace("+", "__")
        results_path = run_dir / "results.json"
        if results_path.exists():
            results = json.loads(results_path.read_text())
        else:
            config = RunConfig(model=args.model, strategy=spec, optim=OptimConfig(**strategies.get(spec, {})),
                               data=DataConfig(train=str(manifests["train"]), eval=str(manifests["validation"]),
                                               eval_limit=args.eval_limit),
                               loop=LoopConfig(max_steps=args.steps, batch_size=8, eval_every=max(args.steps // 2, 1),
                                               mixed_precision=args.mixed_precision))
            results = train(config, run_dir, progress=False)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        step_times = [m["seconds"] for m in metrics if "seconds" in m]
        losses = [m["loss"] for m in metrics if "loss" in m][-5:]
        rows.append({
            "strategy": spec,
            "trainable_params": results["trainable_params"],
            "trainable_percent": round(results["trainable_percent"], 3),
            "learning_rate": results["learning_rate"],
            "mixed_precision": results["mixed_precision"],
            "wer_before": round(baseline, 4),
            "wer_after": round(_test_wer(str(run_dir), manifests["test"], run_dir / "test_predictions.jsonl"), 4),
            "final_loss": round(sum(losses) / len(losses), 3) if losses else None,
            "seconds_per_step": round(sum(step_times) / len(step_times), 2) if step_times else None,
            "best_step": results["best_step"],
        })
        print(f"{spec}: {rows[-1]}", file=sys.stderr, flush=True)
    print_table(["strategy", "trainable", "%", "lr", "precision", "test WER before", "after", "kept step",
                 "loss (last 5 steps)", "s/step"], [
        [r["strategy"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.2f}", f"{r['learning_rate']:g}",
         r["mixed_precision"], f"{r['wer_before']:.3f}", f"{r['wer_after']:.3f}", r["best_step"], f"{r['final_loss']}",
         f"{r['seconds_per_step']}"]
        for r in rows])
    if args.json:
        print(json.dumps({"model": args.model, "steps": args.steps, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
