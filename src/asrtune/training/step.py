"""One training forward: what DDP/FSDP/DeepSpeed wrap, and the loss normalised over the global batch.

:class:`TrainingForward` runs the encoder (from log-mels, from a cached frozen prefix, or on a cut
window), the decoder, and returns the *sum* of token cross-entropies and the token count. The
recipe divides by the number of target tokens in the whole global batch (every process, every
accumulated micro-batch), as transformers' ``average_tokens_across_devices`` does, and multiplies by
the number of processes (DDP averages gradients): N processes with batch B then take the step one
process takes with batch N x B.
"""

from __future__ import annotations

import torch
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from asrtune.models.short_input import encode_short
from asrtune.strategies.base import whisper_core
from asrtune.training.encoder_cache import CachePlan, encode_top

__all__ = ["TrainingForward"]


class TrainingForward(torch.nn.Module):
    """The model's training forward as one module, so a distributed wrapper sees every trainable use.

    Args:
        model: the Whisper model with its strategy applied.
        plan: the frozen prefix whose output is passed in as ``prefix`` (None: start from log-mels).
    """

    def __init__(self, model: torch.nn.Module, plan: CachePlan | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        config = whisper_core(model).config
        self._pad, self._start = config.pad_token_id, config.decoder_start_token_id

    def forward(self, labels: torch.Tensor, input_features: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None, short_frames: int | None = None) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
        """Summed token cross-entropy and the number of target tokens.

        Shapes: labels (B, L) with -100 where ignored; input_features (B, n_mels, frames);
        prefix (B, positions, d_model). Returns two scalars.
        """
        if prefix is not None:
            inputs = {"encoder_outputs": (encode_top(self.model, prefix, self.plan),)}
        elif short_frames is not None:
            inputs = {"encoder_outputs": (encode_short(self.model, input_features, short_frames),)}
        else:
            inputs = {"input_features": input_features}
        decoder_input_ids = shift_tokens_right(labels, self._pad, self._start)
        logits = self.model(**inputs, decoder_input_ids=decoder_input_ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                 reduction="sum")
        return loss, (labels != -100).sum()
