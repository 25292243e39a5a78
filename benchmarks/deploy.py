"""Deployment measurements: vocabulary-prompt effect, long-form timestamps and RTF, ARCTIC through CT2.

    python benchmarks/deploy.py prompt   --models bundled:tiny.en runs/demo/run \\
        --train runs/demo/data/train/manifest.jsonl --test runs/demo/data/test/manifest.jsonl
    python benchmarks/deploy.py longform --models bundled:tiny.en runs/demo/run \\
        --test runs/demo/data/test/manifest.jsonl --minutes 2 --work-dir runs/bench-deploy
    python benchmarks/deploy.py arctic   --models bundled:tiny.en runs/demo/run --wav arctic_a0007.wav

``prompt``: WER on the test manifest through ``asrtune transcribe``'s decoding, with and without a
prompt listing domain terms taken from the *train* split only (words the model's tokenizer splits into
3+ pieces and the general corpus lacks, most frequent first, up to ``--prompt-tokens``), and how often
the prompt's terms that occur in the test references come out spelled right.

``longform``: test utterances concatenated with 0.8 s pauses into one file of ``--minutes``; each
model transcribes it to srt; prints WER on the whole file, RTF, segment count, and how well segment
boundaries match the known utterance boundaries (median distance from each utterance end to the
nearest segment end; share within 0.5 s) plus :func:`timestamp_issues`.

``arctic``: the CMU ARCTIC clip through HF greedy decoding and through the ctranslate2 runtime for
float32 / int8 / float16 exports of each model (same features, same prompt), and faster-whisper (int8).

Prints tables and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.metrics import score
from asrtune.evaluation.normalize import normalizer_for
from asrtune.inference import TranscribeOptions, prepare_for_inference, render, timestamp_issues, transcribe_files
from asrtune.inference.longform import FALLBACK_TEMPERATURES
from asrtune.runs.load import load_model
from asrtune.report import print_table

GENERAL_CORPUS = Path(__file__).resolve().parents[1] / "src" / "asrtune" / "data" / "corpora" / "general_en.txt"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z'-]+", text.lower())


def domain_terms(train_texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Rare words of the train texts, most frequent first, as many as fit in ``max_tokens`` prompt tokens."""
    general = set(_words(GENERAL_CORPUS.read_text(encoding="utf-8")))
    counts = collections.Counter(w for text in train_texts for w in _words(text))
    terms, used = [], 1  # <|startofprev|>
    for word, _ in counts.most_common():
        if word in general or len(tokenizer.encode(" " + word, add_special_tokens=False)) < 3:
            continue
        cost = len(tokenizer.encode(" " + word + ",", add_special_tokens=False))
        if used + cost > max_tokens:
            break
        terms.append(word)
        used += cost
    return terms


def _term_hits(terms: set[str], references: list[str], hypotheses: list[str]) -> tuple[int, int]:
    """(prompt terms found in the hypothesis, prompt terms in the reference), counted per utterance."""
    found = total = 0
    for ref, hyp in zip(references, hypotheses):
        hyp_words = set(_words(hyp))
        for word in set(_words(ref)) & terms:
            total += 1
            found += word in hyp_words
    return found, total


def cmd_prompt(args: argparse.Namespace) -> None:
    train = [u.text for u in read_manifest(args.train)]
    test = read_manifest(args.test)
    references = [u.text for u in test]
    rows, report = [], {}
    for source in args.models:
        loaded = prepare_for_inference(load_model(source))
        terms = domain_terms(train, loaded.processor.tokenizer, args.prompt_tokens)
        prompt = ", ".join(terms) + "."
        test_rare = {w for r in references for w in _words(r)} & set(terms)
        for label, text in (("none", None), (f"{len(terms)} train terms", prompt)):
            options = TranscribeOptions(prompt=text, batch_size=args.batch_size,
                                        temperatures=FALLBACK_TEMPERATURES if args.fallback else (0.0,))
            transcripts, stats = transcribe_files(loaded, [u.audio for u in test], options, progress=True)
            hypotheses = [t.text for t in transcripts]
            scores = score(references, hypotheses, "en")
            found, total = _term_hits(set(terms), references, hypotheses)
            rows.append([source, label, f"{scores.wer:.4f}", f"{scores.cer:.4f}",
                         f"{found}/{total}", f"{stats.rtf:.3f}"])
            report[f"{source} | {label}"] = {"wer": scores.wer, "cer": scores.cer, "term_hits": [found, total],
                                             "rtf": stats.rtf}
            if args.predictions:
                args.predictions.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^\w.-]+", "_", f"{source}-{label}") + ".jsonl"
                with (args.predictions / name).open("w", encoding="utf-8") as handle:
                    for utterance, hypothesis in zip(test, hypotheses):
                        handle.write(json.dumps({"id": utterance.id, "reference": utterance.text,
                                                 "hypothesis": hypothesis}) + "\n")
        print(f"prompt for {source} ({len(loaded.processor.get_prompt_ids(prompt)) - 1} tokens; "
              f"{len(test_rare)} of its terms occur in the test references): {prompt}", file=sys.stderr)
    print_table(["model", "prompt", "WER", "CER", "prompt terms right", "RTF"], rows)
    if args.json:
        print(json.dumps(report))


def _long_file(test_manifest: Path, minutes: float, out: Path) -> tuple[Path, list[str], list[tuple[float, float]]]:
    pause = np.zeros(int(0.8 * SAMPLE_RATE), dtype=np.float32)
    parts, texts, spans, cursor = [], [], [], 0
    for utterance in read_manifest(test_manifest):
        samples = load_audio(utterance.audio)
        spans.append((cursor / SAMPLE_RATE, (cursor + len(samples)) / SAMPLE_RATE))
        texts.append(utterance.text)
        parts += [samples, pause]
        cursor += len(samples) + len(pause)
        if cursor >= minutes * 60 * SAMPLE_RATE:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return out, texts, spans


def cmd_longform(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    wav, texts, spans = _long_file(args.test, args.minutes, work / "long.wav")
    rows = []
    for source in args.models:
        loaded = prepare_for_inference(load_model(source))
        for condition in (True, False):
            options = TranscribeOptions(condition_on_previous_text=condition, prompt=args.prompt)
            (transcript,), stats = transcribe_files(loaded, [wav], options, progress=True)
            tag = re.sub(r"[^\w.-]+", "_", source)
            (work / f"{tag}-{'cond' if condition else 'nocond'}.srt").write_text(render(transcript, "srt"))
            ends = [s.end for s in transcript.segments]
            distances = [min(abs(end - e) for e in ends) for _, end in spans] if ends else [float("inf")]
            wer = score([" ".join(texts)], [transcript.text], "en").wer
            issues = timestamp_issues(transcript)
            rows.append([source, "on" if condition else "off", f"{transcript.duration:.1f}", f"{wer:.4f}",
                         str(len(transcript.segments)), f"{statistics.median(distances):.2f}",
                         f"{sum(d <= 0.5 for d in distances)}/{len(distances)}",
                         str(len(issues)), f"{stats.rtf:.3f}"])
    print_table(["model", "prev text", "audio s", "WER", "segments", "median |end err| s",
                 "utt ends within 0.5 s", "timestamp issues", "RTF"], rows)
    print(f"srt files in {work}", file=sys.stderr)


def cmd_arctic(args: argparse.Namespace) -> None:
    from asrtune.export.ct2 import export_ct2
    from asrtune.export.merge import load_merged
    from asrtune.export.ct2 import _decoder_prompt, _hf_greedy_ids
    from asrtune.export.ct2_runtime import ct2_greedy_ids, load_ct2_whisper

    samples = load_audio(args.wav)
    normalise = normalizer_for("en")
    rows = []
    for source in args.models:
        merged = load_merged(source)
        tokenizer = merged.processor.tokenizer
        features = merged.processor.feature_extractor(samples, sampling_rate=SAMPLE_RATE,
                                                      return_tensors="np").input_features
        prompt = _decoder_prompt(merged)
        hf_ids = _hf_greedy_ids(merged, features, prompt, 100)
        hf_text = tokenizer.decode(hf_ids, skip_special_tokens=True).strip()
        rows.append([source, "HF (transformers)", hf_text, "-", str(normalise(hf_text) == normalise(args.reference))])
        with tempfile.TemporaryDirectory() as tmp:
            for quantization in ("float32", "int8", "float16"):
                out = Path(tmp) / quantization
                export_ct2(merged, out, quantization=quantization, check=False)
                ids = ct2_greedy_ids(load_ct2_whisper(out), features, prompt, max_new_tokens=100)[0]
                ids = [i for i in ids if i != merged.model.generation_config.eos_token_id]
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                rows.append([source, f"ctranslate2 {quantization}", text, str(ids == hf_ids),
                             str(normalise(text) == normalise(args.reference))])
            try:
                import faster_whisper
            except ImportError:
                continue
            model = faster_whisper.WhisperModel(str(Path(tmp) / "int8"), device="cpu", compute_type="int8")
            segments, _ = model.transcribe(args.wav, beam_size=1, language="en")
            text = " ".join(s.text.strip() for s in segments)
            rows.append([source, "faster-whisper int8 greedy", text, "-",
                         str(normalise(text) == normalise(args.reference))])
    print(f"reference: {args.reference}")
    print_table(["model", "runtime", "transcript", "ids == HF", "matches reference"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prompt = sub.add_parser("prompt")
    prompt.add_argument("--models", nargs="+", required=True)
    prompt.add_argument("--train", type=Path, required=True)
    prompt.add_argument("--test", type=Path, required=True)
    prompt.add_argument("--prompt-tokens", type=int, default=200)
    prompt.add_argument("--batch-size", type=int, default=8)
    prompt.add_argument("--fallback", action="store_true",
                        help="temperature fallback as `asrtune transcribe` by default (sampling; slower, noisier "
                             "A/B); default here is greedy, as `--no-fallback`")
    prompt.add_argument("--predictions", type=Path, default=None, help="write hypotheses here (JSONL per run)")
    prompt.add_argument("--json", action="store_true")
    longform = sub.add_parser("longform")
    longform.add_argument("--models", nargs="+", required=True)
    longform.add_argument("--test", type=Path, required=True)
    longform.add_argument("--minutes", type=float, default=2.0)
    longform.add_argument("--prompt", default=None)
    longform.add_argument("--work-dir", type=Path, default=Path("runs/bench-deploy"))
    arctic = sub.add_parser("arctic")
    arctic.add_argument("--models", nargs="+", required=True)
    arctic.add_argument("--wav", type=Path, required=True)
    arctic.add_argument("--reference", default="And you always want to see it in the superlative degree.")
    args = parser.parse_args()
    from asrtune.cli import quiet_libraries

    quiet_libraries()
    {"prompt": cmd_prompt, "longform": cmd_longform, "arctic": cmd_arctic}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
