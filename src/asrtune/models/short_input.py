"""Shorter encoder input (speed lever 3): the encoder sees the batch's longest utterance, not 30 s.

Whisper's feature extractor pads every utterance to 30 s (3000 log-mel frames, 1500 encoder
positions) and the encoder attends over all of it, padding included. Cutting the input to the
batch's longest utterance makes the encoder's work proportional to the speech. It is not exact:
Whisper was only ever trained on 30 s windows, its positional embeddings past the cut go unused and
its attention no longer sees the padding it learned to expect. What that costs in WER is measured
(README, "Shorter encoder input"), and the option is off by default.

The encoder computation mirrors ``WhisperEncoder.forward`` with the input length left free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from asrtune.models.family import model_core

__all__ = ["encoder_stem", "short_input_frames", "encode_short"]

# Encoder positions are half the log-mel frames (conv2 has stride 2): keep the cut even.
_FRAME_MULTIPLE = 2


def encoder_stem(encoder: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, frames) log-mels -> (B, frames / 2, d_model): convolutions, GELU, positions, dropout."""
    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    return torch.nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)


def short_input_frames(valid_frames: Sequence[int] | torch.Tensor, full_frames: int) -> int:
    """Log-mel frames to keep for a batch: its longest utterance's, rounded up to even, at most ``full_frames``."""
    longest = int(max(int(f) for f in valid_frames))
    longest = max(longest, _FRAME_MULTIPLE)
    longest = -(-longest // _FRAME_MULTIPLE) * _FRAME_MULTIPLE
    return min(longest, full_frames)


def encode_short(model: torch.nn.Module, features: torch.Tensor, frames: int) -> torch.Tensor:
    """The encoder's output (B, frames / 2, d_model) for the first ``frames`` log-mel frames.

    Forward hooks on the layers (bottleneck adapters) and PEFT-wrapped linears run as in the full
    forward; LayerDrop is honoured in training mode as ``WhisperEncoder`` does it.
    """
    encoder = model_core(model).encoder
    hidden = encoder_stem(encoder, features[..., :frames])
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)
