"""CTC alignment of an LLM family's projected audio onto its LLM's input embeddings (``loop.ctc_weight``,
``loop.ctc_only``).

A CTC step needs no pass through the LLM: the projected audio frames are scored against the LLM's own
(frozen) embedding rows, the blank being the audio placeholder's row, which the LLM never sees as input
(WeST, wenet-e2e/west; Soundwave, arXiv 2502.12900; LegoSLM, arXiv 2505.11352). For speed the training loss
scores only the rows of the training transcripts' tokens plus ``loop.ctc_negatives`` other rows drawn once;
evaluations decode greedily over every row.
"""

from __future__ import annotations

import numpy as np
import torch

from asrtune.config import LoopConfig
from asrtune.data.features import FeatureDataset
from asrtune.errors import AsrtuneError
from asrtune.models.family import CtcSettings, model_core
from asrtune.models.load import LoadedModel

__all__ = ["ctc_settings"]


def ctc_settings(loop: LoopConfig, loaded: LoadedModel, train_set: FeatureDataset, seed: int) -> CtcSettings | None:
    """The CTC part of the loss, or None when the run has none.

    Raises:
        AsrtuneError: the model's family has no CTC head.
    """
    if not (loop.ctc_only or loop.ctc_weight):
        return None
    family = loaded.family
    if not family.ctc:
        raise AsrtuneError(f"loop.ctc_weight / loop.ctc_only: the {family.display_name} family has no CTC head "
                           "(it aligns LLM-based models: Qwen2-Audio)")
    core = model_core(loaded.model)
    size = core.get_input_embeddings().weight.shape[0]
    blank = core.config.audio_token_id
    ends = set(family.end_token_ids(loaded.processor))
    spoken = {int(token) for labels, prompt in zip(train_set.labels, train_set.prompt_lengths, strict=True)
              for token in labels[prompt:] if int(token) not in ends}
    drawn = np.random.default_rng([seed, 23]).choice(size, size=min(loop.ctc_negatives, size), replace=False)
    vocab = torch.tensor([blank] + sorted((spoken | {int(t) for t in drawn}) - {blank}), dtype=torch.long)
    index = torch.full((size,), -1, dtype=torch.long)
    index[vocab] = torch.arange(len(vocab))
    return CtcSettings(weight=1.0 if loop.ctc_only else loop.ctc_weight, only=loop.ctc_only, vocab=vocab,
                       index=index)
