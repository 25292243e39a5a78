"""What weight interpolation (WiSE-FT) buys: WER on several sets along base -> tuned, measured in one run.

    python benchmarks/interpolation.py RUN --weights 0,0.3,0.5,0.7,1 \\
        --set medical=runs/demo/data/test/manifest.jsonl \\
        --set real_english=runs/real-en/manifest.jsonl:60 [--checkpoint best|last] [--json]

For each weight a, the run's trainable parameters are set to ``start + a x (end - start)``: ``end`` is
the checkpoint named by ``--checkpoint``, ``start`` the run's ``checkpoints/start`` (saved by runs with
``loop.interpolation``) or, without it, the strategy applied afresh to the base model with the run's
seed (the same start for strategies that train pretrained weights: full, decoder, freeze). Each set is
scored greedily; ``MANIFEST:N`` takes N rows spread over the manifest. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from accelerate.utils import set_seed
from safetensors.torch import load_file

from asrtune.config import config_from_dict
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.runs.load import load_model
from asrtune.report import print_table
from asrtune.strategies import apply_strategy
from asrtune.runs.load import load_run_model
from asrtune.runs.weights import trainable_state
from asrtune.training.interpolation import START, mix_trainable


def start_weights(run: Path) -> dict:
    saved = run / "checkpoints" / START / "trainable.safetensors"
    if saved.is_file():
        return load_file(str(saved))
    config = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    set_seed(config.seed)
    return trainable_state(apply_strategy(load_model(config.model).model, config.strategy))


def read_set(spec: str) -> tuple[str, list]:
    name, _, where = spec.partition("=")
    path, _, count = where.rpartition(":") if where.rsplit(":", 1)[-1].isdigit() else (where, "", "")
    rows = read_manifest(Path(path))
    if count:
        rows = rows[:: max(1, len(rows) // int(count))][: int(count)]
    return name, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--weights", default="0,0.3,0.5,0.7,1", help="comma-separated a values")
    parser.add_argument("--set", action="append", required=True, metavar="NAME=MANIFEST[:N]")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    loaded = load_run_model(args.run, which=args.checkpoint)
    start, end = start_weights(args.run), trainable_state(loaded.model)
    sets = dict(read_set(spec) for spec in args.set)
    datasets = {name: FeatureDataset(rows, loaded.processor, multilingual=loaded.multilingual, progress=False)
                for name, rows in sets.items()}
    results = []
    for weight in (float(w) for w in args.weights.split(",")):
        mix_trainable(loaded.model, start, end, weight)
        row = {"weight": weight}
        for name, dataset in datasets.items():
            row[name] = round(evaluate_dataset(loaded, dataset, batch_size=args.batch_size, progress=False).scores.wer, 4)
        print(json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
    print_table(["a", *datasets], [[f"{r['weight']:g}", *(f"{r[n]:.3f}" for n in datasets)] for r in results])
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
