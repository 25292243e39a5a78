"""The embedded default: medical dictation on Whisper tiny.en, offline, minutes on a laptop CPU.

1. Speak the packaged medical sentences (split by sentence into train / validation / test) and a
   general-English set with espeak-ng.
2. Score the pretrained model on the medical test set and on the general set.
3. Fine-tune with :data:`DEMO_STRATEGY`, keeping the checkpoint with the lowest validation WER.
4. Score again; print a before/after table and example transcripts; write ``results.json``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import Evaluation, evaluate_dataset, write_predictions
from asrtune.models.load import LoadedModel, load_model
from asrtune.report import print_table
from asrtune.training.recipe import train

__all__ = ["run_demo", "DEMO_STRATEGY", "demo_splits"]

DEMO_MODEL = "bundled:tiny.en"
DEMO_STRATEGY = "decoder"
DEMO_LEARNING_RATE = 1e-4
DEMO_STEPS = 60
SPLIT = {"train": 230, "validation": 30}  # the remaining medical sentences are the test set
GENERAL_SENTENCES = 60


def corpus_lines(name: str) -> list[str]:
    """A packaged corpus (``medical_en``, ``general_en``), one sentence per line."""
    text = resources.files("asrtune.data.corpora").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def demo_splits(seed: int = 0) -> dict[str, list[str]]:
    """Sentence-level splits: no test sentence is ever trained on."""
    medical = corpus_lines("medical_en")
    random.Random(seed).shuffle(medical)
    n_train, n_val = SPLIT["train"], SPLIT["validation"]
    return {
        "train": medical[:n_train],
        "validation": medical[n_train : n_train + n_val],
        "test": medical[n_train + n_val :],
        "general": corpus_lines("general_en")[:GENERAL_SENTENCES],
    }


@dataclass(frozen=True)
class _Scored:
    medical: Evaluation
    general: Evaluation


def _score(loaded: LoadedModel, manifests: dict[str, Path]) -> _Scored:
    def run(name: str) -> Evaluation:
        dataset = FeatureDataset(read_manifest(manifests[name]), loaded.processor,
                                 multilingual=loaded.multilingual, progress=False)
        return evaluate_dataset(loaded, dataset, desc=f"decode {name}")

    return _Scored(medical=run("test"), general=run("general"))


def run_demo(output_dir: Path, *, steps: int | None = None, seed: int = 0) -> dict:
    """Run the demo end to end into ``output_dir``; returns what ``results.json`` holds."""
    output_dir = Path(output_dir)
    run_dir = output_dir / "run"
    if (run_dir / "checkpoints").exists():
        raise AsrtuneError(f"{output_dir} already holds a demo run; remove it or pass another --output-dir")
    started = time.perf_counter()
    print(f"asrtune demo: {DEMO_MODEL}, strategy {DEMO_STRATEGY}, output {output_dir}")
    manifests = {}
    for index, (name, lines) in enumerate(demo_splits(seed).items()):
        settings = SynthSettings(voice="en-us", seed=seed * 100 + index)
        manifests[name] = synthesise_lines(lines, output_dir / "data" / name, settings=settings, prefix=name,
                                           language="en")

    base = load_model(DEMO_MODEL)
    before = _score(base, manifests)
    del base

    config = RunConfig(
        model=DEMO_MODEL,
        strategy=DEMO_STRATEGY,
        seed=seed,
        data=DataConfig(train=str(manifests["train"]), eval=str(manifests["validation"])),
        optim=OptimConfig(learning_rate=DEMO_LEARNING_RATE),
        loop=LoopConfig(max_steps=steps or DEMO_STEPS, batch_size=8, eval_every=15, eval_batch_size=16),
    )
    trained = train(config, run_dir)
    tuned = load_model(str(run_dir))
    after = _score(tuned, manifests)
    write_predictions(before.medical, output_dir / "predictions_test_before.jsonl")
    write_predictions(after.medical, output_dir / "predictions_test_after.jsonl")

    results = {
        "baseline_wer": before.medical.scores.wer,
        "final_wer": after.medical.scores.wer,
        "general_baseline_wer": before.general.scores.wer,
        "general_final_wer": after.general.scores.wer,
        "baseline_cer": before.medical.scores.cer,
        "final_cer": after.medical.scores.cer,
        "trainable_params": trained["trainable_params"],
        "total_params": trained["total_params"],
        "train_seconds": trained["train_seconds"],
        "demo_seconds": round(time.perf_counter() - started, 1),
        "strategy": DEMO_STRATEGY,
        "steps": trained["steps"],
        "best_step": trained["best_step"],
        "test_utterances": before.medical.scores.n,
        "general_utterances": before.general.scores.n,
        "model": str(run_dir.resolve()),
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    _print_summary(results, before, after)
    return results


def _relative(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


def _print_summary(results: dict, before: _Scored, after: _Scored) -> None:
    print()
    print_table(["set", "WER before", "WER after", "change", "CER before", "CER after"], [
        ["medical (held-out)", f"{results['baseline_wer']:.3f}", f"{results['final_wer']:.3f}",
         _relative(results["baseline_wer"], results["final_wer"]),
         f"{before.medical.scores.cer:.3f}", f"{after.medical.scores.cer:.3f}"],
        ["general English", f"{results['general_baseline_wer']:.3f}", f"{results['general_final_wer']:.3f}",
         _relative(results["general_baseline_wer"], results["general_final_wer"]),
         f"{before.general.scores.cer:.3f}", f"{after.general.scores.cer:.3f}"],
    ])
    print(f"\ntrainable parameters: {results['trainable_params']:,} of {results['total_params']:,} "
          f"({100 * results['trainable_params'] / results['total_params']:.2f}%); "
          f"training {results['train_seconds']:.0f} s; demo {results['demo_seconds']:.0f} s")
    print("\nexamples (held-out medical):")
    changed = [i for i, (b, a) in enumerate(zip(before.medical.hypotheses, after.medical.hypotheses)) if b != a]
    for i in (changed or list(range(len(after.medical.ids))))[:4]:
        print(f"  reference: {before.medical.references[i]}")
        print(f"  before:    {before.medical.hypotheses[i]}")
        print(f"  after:     {after.medical.hypotheses[i]}\n")
    print(f"model: {results['model']}  (asrtune evaluate {results['model']} --data MANIFEST)")
