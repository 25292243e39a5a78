"""Greedy decoding with the CTranslate2 runtime (what faster-whisper runs), for checking exports.

Kept to what a check needs: the same log-mel features and decoder prompt the HF model gets, greedy
search, token ids back. Long-form transcription with a CTranslate2 model is faster-whisper's job.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from asrtune.errors import AsrtuneError

__all__ = ["ct2_greedy_ids", "load_ct2_whisper"]


def load_ct2_whisper(model_dir: str | Path, *, device: str = "cpu", compute_type: str = "default",
                     threads: int = 0):
    """A ``ctranslate2.models.Whisper`` for ``model_dir``, with the runtime's warnings silenced.

    Raises:
        AsrtuneError: the folder holds no CTranslate2 model, or the runtime cannot load it.
    """
    import ctranslate2

    # float16 weights on a CPU fall back to float32 compute with a warning on every load; expected here.
    ctranslate2.set_log_level(logging.ERROR)
    model_dir = Path(model_dir)
    if not (model_dir / "model.bin").is_file():
        raise AsrtuneError(f"{model_dir}: no CTranslate2 model.bin")
    try:
        return ctranslate2.models.Whisper(str(model_dir), device=device, compute_type=compute_type,
                                          intra_threads=threads)
    except (RuntimeError, ValueError) as error:
        raise AsrtuneError(f"ctranslate2 cannot load {model_dir}: {error}") from error


def ct2_greedy_ids(model, features: np.ndarray, prompt: list[int], *,
                   max_new_tokens: int = 128) -> list[list[int]]:
    """Greedy token ids (prompt and end-of-text excluded) for each row of ``features``.

    Args:
        model: a ``ctranslate2.models.Whisper``.
        features: log-mel features, shape (B, n_mels, T), float32.
        prompt: decoder prompt ids, from ``<|startoftranscript|>`` up to ``<|notimestamps|>``.
        max_new_tokens: longest continuation.
    """
    import ctranslate2

    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
    # ctranslate2 4.8 stops Whisper decoding after about max_length / 2 new tokens (measured), not after
    # max_length - len(prompt) as its docstring suggests: ask for enough, then cut to max_new_tokens.
    max_length = min(448, 2 * (len(prompt) + max_new_tokens))
    results = model.generate(storage, [list(prompt)] * features.shape[0], beam_size=1, max_length=max_length,
                             return_scores=False)
    return [list(result.sequences_ids[0])[:max_new_tokens] for result in results]
