"""Forced alignment on a long recording with known boundaries: `asrtune prepare --align` as a user runs it.

    python benchmarks/alignment.py [--model bundled:tiny.en] [--corpus medical_en] [--voice en-us+f4]
                                   [--utterances 12] [--work-dir runs/bench-alignment]

Speaks ``--utterances`` utterances of two consecutive ``--corpus`` sentences each in ``--voice`` (a voice the
demo never trains on), joins them with seeded pauses (0.3-1.2 s) into one recording whose utterance boundaries
are known (``asrtune.data.concat``), and writes a plain-transcript manifest twice: the true transcript, and one
with a sentence the audio does not contain put in the middle. Runs ``asrtune prepare --align MODEL`` on each and
reports: pieces and their longest, words kept of the spoken words, the boundary error of each utterance's first
word start and last word end against the known boundaries (from the pieces' segments), and what was dropped
with the reason ``alignment``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from asrtune.data.audio import load_audio
from asrtune.data.clean import CleanSettings
from asrtune.data.concat import join_utterances
from asrtune.data.manifest import read_manifest
from asrtune.data.prepare import PrepareSettings, prepare
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.demo import corpus_lines
from asrtune.inference.align import align_transcript
from asrtune.inference.longform import prepare_for_inference
from asrtune.report import print_table
from asrtune.runs.load import load_model

INSERTED = "The committee approved the new budget for the school library."


def _edge_errors(words, lines: list[str], truth: list) -> list[float]:
    """|first word start - utterance start| and |last word end - utterance end| for every known utterance."""
    errors, cursor = [], 0
    heard = [w for w in words if w.text not in INSERTED.split() or w.heard]
    for line, span in zip(lines, truth, strict=True):
        count = len(line.split())
        first, last = heard[cursor], heard[cursor + count - 1]
        errors += [abs(first.start - span.start), abs(last.end - span.end)]
        cursor += count
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:tiny.en")
    parser.add_argument("--corpus", default="medical_en")
    parser.add_argument("--voice", default="en-us+f4")
    parser.add_argument("--utterances", type=int, default=12)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-alignment"))
    args = parser.parse_args()
    work = args.work_dir
    sentences = corpus_lines(args.corpus)[-2 * args.utterances:]
    lines = [f"{sentences[2 * i]} {sentences[2 * i + 1]}" for i in range(args.utterances)]
    spoken = read_manifest(synthesise_lines(lines, work / "spoken", settings=SynthSettings(voice=args.voice, seed=7),
                                            prefix="utt", language="en"))
    truth = join_utterances(spoken, work / "recording.wav", seed=0)
    samples = load_audio(work / "recording.wav")
    loaded = prepare_for_inference(load_model(args.model))
    rows = []
    half = len(lines) // 2
    for name, text in (("true transcript", lines), ("one sentence not in the audio",
                                                    lines[:half] + [INSERTED] + lines[half:])):
        started = time.perf_counter()
        alignment = align_transcript(loaded, samples, " ".join(text))
        seconds = time.perf_counter() - started
        manifest = work / f"{name.split()[0]}.jsonl"
        manifest.write_text(json.dumps({"id": "rec", "audio": "recording.wav", "text": " ".join(text)}) + "\n")
        out = work / f"{name.split()[0]}-pieces.jsonl"
        report = prepare(manifest, out, settings=PrepareSettings(model=args.model, progress=False,
                                                                 clean=CleanSettings(align=True)),
                         aligner=lambda row, audio, words=alignment.words: words)  # the alignment above
        kept = read_manifest(out)
        errors = _edge_errors(alignment.words, lines, truth)
        drops = [d["detail"] for d in report["dropped"] if d["reason"] == "alignment"]
        rows.append([name, str(len(kept)), f"{max(u.duration for u in kept):.1f}",
                     f"{report['alignment']['words_kept']} / {sum(len(line.split()) for line in lines)}",
                     f"{statistics.median(errors):.3f}", f"{statistics.mean(errors):.3f}", f"{max(errors):.3f}",
                     f"{report['alignment']['kept_score_min']:.2f}", f"{seconds:.0f}", "; ".join(drops) or "none"])
    print_table(["transcript", "pieces", "longest s", "words kept / spoken", "median edge err s", "mean s", "max s",
                 "lowest piece score", "align s", "dropped (alignment)"], rows)
    print(f"{len(truth)} utterances, {truth[-1].end:.1f} s, voice {args.voice}, model {args.model}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
