"""Encoder-output cache: when nothing in the encoder trains, encode each utterance once.

Exact, not an approximation: a frozen encoder with no dropout gives the same output every epoch,
so training the decoder on the stored output yields the same loss and gradients (tested).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from asrtune.data.features import FeatureDataset
from asrtune.strategies.base import whisper_core

__all__ = ["encoder_is_frozen", "cache_bytes", "encode_dataset"]


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """True when no encoder parameter trains and the encoder applies no dropout."""
    core = whisper_core(model)
    config = core.config
    no_dropout = config.dropout == 0 and config.attention_dropout == 0 and config.activation_dropout == 0
    return no_dropout and not any(p.requires_grad for p in core.encoder.parameters())


def cache_bytes(model: torch.nn.Module, n_items: int) -> int:
    """Memory the cache would take: n_items x (max_source_positions, d_model) float32."""
    config = whisper_core(model).config
    return n_items * config.max_source_positions * config.d_model * 4


@torch.no_grad()
def encode_dataset(model: torch.nn.Module, dataset: FeatureDataset, *, batch_size: int,
                   device: torch.device, progress: bool = True) -> list[torch.Tensor]:
    """Encoder hidden states for every utterance, shape (max_source_positions, d_model) each, on CPU."""
    encoder = whisper_core(model).encoder
    dtype = next(encoder.parameters()).dtype
    was_training = encoder.training
    encoder.eval()
    outputs: list[torch.Tensor] = []
    bar = tqdm(total=len(dataset), desc="encode (cached)", unit="utt", disable=not progress)
    for start in range(0, len(dataset), batch_size):
        features = torch.stack(dataset.features[start : start + batch_size]).to(device=device, dtype=dtype)
        hidden = encoder(features).last_hidden_state.to("cpu", torch.float32)
        outputs.extend(hidden.unbind(0))
        bar.update(features.shape[0])
    bar.close()
    encoder.train(was_training)
    return outputs
