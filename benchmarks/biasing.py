"""What decoding-time term biasing buys where it was not tuned: WER, insertions, term recall and fallbacks per cell.

    python benchmarks/biasing.py bundled:tiny.en bundled:base runs/demo/run \\
        --sets benchmarks/data/biasing --voices en-gb-scotland,en-gb-x-gbcwmd \\
        --terms benchmarks/data/biasing/terms.txt --work-dir runs/bench-biasing [--setting 1 --setting 1:2]
    python benchmarks/biasing.py bundled:tiny.en --data runs/demo/data/test/manifest.jsonl \\
        --terms packaged:medical_terms_en --setting 1 --setting 4:2:1 --setting 4:4:2 [--json]

A cell is one sentence set read by one voice: every ``*.txt`` of ``--sets`` but the term list (one sentence a
line) is spoken by each of ``--voices`` with espeak-ng into ``--work-dir`` (kept and reused); ``--data`` gives one
ready manifest instead. A setting is ``BEAMS[:WEIGHT[:START_WEIGHT]]`` (no weight: unbiased; no start weight: the
weight), the decode ``asrtune evaluate MODEL --num-beams BEAMS --bias TERMS --bias-weight WEIGHT
--bias-start-weight START_WEIGHT`` runs (greedy with the repetition guard; a biased row that loops, runs to the
cap or is too repetitive is decoded again unbiased and counted as a fallback). The features of a cell are computed
once for all settings. Each row is printed (JSON, stderr) as soon as it is measured and appended to
``--work-dir/rows.jsonl``; a row already there is not measured again. At the end, per model and biased setting,
each cell against the first (unbiased) setting and the worst cell. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asrtune.cli import quiet_libraries
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, parse_voices, read_text_lines, synthesise_lines
from asrtune.evaluation.biasing import bias_processor
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.evaluation.terms import read_terms, term_report
from asrtune.report import print_table
from asrtune.runs.load import load_model


def parse_setting(text: str) -> tuple[int, float | None, float | None]:
    """``BEAMS[:WEIGHT[:START_WEIGHT]]`` -> (beams, weight or None, start weight or None)."""
    parts = text.split(":")
    beams = int(parts[0])
    weight = float(parts[1]) if len(parts) > 1 else None
    start = float(parts[2]) if len(parts) > 2 else None
    return beams, weight, start


def cells(args: argparse.Namespace) -> dict[str, Path]:
    """Cell name -> manifest: ``--data``, or every sentence set of ``--sets`` spoken by every voice."""
    if args.data:
        return {args.data.parent.name or "data": args.data}
    terms_file = Path(args.terms).resolve() if not str(args.terms).startswith("packaged:") else None
    found = {}
    for text_file in sorted(Path(args.sets).glob("*.txt")):
        if text_file.resolve() == terms_file:
            continue
        for voice in parse_voices(args.voices):
            name = f"{text_file.stem}/{voice}"
            out = args.work_dir / "data" / text_file.stem / voice
            found[name] = synthesise_lines(read_text_lines(text_file), out, settings=SynthSettings(voice=voice),
                                           prefix=f"{text_file.stem}-{voice}", language="en", progress=False)
    return found


def measure(loaded, dataset, terms, setting: str, batch_size: int) -> dict:
    beams, weight, start = parse_setting(setting)
    bias = None if weight is None else bias_processor(loaded.processor.tokenizer, terms, weight, start_weight=start)
    started = time.perf_counter()
    evaluation = evaluate_dataset(loaded, dataset, batch_size=batch_size, progress=False, logits_processor=bias,
                                  num_beams=beams, desc=f"decode {setting}")
    found = term_report(evaluation.references, evaluation.hypotheses, terms, "en")
    summary = evaluation.summary()
    return {"setting": setting, "beams": beams, "weight": weight,
            "start_weight": start if start is not None or weight is None else weight,
            "wer": round(evaluation.scores.wer, 4), "insertions": evaluation.scores.insertions,
            "words": evaluation.scores.reference_words, "term_recall": round(found["term_recall"], 4),
            "term_hits": found["term_hits"], "term_occurrences": found["term_occurrences"],
            "term_insertions": found["term_insertions"], "bias_fallbacks": summary["bias_fallbacks"],
            "loops": summary["loops"], "capped_ids": evaluation.capped_ids,
            "seconds": round(time.perf_counter() - started, 1)}


def _done(path: Path) -> dict[tuple[str, str, str], dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["model"], row["cell"], row["setting"]): row for row in rows}


def summary_rows(rows: list[dict], baseline: str) -> list[list[str]]:
    """Per model, biased setting and cell: the change against ``baseline``; then that model's worst cell."""
    table = []
    by_key = {(r["model"], r["cell"], r["setting"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for setting in dict.fromkeys(r["setting"] for r in rows if r["model"] == model and r["setting"] != baseline):
            changes = []
            for cell in dict.fromkeys(r["cell"] for r in rows if r["model"] == model):
                plain, biased = by_key.get((model, cell, baseline)), by_key.get((model, cell, setting))
                if plain is None or biased is None:
                    continue
                wer_cost = 100 * (biased["wer"] - plain["wer"])
                recall_gain = 100 * (biased["term_recall"] - plain["term_recall"])
                new_caps = len(set(biased["capped_ids"]) - set(plain["capped_ids"]))
                changes.append((wer_cost, recall_gain))
                table.append([model, setting, cell, f"{plain['wer']:.3f} -> {biased['wer']:.3f} ({wer_cost:+.1f})",
                              f"{plain['insertions']} -> {biased['insertions']}",
                              f"{plain['term_recall']:.3f} -> {biased['term_recall']:.3f} ({recall_gain:+.1f})",
                              f"{biased['term_hits']} / {biased['term_occurrences']}", str(biased["term_insertions"]),
                              str(biased["bias_fallbacks"]), str(new_caps)])
            if changes:
                table.append([model, setting, "worst cell", f"({max(c[0] for c in changes):+.1f})", "",
                              f"({min(c[1] for c in changes):+.1f})", "", "", "", ""])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, help="one manifest instead of --sets x --voices")
    parser.add_argument("--sets", type=Path, default=Path("benchmarks/data/biasing"),
                        help="folder of sentence sets (*.txt, one sentence a line)")
    parser.add_argument("--voices", default="en-gb-scotland,en-gb-x-gbcwmd", help="espeak-ng voices, comma-separated")
    parser.add_argument("--terms", default="benchmarks/data/biasing/terms.txt", help="biased towards and scored")
    parser.add_argument("--setting", action="append", help="BEAMS[:WEIGHT[:START_WEIGHT]] (default: 1 and 1:2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-biasing"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_libraries()
    settings = args.setting or ["1", "1:2"]
    terms = read_terms(args.terms)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = args.work_dir / "rows.jsonl"
    done = _done(log)
    manifests = cells(args)
    rows = []
    for model in args.models:
        loaded = None
        for cell, manifest in manifests.items():
            dataset = None
            for setting in settings:
                if (model, cell, setting) in done:
                    rows.append(done[(model, cell, setting)])
                    continue
                loaded = loaded or load_model(model)
                dataset = dataset or FeatureDataset(read_manifest(manifest), loaded.processor,
                                                    multilingual=loaded.multilingual, progress=False)
                rows.append({"model": model, "cell": cell,
                             **measure(loaded, dataset, terms, setting, args.batch_size)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                with log.open("a") as handle:
                    handle.write(json.dumps(rows[-1]) + "\n")
    if args.json:
        print(json.dumps(rows))
        return 0
    keys = ["model", "cell", "setting", "wer", "insertions", "term_recall", "term_insertions", "bias_fallbacks",
            "loops", "seconds"]
    print_table(keys, [[str(row[k]) for k in keys] for row in rows])
    print()
    print_table(["model", "setting", "cell", "WER (points)", "insertions", "term recall (points)", "hits",
                 "term insertions", "fallbacks", "new max_new_tokens rows"], summary_rows(rows, settings[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
