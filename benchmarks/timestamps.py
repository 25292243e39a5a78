"""Does fine-tuning keep Whisper's timestamps? The demo's run with and without timestamp training.

    python benchmarks/timestamps.py --work-dir runs/bench-timestamps [--steps 30] [--long-utterances 30]

The demo's data (``asrtune.demo.speak_demo_data``: medical dictation and everyday replay sentences in the four
training voices; the test split read by two voices training never hears), with its training sentences joined
into pieces of up to 28 s (several sentences of one voice each, seeded pauses between them: the sentences are
the pieces' known segments, ``asrtune.data.concat.join_into_pieces``). Two runs with the demo's settings
(``asrtune.demo.demo_config``: full, lr 1e-4, 30 steps of 8, WiSE-FT mixes under the demo's forgetting budget)
on those pieces: ``data.timestamps: true`` and ``false``. Then a long held-out recording, the first
``--long-utterances`` test sentences (held-out voices) joined with pauses, is transcribed as ``asrtune
transcribe --format srt`` does, by the base model and both runs; each reference sentence's start and end is
matched to the nearest subtitle start and end (``asrtune.evaluation.timing``).

Prints the boundary errors (median and mean with 95% intervals, the paired change of the median against the
base model), the long recording's WER, and each run's domain WER on the 60 test sentences; writes
``WORK/timestamps.json``. A finished run in the work dir is reused. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from asrtune.config import GeneralSet
from asrtune.data.concat import join_into_pieces, join_utterances
from asrtune.data.manifest import read_manifest
from asrtune.demo import DEMO_SETTINGS, demo_config, real_english_subset, speak_demo_data
from asrtune.evaluation.metrics import score
from asrtune.evaluation.timing import boundary_errors, error_summary, paired_difference
from asrtune.inference import TranscribeOptions, prepare_for_inference, render, transcribe_files
from asrtune.report import print_table
from asrtune.runs.load import load_model
from asrtune.training.recipe import train

REAL_EN = Path("runs/real-en/manifest.jsonl")


def _runs(work: Path, steps: int) -> dict[str, Path]:
    settings = replace(DEMO_SETTINGS, steps=steps)
    manifests = speak_demo_data(work / "demo", 0, settings.replay)
    pieces = join_into_pieces(read_manifest(manifests["train"]), work / "pieces", seed=0)
    general = [GeneralSet(name="everyday_heldout_voice", manifest=str(manifests["general"]))]
    if REAL_EN.is_file():
        general.append(GeneralSet(name="real_english",
                                  manifest=str(real_english_subset(REAL_EN, work / "real_en"))))
    runs = {}
    for name, timestamps in (("without timestamps", False), ("with timestamps", True)):
        run_dir = work / ("run-timestamps" if timestamps else "run-plain")
        if not (run_dir / "results.json").is_file():
            config = demo_config(settings, manifests, tuple(general), 0, train=str(pieces), timestamps=timestamps)
            train(config, run_dir)
        runs[name] = run_dir
    return runs


def _test_wer(run_dir: Path) -> tuple[float, float]:
    test = json.loads((run_dir / "results.json").read_text())["evaluation"]["sets"]["test"]
    return test["base"]["wer"], test["wer"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-timestamps"))
    parser.add_argument("--steps", type=int, default=DEMO_SETTINGS.steps)
    parser.add_argument("--long-utterances", type=int, default=30)
    args = parser.parse_args()
    work = args.work_dir
    runs = _runs(work, args.steps)
    test_rows = read_manifest(work / "demo" / "data" / "test" / "manifest.jsonl")[: args.long_utterances]
    long_wav = work / "long-heldout.wav"
    truth = join_utterances(test_rows, long_wav, seed=1)
    reference_text = " ".join(span.text for span in truth)
    models = {"base (bundled:tiny.en)": "bundled:tiny.en", **{name: str(path) for name, path in runs.items()}}
    report, errors = {"long_recording": {"path": str(long_wav), "seconds": truth[-1].end + 0.5,
                                         "utterances": len(truth)}, "models": {}}, {}
    for label, source in models.items():
        loaded = prepare_for_inference(load_model(source))
        (transcript,), stats = transcribe_files(loaded, [long_wav], TranscribeOptions(), progress=True)
        (work / f"{label.split()[0]}-{'ts' if 'with' in label else 'plain'}.srt").write_text(render(transcript, "srt"))
        errors[label] = boundary_errors(truth, transcript.segments)
        entry = {"segments": len(transcript.segments), "boundary_error": error_summary(errors[label]),
                 "long_wer": score([reference_text], [transcript.text], "en").wer, "rtf": stats.rtf}
        if source in (str(p) for p in runs.values()):
            entry["test_wer_before"], entry["test_wer_after"] = _test_wer(Path(source))
            entry["paired_vs_base"] = paired_difference(errors["base (bundled:tiny.en)"], errors[label])
        report["models"][label] = entry
    rows = []
    for label, entry in report["models"].items():
        summary = entry["boundary_error"]
        paired = entry.get("paired_vs_base")
        rows.append([label, str(entry["segments"]), f"{summary['median']:.3f} [{summary['median_ci95'][0]:.3f}, "
                     f"{summary['median_ci95'][1]:.3f}]",
                     f"{summary['mean']:.3f}" if summary["mean"] != float("inf") else "inf",
                     f"{summary['within_0.2s']:.2f}",
                     "-" if paired is None else f"{paired['median_delta']:+.3f} [{paired['median_delta_ci95'][0]:+.3f}, "
                     f"{paired['median_delta_ci95'][1]:+.3f}]",
                     f"{entry['long_wer']:.3f}",
                     "-" if "test_wer_after" not in entry else f"{entry['test_wer_before']:.3f} -> "
                     f"{entry['test_wer_after']:.3f}"])
    print_table(["model", "segments", "median |boundary err| s [95% CI]", "mean s", "within 0.2 s",
                 "median change vs base [95% CI]", "long-form WER", "test WER before -> after"], rows)
    (work / "timestamps.json").write_text(json.dumps(report, indent=2))
    print(f"{len(truth)} held-out sentences, {truth[-1].end:.0f} s; srt files and timestamps.json in {work}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
