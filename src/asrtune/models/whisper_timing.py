"""Whisper's timing: alignment heads, and token times from cross-attention by dynamic time warping.

A Whisper decoder's cross-attention on a few *alignment heads* follows the audio frame by frame as the
text goes on (openai/whisper, "word-level timestamps"). Teacher-forcing a known text through the decoder
and running DTW over those heads' attention (normalised, median-filtered) gives each token the time where
the path reaches it. transformers implements that step for ``generate`` outputs
(``WhisperGenerationMixin._extract_token_timestamps``: the heads, the filter, the DTW); asrtune feeds it
the cross-attentions of one teacher-forced pass, so the maths is transformers' own.

Alignment heads come from the model's generation config. Models whose generation config has none get the
heads openai/whisper publishes for their size (:data:`PUBLISHED_ALIGNMENT_HEADS`), and a shape no published
model has gets every head of the decoder's upper half (what ctranslate2's converter assumes). A run keeps its
base model's heads: they are read from the base model's generation config when the run loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.utils import GenerateEncoderDecoderOutput

from asrtune.errors import AsrtuneError

__all__ = ["PUBLISHED_ALIGNMENT_HEADS", "TokenTiming", "WindowEncoding", "whisper_size", "ensure_alignment_heads",
           "encoder_output", "teacher_forced_timing", "SECONDS_PER_ENCODER_FRAME"]

SECONDS_PER_ENCODER_FRAME = 0.02  # 100 log-mel frames a second, pooled by 2 in the encoder's stem

# Decoded from openai/whisper's ``_ALIGNMENT_HEADS`` (whisper/__init__.py, release v20240930: base85 + gzip of
# a (decoder layers, heads) boolean mask per model), as (layer, head) pairs. The bundled tiny.en and base
# bundles carry exactly their size's entry in their CTranslate2 config.json.
PUBLISHED_ALIGNMENT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny.en": ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    "tiny": ((2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5)),
    "base.en": ((3, 3), (4, 7), (5, 1), (5, 5), (5, 7)),
    "base": ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
    "small.en": ((6, 6), (7, 0), (7, 3), (7, 8), (8, 2), (8, 5), (8, 7), (9, 0), (9, 4), (9, 8), (9, 10),
                 (10, 0), (10, 1), (10, 2), (10, 3), (10, 6), (10, 11), (11, 2), (11, 4)),
    "small": ((5, 3), (5, 9), (8, 0), (8, 4), (8, 7), (8, 8), (9, 0), (9, 7), (9, 9), (10, 5)),
    "medium.en": ((11, 4), (14, 1), (14, 12), (14, 14), (15, 4), (16, 0), (16, 4), (16, 9), (17, 12), (17, 14),
                  (18, 7), (18, 10), (18, 15), (20, 0), (20, 3), (20, 9), (20, 14), (21, 12)),
    "medium": ((13, 15), (15, 4), (15, 15), (16, 1), (20, 0), (23, 4)),
    "large-v2": ((10, 12), (13, 17), (16, 11), (16, 12), (16, 13), (17, 15), (17, 16), (18, 4), (18, 11),
                 (18, 19), (19, 11), (21, 2), (21, 3), (22, 3), (22, 9), (22, 12), (23, 5), (23, 7), (23, 13),
                 (25, 5), (26, 1), (26, 12), (27, 15)),
    "large-v3": ((7, 0), (10, 17), (12, 18), (13, 12), (16, 1), (17, 14), (19, 11), (21, 4), (24, 1), (25, 6)),
    "large-v3-turbo": ((2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14)),
}

# (d_model, decoder layers, mel bins) -> size; ".en" when the vocabulary is English-only (51864 tokens).
# large-v1 and large-v2 share one shape: an 80-mel large model without heads gets large-v2's (openai's
# "large" before v3).
_SIZES = {(384, 4, 80): "tiny", (512, 6, 80): "base", (768, 12, 80): "small", (1024, 24, 80): "medium",
          (1280, 32, 80): "large-v2", (1280, 32, 128): "large-v3", (1280, 4, 128): "large-v3-turbo"}
_ENGLISH_VOCAB = 51864


def whisper_size(config) -> str | None:
    """The openai/whisper size a ``WhisperConfig`` has the shape of (``tiny.en``, ``base``, ...), or None."""
    size = _SIZES.get((config.d_model, config.decoder_layers, config.num_mel_bins))
    if size is None:
        return None
    english = config.vocab_size == _ENGLISH_VOCAB
    return f"{size}.en" if english and f"{size}.en" in PUBLISHED_ALIGNMENT_HEADS else size


def ensure_alignment_heads(model: torch.nn.Module) -> str:
    """Give ``model.generation_config`` alignment heads when it has none; returns where they come from.

    Returns:
        ``"model"`` (its own), ``"published:SIZE"`` (openai/whisper's heads for its size) or ``"upper half"``
        (every head of the decoder's upper half: no published model has its shape).
    """
    generation, config = model.generation_config, model.config
    heads = getattr(generation, "alignment_heads", None)
    if heads:
        return "model"
    size = whisper_size(config)
    if size is not None and all(layer < config.decoder_layers and head < config.decoder_attention_heads
                                for layer, head in PUBLISHED_ALIGNMENT_HEADS[size]):
        generation.alignment_heads = [list(pair) for pair in PUBLISHED_ALIGNMENT_HEADS[size]]
        return f"published:{size}"
    generation.alignment_heads = [[layer, head] for layer in range(config.decoder_layers // 2, config.decoder_layers)
                                  for head in range(config.decoder_attention_heads)]
    return "upper half"


@dataclass(frozen=True)
class TokenTiming:
    """Times of teacher-forced tokens within the window fed, in seconds from its start.

    Attributes:
        starts: (n,) where each token starts (DTW's jump onto its row).
        ends: (n,) where the next row starts (the last token's end: where end-of-text's row starts).
        logprobs: (n,) each token's log-probability given the audio and the tokens before it.
        end_logprob: the log-probability of ``<|endoftext|>`` right after the text.
    """

    starts: np.ndarray
    ends: np.ndarray
    logprobs: np.ndarray
    end_logprob: float


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """SDPA returns no attention weights: switch to eager attention for the pass, then back."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _whisper(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if hasattr(module, "_extract_token_timestamps") and hasattr(module, "generation_config"):
            return module
    raise AsrtuneError("word timing needs a Whisper model")


class WindowEncoding:
    """A window's encoder output, computed once for several teacher-forced passes over it."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


@torch.no_grad()
def encoder_output(model: torch.nn.Module, features: torch.Tensor | WindowEncoding) -> torch.Tensor:
    """The encoder's output (1, positions, d_model) for log-mels (1, n_mels, frames), or the one already computed."""
    if isinstance(features, WindowEncoding):
        return features.hidden
    return _whisper(model).get_encoder()(features).last_hidden_state


@torch.no_grad()
def teacher_forced_timing(model: torch.nn.Module, features: torch.Tensor, prompt: Sequence[int],
                          tokens: Sequence[int], num_frames: int, *, skip_positions: int = 0) -> TokenTiming:
    """Feed ``prompt + tokens`` to the decoder over one window; times and log-probs per token (and of the
    ``<|endoftext|>`` that should follow).

    Args:
        model: a Whisper model with alignment heads (:func:`ensure_alignment_heads`).
        features: the window's log-mels (1, n_mels, frames), padded as the model expects (30 s), or their
            :class:`WindowEncoding` (to time several texts over one window).
        prompt: ``<|startoftranscript|>`` up to ``<|notimestamps|>`` (language and task between, multilingual).
        tokens: the text's tokens (n >= 1).
        num_frames: log-mel frames of real audio in the window (DTW runs over these only).
        skip_positions: decoder positions a soft prompt puts ahead of ``prompt``.

    Returns:
        The tokens' timing (:class:`TokenTiming`).
    """
    if not tokens:
        raise AsrtuneError("nothing to align: no tokens")
    whisper = _whisper(model)
    eos = whisper.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    encoded = encoder_output(whisper, features)
    ids = torch.tensor([[*prompt, *tokens]], device=encoded.device)
    with _eager_attention(whisper):  # the decoder's cross-attention weights only: the encoder keeps SDPA
        output = whisper(encoder_outputs=(encoded,), decoder_input_ids=ids, output_attentions=True)
    # Rows of the cross-attention: one per decoder position. The row of <|notimestamps|> predicts the first
    # text token; from there to the last text token's row (which predicts end-of-text): len(tokens) + 1 rows,
    # as openai/whisper's find_alignment takes them.
    first_row = skip_positions + len(prompt) - 1
    shim = GenerateEncoderDecoderOutput(sequences=ids, cross_attentions=(output.cross_attentions,))
    times = whisper._extract_token_timestamps(shim, whisper.generation_config.alignment_heads,
                                              time_precision=SECONDS_PER_ENCODER_FRAME,
                                              num_frames=int(num_frames), num_input_ids=first_row)
    jumps = times[0, first_row : first_row + len(tokens) + 1].double().cpu().numpy()
    logprobs = output.logits[0].float().log_softmax(-1)
    rows = torch.arange(first_row, first_row + len(tokens) + 1, device=logprobs.device)
    targets = torch.tensor([*tokens, eos], device=logprobs.device)
    picked = logprobs[rows, targets].cpu().numpy().astype(np.float64)
    return TokenTiming(starts=jumps[:-1], ends=jumps[1:], logprobs=picked[:-1], end_logprob=float(picked[-1]))
