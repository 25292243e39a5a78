"""Evaluation that decodes as deployment does: asrtune's ``greedy`` and ``deploy`` against faster-whisper.

    python benchmarks/decoding.py bundled:tiny.en runs/demo/run --data runs/demo/data/test/manifest.jsonl \\
        --work-dir runs/bench-decoding [--max-new-tokens 128] [--threads 2] [--json]

For each model: ``asrtune evaluate MODEL --decoding greedy`` and ``--decoding deploy`` (the same features, one
model load), then the model's CTranslate2 export (``asrtune export MODEL --to ct2 --quantization float32``, so the
weights are the ones asrtune decoded) transcribed by faster-whisper's ``WhisperModel.transcribe`` with its
defaults (5 beams, best of 5, temperatures 0.0 to 1.0 by 0.2, compression-ratio threshold 2.4, log-prob threshold
-1, no-speech threshold 0.6, condition on previous text), with two settings matched to the evaluation:
``without_timestamps=True`` (asrtune decodes with ``<|notimestamps|>``, the prompt it trains with: transcribing
with timestamps is another search, whose text differs; its WER is printed too) and ``max_new_tokens`` (the cap
asrtune decodes with). faster-whisper gets the same samples asrtune decodes (its ``load_audio``: soundfile + soxr,
16 kHz), so the comparison is of decoding alone. Prints, per model, the WER of each decoding and how many
hypotheses ``deploy`` shares with faster-whisper exactly (and after Whisper's normaliser), with the rows that
differ. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from asrtune.cli import quiet_libraries
from asrtune.data.audio import load_audio
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.evaluation.metrics import score
from asrtune.evaluation.normalize import normalizer_for
from asrtune.export.ct2 import export_ct2
from asrtune.report import print_table
from asrtune.runs.load import load_model


def faster_whisper_texts(ct2_dir: Path, audio: list, *, language: str | None, max_new_tokens: int,
                         timestamps: bool, threads: int) -> list[str]:
    """faster-whisper's transcript of each clip (segments joined), its defaults but the two matched settings."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=threads)
    texts = []
    for samples in audio:
        segments, _ = model.transcribe(samples, language=language, without_timestamps=not timestamps,
                                       max_new_tokens=max_new_tokens)
        texts.append(" ".join(segment.text.strip() for segment in segments).strip())
    return texts


def compare(model: str, manifest: Path, args: argparse.Namespace) -> dict:
    loaded = load_model(model)
    utterances = read_manifest(manifest)
    dataset = FeatureDataset(utterances, loaded.processor, multilingual=loaded.multilingual, progress=False)
    record: dict = {"model": model, "n": len(utterances)}
    hypotheses = {}
    for decoding in ("greedy", "deploy"):
        started = time.perf_counter()
        evaluation = evaluate_dataset(loaded, dataset, max_new_tokens=args.max_new_tokens, decoding=decoding,
                                      batch_size=args.batch_size, progress=False, desc=f"decode {decoding}")
        summary = evaluation.summary()
        record[decoding] = {"wer": round(evaluation.scores.wer, 4), "seconds": round(time.perf_counter() - started, 1),
                            **{k: summary[k] for k in ("loops", "hit_max_new_tokens", "temperature_fallbacks",
                                                       "no_speech")}}
        hypotheses[decoding] = evaluation.hypotheses
    ct2_dir = args.work_dir / (model.replace(":", "-").replace("/", "_").strip("._-") + "-ct2")
    if not (ct2_dir / "model.bin").is_file():
        export_ct2(loaded.source, ct2_dir, quantization="float32", overwrite=True, check=False)
    audio = [load_audio(u.audio) for u in utterances]
    language = "en" if loaded.multilingual else None
    references = [u.text for u in utterances]
    normalise = normalizer_for("en")
    for name, timestamps in (("faster_whisper", False), ("faster_whisper_timestamps", True)):
        started = time.perf_counter()
        texts = faster_whisper_texts(ct2_dir, audio, language=language, max_new_tokens=args.max_new_tokens,
                                     timestamps=timestamps, threads=args.threads)
        record[name] = {"wer": round(score(references, texts, "en").wer, 4),
                        "seconds": round(time.perf_counter() - started, 1),
                        "same_as_deploy": sum(a == b for a, b in zip(texts, hypotheses["deploy"], strict=True)),
                        "same_normalised": sum(normalise(a) == normalise(b)
                                               for a, b in zip(texts, hypotheses["deploy"], strict=True))}
        hypotheses[name] = texts
    record["differing"] = [{"id": u.id, "deploy": d, "faster_whisper": f}
                           for u, d, f in zip(utterances, hypotheses["deploy"], hypotheses["faster_whisper"],
                                              strict=True) if d != f]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="faster-whisper's CPU threads")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-decoding"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_libraries()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for model in args.models:
        records.append(compare(model, args.data, args))
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(records))
        return 0
    rows = []
    for r in records:
        same, same_norm, n = r["faster_whisper"]["same_as_deploy"], r["faster_whisper"]["same_normalised"], r["n"]
        rows.append([r["model"], str(r["greedy"]["wer"]), str(r["deploy"]["wer"]), str(r["faster_whisper"]["wer"]),
                     str(r["faster_whisper_timestamps"]["wer"]), f"{same} / {n} ({same / n:.0%})",
                     f"{same_norm} / {n}", str(r["deploy"]["temperature_fallbacks"]),
                     f"{r['greedy']['seconds']} / {r['deploy']['seconds']} / {r['faster_whisper']['seconds']}"])
    print_table(["model", "WER greedy", "WER deploy", "WER faster-whisper", "WER f-w with timestamps",
                 "deploy = faster-whisper", "same normalised", "deploy fallbacks", "s greedy / deploy / f-w"], rows)
    for r in records:
        for row in r["differing"][:10]:
            print(f"{r['model']} {row['id']}\n  deploy:         {row['deploy']}\n  faster-whisper: {row['faster_whisper']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
