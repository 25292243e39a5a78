"""What decoding-time term biasing buys: WER, term recall and term insertions per setting, one model load.

    python benchmarks/biasing.py bundled:tiny.en --data runs/demo/data/test/manifest.jsonl \\
        --terms packaged:medical_terms_en --setting 1 --setting 4:2:1 --setting 4:4:2 [--json]

A setting is ``BEAMS[:WEIGHT[:START_WEIGHT]]`` (no weight: unbiased; no start weight: the weight), the
same decode ``asrtune evaluate MODEL --num-beams BEAMS --bias TERMS --bias-weight WEIGHT
--bias-start-weight START_WEIGHT`` runs; the features are computed once for all of them. Each row is
printed (JSON, stderr) as soon as it is measured. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.biasing import bias_processor
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.evaluation.terms import read_terms, term_report
from asrtune.runs.load import load_model
from asrtune.report import print_table


def parse_setting(text: str) -> tuple[int, float | None, float | None]:
    """``BEAMS[:WEIGHT[:START_WEIGHT]]`` -> (beams, weight or None, start weight or None)."""
    parts = text.split(":")
    beams = int(parts[0])
    weight = float(parts[1]) if len(parts) > 1 else None
    start = float(parts[2]) if len(parts) > 2 else None
    return beams, weight, start


def measure(loaded, dataset, terms, setting: str, batch_size: int) -> dict:
    beams, weight, start = parse_setting(setting)
    bias = None if weight is None else bias_processor(loaded.processor.tokenizer, terms, weight, start_weight=start)
    started = time.perf_counter()
    evaluation = evaluate_dataset(loaded, dataset, batch_size=batch_size, progress=False, logits_processor=bias,
                                  num_beams=beams)
    found = term_report(evaluation.references, evaluation.hypotheses, terms, "en")
    return {"setting": setting, "beams": beams, "weight": weight,
            "start_weight": start if start is not None or weight is None else weight,
            "wer": round(evaluation.scores.wer, 4), "term_recall": round(found["term_recall"], 4),
            "term_insertions": found["term_insertions"], "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--terms", default="packaged:medical_terms_en", help="biased towards and scored")
    parser.add_argument("--setting", action="append", required=True, help="BEAMS[:WEIGHT[:START_WEIGHT]]")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    terms = read_terms(args.terms)
    loaded = load_model(args.model)
    dataset = FeatureDataset(read_manifest(args.data), loaded.processor, multilingual=loaded.multilingual,
                             progress=False)
    rows = []
    for setting in args.setting:
        rows.append({"model": args.model, **measure(loaded, dataset, terms, setting, args.batch_size)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(rows))
    else:
        keys = ["model", "beams", "weight", "start_weight", "wer", "term_recall", "term_insertions", "seconds"]
        print_table(keys, [[str(row[k]) for k in keys] for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
