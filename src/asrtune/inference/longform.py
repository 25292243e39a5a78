"""Long-form transcription with timestamps, on transformers' sequential Whisper decoding.

Audio longer than one window (30 s for real Whisper) is decoded the way openai/whisper and
faster-whisper do it: window by window, each window starting at the last timestamp the model
predicted (so no word is cut at a fixed 30 s boundary), conditioned on the previous window's text,
with temperature fallback when a window comes out repetitive (compression ratio) or unlikely (mean
log-probability). transformers' ``WhisperForConditionalGeneration.generate`` implements this when
given the un-truncated features; ``--batch-size`` decodes several files side by side, each file still
sequential. Chunked batching (cutting the audio into fixed 30 s pieces decoded in parallel) was not
chosen: it splits words at window edges, needs stride-merging heuristics, and cannot condition a window
on the previous one, which is what keeps a prompt's vocabulary and the speaker's style across windows.

A vocabulary prompt (``prompt``) goes in through Whisper's ``<|startofprev|>`` slot and is kept for
every window (``prompt_condition_type="all-segments"``), ahead of the previous window's text.

Word timestamps (``word_timestamps``): the transcript is then force-aligned to its audio window by window
(:mod:`asrtune.inference.align`: cross-attention DTW on the alignment heads, as openai/whisper does after
decoding), each segment gets its words, and, as openai/whisper does, a segment's start and end become its first
and last heard word's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.data.rows import Word
from asrtune.errors import AsrtuneError
from asrtune.export.merge import merge_loaded
from asrtune.inference.align import AlignOptions, align_transcript
from asrtune.models.load import LoadedModel
from asrtune.models.new_language import generate_language
from asrtune.models.whisper import deployable_generation_config
from asrtune.strategies.prompt import soft_prompt_length

__all__ = ["FALLBACK_TEMPERATURES", "Segment", "TranscribeOptions", "TranscribeStats", "Transcript",
           "audio_duration", "prepare_for_inference", "prompt_ids", "timestamp_issues", "transcribe_files",
           "with_words"]

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai/whisper's defaults


@dataclass(frozen=True, kw_only=True)
class TranscribeOptions:
    """How to decode.

    Attributes:
        language: language code for multilingual models (None: detected per file); English-only
            models accept only None or "en".
        task: "transcribe" or "translate" (multilingual models only).
        batch_size: files decoded side by side.
        prompt: domain vocabulary or preceding text, passed through Whisper's prompt (``<|startofprev|>``).
        condition_on_previous_text: feed each window the text of the window before it.
        temperatures: greedy first, then these sampling temperatures when a window fails the thresholds.
        compression_ratio_threshold: zlib ratio of a window's token ids above which it is re-decoded
            (transformers measures tokens, not text; 1.35 is its recommended value).
        logprob_threshold: mean log-probability below which a window is re-decoded.
        no_speech_threshold: ``<|nospeech|>`` probability above which a low-confidence window is skipped.
        seed: seed for the sampling fallbacks, so a run is repeatable.
        max_new_tokens: longest text per window (None: what the decoder's 448 positions leave).
        num_beams: beams per window at temperature 0 (1: greedy); with term biasing, a beam that starts
            a term and leaves it falls back.
        word_timestamps: time every word (forced alignment of the transcript); segments then span their words.
    """

    language: str | None = None
    task: str = "transcribe"
    batch_size: int = 4
    prompt: str | None = None
    condition_on_previous_text: bool = True
    temperatures: tuple[float, ...] = FALLBACK_TEMPERATURES
    compression_ratio_threshold: float | None = 1.35
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    seed: int = 0
    max_new_tokens: int | None = None
    num_beams: int = 1
    word_timestamps: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise AsrtuneError(f"batch size must be at least 1, not {self.batch_size}")
        if self.task not in ("transcribe", "translate"):
            raise AsrtuneError(f"task must be transcribe or translate, not {self.task!r}")
        if self.num_beams < 1:
            raise AsrtuneError(f"num beams must be at least 1, not {self.num_beams}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise AsrtuneError(f"max new tokens must be at least 1, not {self.max_new_tokens}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise AsrtuneError("temperatures must be a non-empty list of values >= 0")


@dataclass(frozen=True, kw_only=True)
class Segment:
    """A stretch of text with its time span in seconds from the start of the file (and its words', when timed)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    def as_dict(self, index: int) -> dict:
        entry = {"id": index, "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}
        if self.words:
            entry["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                               "probability": None if w.score is None else round(w.score, 4), "heard": w.heard}
                              for w in self.words]
        return entry


@dataclass(frozen=True, kw_only=True)
class Transcript:
    """One file's transcription."""

    audio: str
    duration: float
    language: str | None
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(segment.text for segment in self.segments)

    def as_dict(self) -> dict:
        return {"audio": self.audio, "duration": round(self.duration, 3), "language": self.language,
                "text": self.text,
                "segments": [s.as_dict(i) for i, s in enumerate(self.segments)]}


@dataclass(frozen=True, kw_only=True)
class TranscribeStats:
    """Totals over a call: ``rtf`` is decode seconds per audio second (below 1 is faster than real time);
    ``window_seconds``: the window decoded at a time; ``device``: where the model ran."""

    files: int
    audio_seconds: float
    decode_seconds: float
    window_seconds: float = 30.0
    device: str = "cpu"

    @property
    def rtf(self) -> float:
        return self.decode_seconds / self.audio_seconds if self.audio_seconds else 0.0


def prepare_for_inference(loaded: LoadedModel) -> LoadedModel:
    """Merge the strategy where it merges (faster decoding), fix the generation config, eval mode.

    Merging happens in place (PEFT's ``merge_and_unload``): use the returned model, not the one passed.
    A strategy whose modules cannot be merged (bottleneck adapters) is decoded as it is.
    """
    if loaded.strategy:
        try:
            merged = merge_loaded(loaded)
            # Nothing of the strategy is left to undo: the returned model is plain Whisper.
            loaded = LoadedModel(model=merged.model, processor=loaded.processor, source=loaded.source,
                                 base_dir=loaded.base_dir, strategy="")
        except AsrtuneError:
            pass
    loaded.model.generation_config = deployable_generation_config(loaded.model.generation_config,
                                                                  loaded.processor.tokenizer)
    loaded.model.eval()
    return loaded


def prompt_ids(loaded: LoadedModel, prompt: str) -> torch.Tensor:
    """``<|startofprev|>`` followed by the prompt's tokens, shape (P,).

    Raises:
        AsrtuneError: the prompt is empty or longer than half the decoder's context (Whisper's limit).
    """
    text = " ".join(prompt.split())
    if not text:
        raise AsrtuneError("--prompt is empty")
    ids = loaded.processor.get_prompt_ids(text, return_tensors="pt")
    limit = loaded.model.config.max_target_positions // 2 - 1
    if len(ids) > limit:
        raise AsrtuneError(f"--prompt is {len(ids) - 1} tokens; Whisper takes at most {limit - 1}")
    return ids


def audio_duration(path: str | Path) -> float:
    """Seconds of audio in a file, from its header.

    Raises:
        AsrtuneError: the file is missing or libsndfile cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"audio file not found: {path}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AsrtuneError(f"cannot decode audio {path}: {error}") from error
    if info.frames <= 0:
        raise AsrtuneError(f"audio file is empty: {path}")
    return info.frames / info.samplerate


def _languages(loaded: LoadedModel, options: TranscribeOptions) -> str | None:
    """The language token to force, or None (English-only model, or detection)."""
    generation = loaded.model.generation_config
    if not getattr(generation, "is_multilingual", False):
        if options.language not in (None, "en", "english"):
            raise AsrtuneError(f"this model is English-only; it cannot transcribe language "
                               f"{options.language!r}")
        if options.task == "translate":
            raise AsrtuneError("this model is English-only; it cannot translate")
        return None
    if options.language is None:
        return None
    token = f"<|{options.language.lower()}|>"
    if token not in (getattr(generation, "lang_to_id", None) or {}):
        raise AsrtuneError(f"language {options.language!r} is not one this Whisper model knows")
    return token


@torch.no_grad()
def _detect(loaded: LoadedModel, features: torch.Tensor) -> list[str]:
    """Language tokens (``<|xx|>``) detected on each file's first window."""
    window = 2 * loaded.model.config.max_source_positions
    ids = loaded.model.detect_language(input_features=features[:, :, :window])
    return loaded.processor.tokenizer.convert_ids_to_tokens(ids.view(-1).tolist())


def _features(loaded: LoadedModel, samples: list, device: torch.device, dtype: torch.dtype):
    extractor = loaded.processor.feature_extractor
    longest = max(len(s) for s in samples)
    padding = "max_length" if longest <= extractor.n_samples else "longest"
    inputs = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                       padding=padding, return_attention_mask=True)
    return inputs.input_features.to(device=device, dtype=dtype), inputs.attention_mask.to(device)


def _segments(raw: list[dict], tokenizer, duration: float) -> list[Segment]:
    segments = []
    for item in raw:
        text = tokenizer.decode(item["tokens"], skip_special_tokens=True).strip()
        if not text:
            continue
        start = min(max(float(item["start"]), 0.0), duration)
        end = min(max(float(item["end"]), start), duration)
        segments.append(Segment(start=start, end=end, text=text))
    return segments


def with_words(loaded: LoadedModel, transcript: Transcript, samples, language: str | None) -> Transcript:
    """``transcript`` with every segment's words timed by forced alignment of its text to ``samples`` (16 kHz);
    a segment with heard words spans them (openai/whisper's rule)."""
    if not transcript.segments:
        return transcript
    alignment = align_transcript(loaded, samples, "\n".join(s.text for s in transcript.segments),
                                 AlignOptions(language=language))
    words = list(alignment.words)
    segments, cursor = [], 0
    for segment in transcript.segments:
        count = len(segment.text.split())
        own = tuple(words[cursor : cursor + count])
        cursor += count
        heard = [w for w in own if w.heard]
        start, end = (heard[0].start, heard[-1].end) if heard else (segment.start, segment.end)
        segments.append(Segment(start=start, end=max(start, end), text=segment.text, words=own))
    return Transcript(audio=transcript.audio, duration=transcript.duration, language=transcript.language,
                      segments=segments)


def _batches(durations: list[float], batch_size: int) -> list[list[int]]:
    """File indices grouped by similar length (longest first), so padding stays small."""
    order = sorted(range(len(durations)), key=lambda i: -durations[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _generate(model, features: torch.Tensor, attention_mask: torch.Tensor, options: TranscribeOptions, *,
              languages: list[str] | None, prompt: torch.Tensor | None, monitor, logits_processor=None) -> dict:
    """One batch through transformers' sequential long-form ``generate``.

    Args:
        features: log-mel features (B, n_mels, T), T >= one window; longer means several windows.
        attention_mask: (B, T) frame mask, which tells each file's real length.
        languages: ``<|xx|>`` per file for multilingual models, else None.
        prompt: ``<|startofprev|>`` + prompt ids (P,), or None.
        logits_processor: extra ``LogitsProcessorList`` for ``generate`` (term biasing), or None.

    Returns:
        transformers' output dict; ``segments[b]`` lists file b's segments (start, end, tokens).
    """
    kwargs: dict = {}
    if options.max_new_tokens is not None:
        kwargs["max_new_tokens"] = options.max_new_tokens
    elif soft_prompt_length(model):  # a soft prompt takes n of the 448 positions generate would fill
        kwargs["max_new_tokens"] = model.config.max_target_positions // 2 - 4 - soft_prompt_length(model)
    if languages is not None:
        kwargs.update(language=[generate_language(lang, model.generation_config) for lang in languages],
                      task=options.task)
    if prompt is not None:
        # all-segments: the prompt stays ahead of the previous text in every window, not just the first.
        kwargs.update(prompt_ids=prompt.to(features.device), prompt_condition_type="all-segments")
    if logits_processor is not None:
        kwargs["logits_processor"] = logits_processor
    if options.num_beams != 1:  # beam search at temperature 0; the fallbacks sample
        kwargs["num_beams"] = options.num_beams
    with torch.random.fork_rng(devices=[]):  # seeded fallbacks, without touching the caller's RNG
        torch.manual_seed(options.seed)
        return model.generate(
            input_features=features, attention_mask=attention_mask, return_timestamps=True,
            return_segments=True, condition_on_prev_tokens=options.condition_on_previous_text,
            temperature=options.temperatures, compression_ratio_threshold=options.compression_ratio_threshold,
            logprob_threshold=options.logprob_threshold, no_speech_threshold=options.no_speech_threshold,
            monitor_progress=monitor, **kwargs)


def transcribe_files(loaded: LoadedModel, paths: Sequence[str | Path],
                     options: TranscribeOptions = TranscribeOptions(), *, progress: bool = True,
                     on_file: Callable[[int, Transcript], None] | None = None, logits_processor=None,
                     ) -> tuple[list[Transcript], TranscribeStats]:
    """Transcribe audio files of any length, with segment timestamps.

    Args:
        loaded: the model; pass it through :func:`prepare_for_inference` first to decode a LoRA run
            merged (faster). Its generation config is made deployable here either way.
        paths: audio files (anything libsndfile reads; down-mixed and resampled to 16 kHz).
        options: decoding settings.
        progress: show a bar in audio seconds.
        on_file: called with each file's index and transcript as soon as its batch is done.
        logits_processor: a ``LogitsProcessorList`` for every window's ``generate``, e.g. term biasing
            (:func:`asrtune.evaluation.biasing.bias_processor`); it sees the prompt and previous text as
            forced ids, before its begin index.

    Returns:
        Transcripts in the order of ``paths``, and totals (audio seconds, decode seconds, RTF).

    Raises:
        AsrtuneError: a missing or unreadable file, a language the model lacks, a bad prompt.
    """
    if not paths:
        raise AsrtuneError("no audio files given")
    model, tokenizer = loaded.model, loaded.processor.tokenizer
    model.generation_config = deployable_generation_config(model.generation_config, tokenizer)
    model.eval()
    durations = [audio_duration(p) for p in paths]  # every file checked before any decoding
    language = _languages(loaded, options)
    prompt = prompt_ids(loaded, options.prompt) if options.prompt else None
    parameter = next(model.parameters())
    extractor = loaded.processor.feature_extractor
    frames_per_second = extractor.sampling_rate / extractor.hop_length
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))

    results: dict[int, Transcript] = {}
    bar = tqdm(total=sum(durations), desc="transcribe", unit="s", disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")
    started = time.perf_counter()
    for batch in _batches(durations, options.batch_size):
        done_before = bar.n
        samples = [load_audio(paths[i]) for i in batch]
        features, attention_mask = _features(loaded, samples, parameter.device, parameter.dtype)
        languages = None
        if multilingual:
            languages = [language] * len(batch) if language else _detect(loaded, features)

        def monitor(state: torch.Tensor, base: float = done_before) -> None:
            seek = state[:, 0].clamp(max=state[:, 1])  # (B,) frames done per file of the batch
            bar.n = min(base + float(seek.sum()) / frames_per_second, bar.total)
            bar.refresh()

        output = _generate(model, features, attention_mask, options, languages=languages, prompt=prompt,
                           monitor=monitor if progress else None, logits_processor=logits_processor)
        for row, index in enumerate(batch):
            transcript = Transcript(audio=str(paths[index]), duration=durations[index],
                                    language=languages[row].strip("<|>") if languages else "en",
                                    segments=_segments(output["segments"][row], tokenizer, durations[index]))
            if options.word_timestamps:
                transcript = with_words(loaded, transcript, samples[row], transcript.language)
            results[index] = transcript
            if on_file is not None:
                on_file(index, transcript)
        bar.n = min(done_before + sum(durations[i] for i in batch), bar.total)
        bar.refresh()
    bar.close()
    stats = TranscribeStats(files=len(paths), audio_seconds=sum(durations),
                            decode_seconds=time.perf_counter() - started,
                            window_seconds=loaded.processor.feature_extractor.chunk_length,
                            device=next(loaded.model.parameters()).device.type)
    return [results[i] for i in range(len(paths))], stats


def timestamp_issues(transcript: Transcript, window: float = 30.0) -> list[str]:
    """What looks wrong with a transcript's timestamps (empty when they look sane).

    Flags segments that run backwards, have no length, or span a whole window (what transformers
    reports when the model predicted no timestamp inside that window, a common loss after fine-tuning
    without timestamps).
    """
    issues = []
    previous_start = -1.0
    for index, segment in enumerate(transcript.segments):
        if segment.start < previous_start - 1e-6:
            issues.append(f"segment {index} starts before the one ahead of it")
        if segment.end <= segment.start:
            issues.append(f"segment {index} has no length ({segment.start:.2f}-{segment.end:.2f} s)")
        if segment.end - segment.start >= window - 0.05:
            issues.append(f"segment {index} spans a whole {window:.0f} s window: "
                          "no timestamps predicted there")
        previous_start = segment.start
    return issues
