"""``deploy`` decoding: what faster-whisper's ``transcribe`` does with its defaults, on transformers' ``generate``.

A model scored greedily is not the model users run: faster-whisper (CTranslate2) decodes with 5 beams and
falls back to sampling when a window comes out repetitive or unlikely. :func:`deploy_decode_batch`
reproduces that for utterances of one window (at most 30 s), batched:

1. **Input as faster-whisper builds it.** faster-whisper computes the log-mel of the clip alone and pads it
   to 3000 frames with zeros (``pad_or_trim``); transformers (and openai/whisper) pad the *audio* with
   silence, whose log-mel is far below zero. The encoder hears the two differently: on 24 sentences read by
   an unseen voice, tiny.en with 5 beams gave faster-whisper's transcript for 2 with transformers' padding
   and 16 with faster-whisper's (measured here, README). So frames from ``samples // hop`` on are zeroed.
2. **Beam search at temperature 0**, 5 beams, patience 1, length penalty 1: the first 5 finished hypotheses
   (``early_stopping=True``) ranked as CTranslate2 ranks them, summed log-probability over the tokens
   without end-of-text (transformers divides by the length with end-of-text).
3. **Fallback per row**: a row whose kept hypothesis compresses better than 2.4 (zlib, on the text) or
   averages a log-probability below -1 (sum over tokens and end-of-text / (tokens + 1)) is decoded again by
   sampling at 0.2, 0.4, ... 1.0, 5 samples each (``best_of``), the best kept; a row whose no-speech
   probability is above 0.6 while its log-probability is below -1 is silence, not a failure. Only the rows
   that fail go on to the next temperature. When every temperature fails, the result with the best
   average log-probability among those under the compression threshold (else among all) is kept.
4. **No speech**: a row whose no-speech probability (``<|nospeech|>``, ``<|nocaptions|>`` in English-only
   models, at the ``<|startoftranscript|>`` position) is above 0.6 and whose kept hypothesis averages at most
   -1 transcribes as nothing.

Log-probabilities are those the search used: the processed scores (suppressed tokens, term biasing when
given), renormalised, before temperature, as CTranslate2's. Timestamps are off (``<|notimestamps|>``, the
prompt asrtune trains with); the benchmark compares against faster-whisper with ``without_timestamps=True``.
Sampling is seeded, so the decode is repeatable; it cannot reproduce CTranslate2's random draws, so rows
that needed a fallback may differ from faster-whisper's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationMixin,
    LogitsProcessorList,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    WhisperForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutput

from asrtune.errors import AsrtuneError
from asrtune.models.family import BatchDecode
from asrtune.models.guards import COMPRESSION_RATIO_THRESHOLD, RepetitionStop, compression_ratio

__all__ = ["DeploySettings", "FASTER_WHISPER", "deploy_decode_batch", "faster_whisper_input", "Candidate",
           "kept_result"]

SCORE_ROWS = 8  # candidate rows scored per decoder forward (bounds the (rows, length, vocabulary) logits)


@dataclass(frozen=True, kw_only=True)
class DeploySettings:
    """faster-whisper's ``transcribe`` decoding options (its defaults)."""

    beam_size: int = 5
    best_of: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = COMPRESSION_RATIO_THRESHOLD
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    seed: int = 0


FASTER_WHISPER = DeploySettings()


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One row's kept hypothesis at one temperature.

    Attributes:
        tokens: generated text tokens (no end-of-text).
        total: summed log-probability of the tokens and, when it ended, end-of-text.
        ended: whether it ended with end-of-text (else it reached ``max_new_tokens``).
    """

    tokens: tuple[int, ...]
    text: str
    total: float
    ended: bool
    temperature: float

    @property
    def avg_logprob(self) -> float:
        """faster-whisper's ``avg_logprob``: the summed log-probability over (tokens + 1)."""
        return self.total / (len(self.tokens) + 1)

    @property
    def rank(self) -> float:
        """CTranslate2's hypothesis score (length penalty 1): the sum over the tokens without end-of-text."""
        return self.total / len(self.tokens) if self.tokens else float("-inf")

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


def faster_whisper_input(features: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """Log-mels (B, n_mels, T) as faster-whisper feeds them: zeros after each clip's content frames.

    faster-whisper keeps ``samples // hop`` frames of the clip; ``frames`` are ``ceil(samples / hop)`` (the
    dataset's valid frames), one more unless the clip is a whole number of hops, so the last is dropped.
    """
    out = features.clone()
    for row, count in enumerate(frames):
        out[row, :, max(int(count) - 1, 1):] = 0.0
    return out


def generation_model(model: torch.nn.Module) -> WhisperForConditionalGeneration:
    """The ``WhisperForConditionalGeneration`` inside a possibly wrapped (PEFT) model."""
    for module in model.modules():
        if isinstance(module, WhisperForConditionalGeneration):
            return module
    raise AsrtuneError("deploy decoding needs a Whisper model")


def _suppression(model: WhisperForConditionalGeneration, begin: int, device) -> LogitsProcessorList:
    """The generation config's suppressed tokens, everywhere and at the first generated position."""
    generation = model.generation_config
    processors = LogitsProcessorList()
    if generation.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(generation.suppress_tokens, device=device))
    if generation.begin_suppress_tokens:
        processors.append(SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, begin,
                                                               device=device))
    return processors


def _no_speech_id(tokenizer) -> int | None:
    for token in ("<|nospeech|>", "<|nocaptions|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    return None


@torch.no_grad()
def _score(model, encoder: torch.Tensor, prompt: torch.Tensor, sequences: torch.Tensor, per_row: int,
           processors: LogitsProcessorList, eos: int) -> tuple[list[float], torch.Tensor]:
    """Summed log-probability of each candidate's generated tokens up to and including its first end-of-text,
    and each row's scores at ``<|startoftranscript|>`` (the no-speech probability's).

    Args:
        encoder: encoder output per row (R, positions, d_model); prompt: (R, P).
        sequences: prompt + generated ids (R * per_row, P + L), each row's candidates one after another.
        processors: the search's processors; each position's scores are log-softmaxed, processed and
            renormalised, as ``generate(renormalize_logits=True)`` does.

    Returns:
        (R * per_row) sums, and the (R, V) logits at the first prompt position.
    """
    rows_per_pass = max(1, SCORE_ROWS // per_row)
    begin = prompt.shape[1]
    totals: list[float] = []
    first_position = []
    for start in range(0, encoder.shape[0], rows_per_pass):
        rows = slice(start, start + rows_per_pass)
        # the prompt once per row (the cross-attention keys and values are the costly part), then its cache
        # repeated for the row's candidates
        head = model(encoder_outputs=(encoder[rows],), decoder_input_ids=prompt[rows], use_cache=True)
        first_position.append(head.logits[:, 0].float())
        cache = head.cache
        cache.batch_repeat_interleave(per_row)
        ids = sequences[start * per_row:(start + rows_per_pass) * per_row]
        tail = model(encoder_outputs=(encoder[rows].repeat_interleave(per_row, dim=0),),
                     decoder_input_ids=ids[:, begin:-1], cache=cache).logits if ids.shape[1] > begin + 1 else None
        logits = head.logits[:, -1:].repeat_interleave(per_row, dim=0)
        if tail is not None:
            logits = torch.cat([logits, tail], dim=1)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
        for step in range(logits.shape[1]):
            position = begin + step
            scores = torch.log_softmax(logits[:, step].float(), dim=-1)
            scores = torch.log_softmax(processors(ids[:, :position], scores), dim=-1)
            chosen = ids[:, position]
            total += torch.where(done, 0.0, scores.gather(1, chosen[:, None]).squeeze(1).double())
            done |= chosen == eos
        totals += total.tolist()
    return totals, torch.cat(first_position)


def _candidates(model, encoder: torch.Tensor, prompt: torch.Tensor, temperature: float, settings: DeploySettings,
                max_new_tokens: int, processors: LogitsProcessorList, tokenizer) -> tuple[list[Candidate], list[float]]:
    """The best of each row's hypotheses at one temperature (5 beams at 0, else 5 samples), and each row's
    no-speech probability.

    Args:
        encoder: encoder output of the rows (R, positions, d_model); prompt: (R, P).
    """
    options = {"do_sample": False, "num_beams": settings.beam_size, "num_return_sequences": settings.beam_size,
               "early_stopping": True, "length_penalty": 1.0}
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0, "num_beams": 1,
                   "num_return_sequences": settings.best_of}
    per_row = options["num_return_sequences"]
    eos = tokenizer.eos_token_id
    sequences = GenerationMixin.generate(
        model, encoder_outputs=BaseModelOutput(last_hidden_state=encoder), decoder_input_ids=prompt,
        logits_processor=processors, renormalize_logits=True, max_new_tokens=max_new_tokens,
        suppress_tokens=None, begin_suppress_tokens=None, eos_token_id=eos, pad_token_id=eos, **options)
    totals, first_position = _score(model, encoder, prompt, sequences, per_row, processors, eos)
    best = []
    for row in range(encoder.shape[0]):
        found = []
        for k in range(row * per_row, (row + 1) * per_row):
            generated = sequences[k, prompt.shape[1]:].tolist()
            ended = eos in generated
            tokens = tuple(generated[:generated.index(eos)] if ended else generated)
            text = tokenizer.decode(list(tokens), skip_special_tokens=True).strip()
            found.append(Candidate(tokens=tokens, text=text, total=totals[k], ended=ended, temperature=temperature))
        best.append(max(found, key=lambda c: c.rank))  # CTranslate2 sorts its hypotheses by this score
    token = _no_speech_id(tokenizer)
    no_speech = torch.softmax(first_position, dim=-1)[:, token].tolist() if token is not None else [0.0] * len(best)
    return best, no_speech


def _needs_fallback(candidate: Candidate, no_speech: float, settings: DeploySettings) -> bool:
    """faster-whisper's test: too repetitive or too unlikely, unless it is silence."""
    unlikely = candidate.avg_logprob < settings.log_prob_threshold
    if no_speech > settings.no_speech_threshold and unlikely:
        return False  # silence
    return candidate.compression_ratio > settings.compression_ratio_threshold or unlikely


def kept_result(tried: list[Candidate], settings: DeploySettings) -> Candidate:
    """When every temperature failed: the best average log-probability under the compression threshold, else
    of all."""
    under = [c for c in tried if c.compression_ratio <= settings.compression_ratio_threshold]
    return max(under or tried, key=lambda c: c.avg_logprob)


@torch.no_grad()
def deploy_decode_batch(loaded, features: torch.Tensor, frames: Sequence[int], prompt: list[int], *,
                        max_new_tokens: int, logits_processor: LogitsProcessorList | None = None,
                        settings: DeploySettings = FASTER_WHISPER) -> BatchDecode:
    """One batch decoded as faster-whisper's ``transcribe`` would (see the module doc).

    Args:
        features: log-mels (B, n_mels, frames) as the model's feature extractor makes them.
        frames: each row's valid frames (``ceil(samples / hop)``).
        prompt: the decoder prompt (``<|startoftranscript|>``, language, task, ``<|notimestamps|>``).
        logits_processor: extra processors for every attempt (term biasing), or None.
    """
    model = generation_model(loaded.model)
    tokenizer = loaded.processor.tokenizer
    device = features.device
    encoder = model.get_encoder()(faster_whisper_input(features, frames)).last_hidden_state
    prompt_ids = torch.tensor([prompt] * features.shape[0], dtype=torch.long, device=device)
    processors = _suppression(model, len(prompt), device)
    for processor in logits_processor or []:
        if hasattr(processor, "set_begin_index"):
            processor.set_begin_index(len(prompt))
        processors.append(processor)
    no_speech: list[float] = []
    tried: list[list[Candidate]] = [[] for _ in range(features.shape[0])]
    pending = list(range(features.shape[0]))
    with torch.random.fork_rng(devices=[]):  # seeded samples, without touching the caller's RNG
        torch.manual_seed(settings.seed)
        for temperature in settings.temperatures:
            found, speechless = _candidates(model, encoder[pending], prompt_ids[pending], temperature, settings,
                                            max_new_tokens, processors, tokenizer)
            no_speech = no_speech or speechless  # the prompt is the same at every temperature: once, at 0
            for row, candidate in zip(pending, found, strict=True):
                tried[row].append(candidate)
            pending = [row for row in pending if _needs_fallback(tried[row][-1], no_speech[row], settings)]
            if not pending:
                break
    kept = [kept_result(rows, settings) if row in pending else rows[-1] for row, rows in enumerate(tried)]
    silent = [no_speech[row] > settings.no_speech_threshold and c.avg_logprob <= settings.log_prob_threshold
              for row, c in enumerate(kept)]
    guard = RepetitionStop(0)
    return BatchDecode(texts=["" if quiet else c.text for c, quiet in zip(kept, silent, strict=True)],
                       capped=[not c.ended and not quiet for c, quiet in zip(kept, silent, strict=True)],
                       looped=[not quiet and guard.looping(list(c.tokens)) for c, quiet in zip(kept, silent, strict=True)],
                       temperatures=[rows[-1].temperature for rows in tried], no_speech=silent)
