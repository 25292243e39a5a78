"""One training forward: what DDP/FSDP/DeepSpeed wrap, and the loss normalised over the global batch.

:class:`TrainingForward` runs the model family's training forward (``ModelFamily.loss``; for Whisper
the encoder from log-mels, from a cached frozen prefix, or on a cut window, then the decoder) and
returns the *sum* of token cross-entropies and the token count. The
recipe divides by the number of target tokens in the whole global batch (every process, every
accumulated micro-batch), as transformers' ``average_tokens_across_devices`` does, and multiplies by
the number of processes (DDP averages gradients): N processes with batch B then take the step one
process takes with batch N x B.
"""

from __future__ import annotations

import torch

from asrtune.models.family import CachePlan, CtcSettings, family_of

__all__ = ["TrainingForward"]


class TrainingForward(torch.nn.Module):
    """The model's training forward as one module, so a distributed wrapper sees every trainable use.

    Args:
        model: the model with its strategy applied.
        plan: the frozen prefix whose output is passed in as ``prefix`` (None: start from log-mels).
        ctc: the CTC part of the loss (LLM families; None: none).
    """

    def __init__(self, model: torch.nn.Module, plan: CachePlan | None = None, ctc: CtcSettings | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan, self.ctc = plan, ctc
        self.family = family_of(model)

    def forward(self, labels: torch.Tensor, input_features: torch.Tensor | None = None,
                prefix: torch.Tensor | None = None, short_frames: int | None = None,
                **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy and the number of target tokens (the family's loss).

        Shapes: labels (B, L) with -100 where ignored; input_features (B, n_mels, frames);
        prefix (B, positions, d_model); LLM families add input_ids and attention_mask (B, L). Returns two
        scalars.
        """
        batch = {"labels": labels, "input_features": input_features, "prefix": prefix,
                 "short_frames": short_frames, **inputs}
        return self.family.loss(self.model, batch, plan=self.plan, ctc=self.ctc)
