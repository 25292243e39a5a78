"""asrtune from Python: train, load, evaluate and transcribe as the command line does.

``import asrtune`` exposes these lazily (``asrtune.train``, ``asrtune.evaluate``, ...), so importing the package
costs nothing until one is used. The commands ``asrtune evaluate`` and ``asrtune transcribe`` are these
functions plus printing.

Example::

    import asrtune

    results = asrtune.train("configs/medical-decoder.yaml", "runs/py", loop={"max_steps": 30})
    scores = asrtune.evaluate("runs/py", "runs/demo/data/test/manifest.jsonl")
    print(results["final_wer"], scores["wer"])
    print(asrtune.transcribe("runs/py", ["dictation.wav"])[0].text)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from asrtune.config import RunConfig, config_from_dict, config_to_dict, load_config
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.decodings import DECODINGS
from asrtune.errors import AsrtuneError
from asrtune.evaluation.biasing import DEFAULT_BIAS_WEIGHT, bias_processor
from asrtune.evaluation.decode import evaluate_dataset, scoring_language, write_predictions
from asrtune.evaluation.metrics import score
from asrtune.evaluation.terms import TermList, read_terms, term_report
from asrtune.evaluation.timing import boundary_errors, error_summary, paired_difference
from asrtune.data.audio import load_audio
from asrtune.inference.align import AlignOptions, Alignment, align_transcript
from asrtune.inference.longform import (FALLBACK_TEMPERATURES, TranscribeOptions, Transcript, TranscribeStats,
                                        prepare_for_inference, transcribe_files)
from asrtune.models.load import LoadedModel, is_run_dir, run_model_source
from asrtune.runs.load import load_model
from asrtune.training.recipe import train as train_run

__all__ = ["train", "load_config", "RunConfig", "load_model", "evaluate", "transcribe", "transcribe_audio",
           "bias_terms", "align"]


def _merged(values: dict, overrides: Mapping[str, object]) -> dict:
    merged = dict(values)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}  # a section: its keys replace the config's, one by one
        else:
            merged[key] = value
    return merged


def train(config: RunConfig | str | Path | Mapping, output_dir: str | Path, *, resume: bool = False,
          progress: bool = True, **overrides: object) -> dict:
    """Fine-tune a model; returns what the run folder's ``results.json`` holds.

    Args:
        config: a :class:`RunConfig`, a YAML run config's path, or the config as a mapping.
        output_dir: the run folder (``asrtune train --output-dir``).
        resume: continue the run in ``output_dir`` from its last checkpoint.
        progress: show progress bars.
        overrides: top-level keys (``strategy="lora:r=16,alpha=32"``) or sections whose keys replace the
            config's one by one (``loop={"max_steps": 30}``).

    Raises:
        AsrtuneError: a bad config or override (before any model loads), or a failed run.
    """
    if isinstance(config, RunConfig):
        values = config_to_dict(config)
    elif isinstance(config, Mapping):
        values = dict(config)
    else:
        values = config_to_dict(load_config(config))
    return train_run(config_from_dict(_merged(values, overrides)), output_dir, resume=resume, progress=progress)


def bias_terms(bias: str | Path | None, weight: float | None = None,
               start_weight: float | None = None) -> TermList | None:
    """The term list decoding is biased to (read now, so a bad list fails before any model loads), or None.

    Raises:
        AsrtuneError: a weight without a list; a missing, unreadable or empty list.
    """
    if bias is None:
        if weight is not None or start_weight is not None:
            raise AsrtuneError("--bias-weight and --bias-start-weight need --bias FILE (the terms to bias towards)")
        return None
    return read_terms(bias)


def _loaded(model: str | LoadedModel) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(str(model))


def _bias(loaded: LoadedModel, terms: TermList | None, weight: float | None, start_weight: float | None):
    if terms is None:
        return None
    return bias_processor(loaded.processor.tokenizer, terms, DEFAULT_BIAS_WEIGHT if weight is None else weight,
                          start_weight=start_weight)


def evaluate(model: str | LoadedModel, data: str | Path, *, language: str | None = None, batch_size: int = 16,
             max_new_tokens: int = 128, short_input: bool = False, terms: str | Path | None = None,
             bias: str | Path | None = None, bias_weight: float | None = None,
             bias_start_weight: float | None = None, num_beams: int = 1, decoding: str = "greedy",
             progress: bool = True, predictions: str | Path | None = None, timestamps: bool = False,
             ctc: bool = False) -> dict:
    """WER and CER of a model (any source, a run folder too) on a manifest, decoded greedily, with beams, or as
    deployment decodes.

    Args:
        model: a model source or an already loaded model.
        data: a manifest (JSONL).
        language: for rows without one.
        terms: a term list to score (term recall and insertions).
        bias: a term list to bias decoding towards; ``bias_weight`` / ``bias_start_weight`` its bonuses.
        decoding: ``greedy`` (``num_beams`` > 1: beam search) or ``deploy`` (faster-whisper's ``transcribe``
            defaults; Whisper only; see :mod:`asrtune.decodings`).
        predictions: also write the per-utterance hypotheses here (JSONL).
        timestamps: also transcribe the rows that have ``segments`` long-form with timestamps (as ``asrtune
            transcribe``) and report the segment boundary error against them (``timestamps``), for a run folder
            beside its base model's, with the paired change of the median.
        ctc: decode greedily with the CTC head instead of ``generate`` (LLM families aligned with CTC).

    Returns:
        ``asrtune evaluate --json``'s record (``model``, ``data``, ``decoding``, ``num_beams``, ``wer``, ``cer``,
        ``raw_wer``, error counts, ``n``, ``scoring_language``; the count and first ids of the rows that hit
        ``max_new_tokens``, looped, fell back from the bias, fell back to sampling or were taken for silence;
        ``bias``, ``term_recall``, ``term_insertions`` and ``terms`` when asked for) and ``predictions``:
        ``{"id", "reference", "hypothesis", "truncated"}`` per utterance (truncated: stopped at ``max_new_tokens``).

    Raises:
        AsrtuneError: a bad term list or decoding, before the model loads where it can be told.
    """
    if decoding not in DECODINGS:
        raise AsrtuneError(f"--decoding must be one of {', '.join(DECODINGS)}, not {decoding!r}")
    if decoding == "deploy" and (num_beams != 1 or short_input):
        raise AsrtuneError("--decoding deploy is faster-whisper's search (5 beams, the 30 s window): it takes no "
                           "--num-beams and no --short-input")
    term_list = read_terms(terms) if terms else None  # a bad list fails before the model loads
    biased = bias_terms(bias, bias_weight, bias_start_weight)
    timed_rows = [u for u in read_manifest(data) if u.segments] if timestamps else []
    if timestamps and not timed_rows:
        raise AsrtuneError(f"--timestamps: no row of {data} has segments (times to compare with)")
    loaded = _loaded(model)
    processor = _bias(loaded, biased, bias_weight, bias_start_weight)
    dataset = FeatureDataset(read_manifest(data), loaded.processor, multilingual=loaded.multilingual,
                             language=language)
    evaluation = evaluate_dataset(loaded, dataset, language=language, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens, short_input=short_input, logits_processor=processor,
                                  num_beams=num_beams, decoding=decoding, progress=progress, ctc=ctc)
    if predictions:
        write_predictions(evaluation, predictions)
    language_scored = scoring_language(dataset, language)
    record = {"model": loaded.source, "data": str(data), "num_beams": num_beams, **evaluation.summary(),
              "scoring_language": language_scored}
    if processor is not None:
        record["bias"] = {"terms": str(bias), "weight": processor[0].weight,
                          "start_weight": processor[0].start_weight}
        record["bias_sequences"] = processor[0].trie.sequences
    if term_list is not None:
        found = term_report(evaluation.references, evaluation.hypotheses, term_list, language_scored)
        record.update(term_recall=found["term_recall"], term_insertions=found["term_insertions"], terms=found)
    capped = set(evaluation.capped_ids)
    record["predictions"] = [{"id": i, "reference": r, "hypothesis": h, "truncated": i in capped} for i, r, h
                             in zip(evaluation.ids, evaluation.references, evaluation.hypotheses, strict=True)]
    if timed_rows:
        record["timestamps"] = _timestamp_quality(loaded, model, timed_rows, progress)
    return record


def _boundary_errors(loaded: LoadedModel, rows, progress: bool):
    """Boundary errors (seconds) of every row's segments against a long-form transcription, and its WER."""
    loaded = prepare_for_inference(loaded)
    transcripts, _ = transcribe_files(loaded, [u.audio for u in rows], TranscribeOptions(), progress=progress)
    errors = [boundary_errors(u.segments, t.segments) for u, t in zip(rows, transcripts, strict=True)]
    wer = score([u.text for u in rows], [t.text for t in transcripts], rows[0].language or "en").wer
    return np.concatenate(errors), wer


def _timestamp_quality(loaded: LoadedModel, source, rows, progress: bool) -> dict:
    errors, wer = _boundary_errors(loaded, rows, progress)
    quality = {"rows": len(rows), "segments": sum(len(u.segments) for u in rows),
               "boundary_error": error_summary(errors), "long_form_wer": wer}
    if isinstance(source, (str, Path)) and is_run_dir(Path(source)):
        base = run_model_source(Path(source))
        base_errors, base_wer = _boundary_errors(load_model(base), rows, progress)
        quality["base"] = {"model": base, "boundary_error": error_summary(base_errors), "long_form_wer": base_wer}
        quality["median_change"] = paired_difference(base_errors, errors)
    return quality


def transcribe_audio(model: str | LoadedModel, audio: str | Path | Sequence[str | Path], *,
                     language: str | None = None, task: str = "transcribe", batch_size: int = 4,
                     prompt: str | None = None, condition_on_previous_text: bool = True, fallback: bool = True,
                     max_new_tokens: int | None = None, num_beams: int = 1, bias: str | Path | None = None,
                     bias_weight: float | None = None, bias_start_weight: float | None = None,
                     device: str | torch.device | None = None, progress: bool = True,
                     on_file: Callable[[int, Transcript], None] | None = None, word_timestamps: bool = False,
                     ) -> tuple[list[Transcript], TranscribeStats]:
    """:func:`transcribe`, with the totals (audio seconds, decode seconds, real-time factor)."""
    paths = [audio] if isinstance(audio, (str, Path)) else list(audio)
    options = TranscribeOptions(language=language, task=task, batch_size=batch_size, prompt=prompt,
                                condition_on_previous_text=condition_on_previous_text,
                                temperatures=FALLBACK_TEMPERATURES if fallback else (0.0,),
                                max_new_tokens=max_new_tokens, num_beams=num_beams, word_timestamps=word_timestamps)
    biased = bias_terms(bias, bias_weight, bias_start_weight)  # a bad list fails before the model loads
    loaded = _loaded(model)
    if not loaded.family.long_form:
        raise AsrtuneError(f"asrtune transcribe (long-form, timestamps) runs Whisper models; {loaded.source} is a "
                           f"{loaded.family.display_name} model: score it with `asrtune evaluate MODEL --data "
                           "MANIFEST`, or run its `asrtune export --to hf` folder with transformers")
    loaded = prepare_for_inference(loaded)
    loaded.model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return transcribe_files(loaded, paths, options, progress=progress, on_file=on_file,
                            logits_processor=_bias(loaded, biased, bias_weight, bias_start_weight))


def transcribe(model: str | LoadedModel, audio: str | Path | Sequence[str | Path], **options) -> list[Transcript]:
    """Long-form transcription with segment timestamps, window by window as openai/whisper and faster-whisper do.

    Args:
        model: a Whisper model source (a run folder too) or an already loaded model (prepared for inference in
            place: a LoRA run is merged).
        audio: one audio file or several (anything libsndfile reads).
        options: see :func:`transcribe_audio` (language, task, batch_size, prompt, condition_on_previous_text,
            fallback, max_new_tokens, num_beams, bias, bias_weight, bias_start_weight, device, progress, on_file,
            word_timestamps: every word's time, by forced alignment of the transcript).

    Returns:
        One :class:`~asrtune.inference.longform.Transcript` per file, in order (``.text``, ``.segments``,
        ``.as_dict()``).
    """
    return transcribe_audio(model, audio, **options)[0]


def align(model: str | LoadedModel, audio: str | Path, transcript: str, *, language: str | None = None,
          device: str | torch.device | None = None, progress: bool = True) -> Alignment:
    """Forced alignment: every word of ``transcript`` (the text, any length) with its time in ``audio``.

    Args:
        model: a Whisper model source (a run folder too) or an already loaded model.
        audio: one recording of any length (anything libsndfile reads).
        transcript: what it says, as written (words are split at whitespace).
        language: the transcript's language (multilingual models; default English).

    Returns:
        An :class:`~asrtune.inference.align.Alignment`: ``.words`` in order (``text``, ``start``, ``end`` in
        seconds, ``score``, ``heard``: False for text the audio does not contain), ``.as_dict()``.
    """
    samples = load_audio(audio)  # a missing or unreadable file fails before the model loads
    loaded = prepare_for_inference(_loaded(model))
    loaded.model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return align_transcript(loaded, samples, transcript, AlignOptions(language=language), progress=progress)
