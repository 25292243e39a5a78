"""A language the model lacks: a new language token, trained, scored on voices training never hears.

    python benchmarks/new_language.py --corpus everyday_ky --language new:ky,init=kk \\
        --voices ky,ky+m3 --test-voices ky+f4,ky+m2 --work-dir runs/new-language-ky [--steps 40]

Splits the packaged corpus by sentence (train / validation / test) and speaks train and validation in
``--voices``, test in ``--test-voices`` with espeak-ng (as a sweep's corpus dataset does), then
trains ``--strategy`` on ``--model`` with ``language: new:xx,init=yy`` (asrtune.models.new_language)
and prints the validation and test WER and CER before and after. "Before" is the base model prompted with ``<|yy|>``, which is what
``<|xx|>`` is at step 0. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.languages import parse_new_language
from asrtune.report import print_table
from asrtune.sweep.config import DatasetSpec, SplitSizes
from asrtune.sweep.data import DatasetFiles, materialise
from asrtune.training.recipe import train


def speak_splits(args: argparse.Namespace, code: str) -> DatasetFiles:
    """The corpus split by sentence and spoken as a sweep speaks it, test in the held-out voices."""
    spec = DatasetSpec(name=code, corpus=args.corpus, voice=args.voices, test_voice=args.test_voices,
                       language=code, seed=args.seed,
                       split=SplitSizes(train=args.train, validation=args.validation, test=args.test))
    return materialise(spec, Path(args.work_dir) / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="everyday_ky", help="packaged sentence list")
    parser.add_argument("--language", default="new:ky,init=kk", help="new:xx,init=yy")
    parser.add_argument("--voices", default="ky,ky+m3", help="training and validation voices")
    parser.add_argument("--test-voices", default="ky+f4,ky+m2", help="test voices (absent from training)")
    parser.add_argument("--model", default="bundled:base")
    parser.add_argument("--strategy", default="decoder")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--validation", type=int, default=6)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default="runs/new-language")
    args = parser.parse_args()

    new = parse_new_language(args.language)
    if new is None:
        parser.error(f"--language must be new:xx,init=yy, not {args.language!r}")
    code, init = new
    data = speak_splits(args, code)
    config = RunConfig(
        model=args.model, strategy=args.strategy, language=args.language, seed=args.seed,
        data=DataConfig(train=data.train, eval=data.eval, test=data.test),
        optim=OptimConfig(learning_rate=args.lr),
        loop=LoopConfig(max_steps=args.steps, batch_size=8, eval_every=10, eval_batch_size=16, max_new_tokens=40),
    )
    results = train(config, Path(args.work_dir) / "run")
    rows = []
    for name, report in results["evaluation"]["sets"].items():
        if "wer" not in report:
            continue
        low, high = report["delta_wer_ci95"]
        rows.append([name, str(report["n"]), f"{report['base']['wer']:.3f} → {report['wer']:.3f}",
                     f"[{low:+.3f}, {high:+.3f}]", f"{report['base']['cer']:.3f} → {report['cer']:.3f}"])
    print(f"\n{args.model}, {args.strategy}, <|{code}|> from <|{init}|>, {args.steps} steps "
          f"(kept step {results['best_step']}); test voices {args.test_voices}, training voices {args.voices}")
    print_table(["set", "utts", "WER before → after", "Δ WER 95% CI (paired)", "CER before → after"], rows)
    print(json.dumps({"language": code, "init": init, "best_step": results["best_step"]}))


if __name__ == "__main__":
    main()
