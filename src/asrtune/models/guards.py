"""Decoding guards: a token budget from the audio's duration, a repetition stop, and the compression ratio.

Fine-tuned ASR models are reported to loop ("the the the ...", a repeated tail) and to run on past the
speech. The guards bound the damage:

* :func:`duration_token_cap` (LLM families): no hypothesis gets more new tokens than its audio could hold
  (``tokens_per_second`` x seconds + ``slack``; fast read speech is ~3 words, ~5 tokens a second).
* :class:`RepetitionStop` (every family's greedy decoding): a row stops as soon as its generated tail is
  one n-gram of tokens repeated back to back ``min_repeats`` times (``min_unigram_repeats`` for a single
  token). The repeats stay in the text, so the hallucination metrics still count the loop; only the run-on
  after it is saved. A row that never loops decodes exactly as without the guard.
* :func:`compression_ratio`: how well a text compresses (openai/whisper's and faster-whisper's loop test:
  above :data:`COMPRESSION_RATIO_THRESHOLD` a hypothesis is too repetitive).

Refusals ("I'm sorry, as an AI ...") are counted by :mod:`asrtune.evaluation.hallucination`.
"""

from __future__ import annotations

import math
import zlib

import torch
from transformers import StoppingCriteria

__all__ = ["duration_token_cap", "RepetitionStop", "TOKENS_PER_SECOND", "SLACK_TOKENS", "compression_ratio",
           "COMPRESSION_RATIO_THRESHOLD", "too_repetitive"]

TOKENS_PER_SECOND = 10.0  # twice fast speech's token rate
SLACK_TOKENS = 10
COMPRESSION_RATIO_THRESHOLD = 2.4  # openai/whisper's and faster-whisper's default


def compression_ratio(text: str) -> float:
    """UTF-8 bytes of ``text`` over its zlib-compressed bytes (faster-whisper's ``get_compression_ratio``)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def too_repetitive(text: str, threshold: float = COMPRESSION_RATIO_THRESHOLD) -> bool:
    """Whether ``text`` compresses better than ``threshold``: a loop, as openai/whisper's fallback tests."""
    return compression_ratio(text) > threshold


def duration_token_cap(seconds: float, *, tokens_per_second: float = TOKENS_PER_SECOND,
                       slack: int = SLACK_TOKENS) -> int:
    """The most new tokens a transcript of ``seconds`` of audio may take."""
    return int(math.ceil(max(0.0, seconds) * tokens_per_second)) + slack


def _tail_repeats(tokens: list[int], n: int, repeats: int) -> bool:
    if len(tokens) < n * repeats:
        return False
    gram = tokens[-n:]
    return all(tokens[len(tokens) - (k + 1) * n: len(tokens) - k * n] == gram for k in range(1, repeats))


class RepetitionStop(StoppingCriteria):
    """Stop the rows whose generated tail repeats an n-gram (n <= ``max_n``) back to back.

    Args:
        prompt_width: columns of the prompt in ``input_ids`` (not generated, never checked).
        max_n: longest n-gram checked, in tokens.
        min_repeats: back-to-back copies that make a loop (n >= 2).
        min_unigram_repeats: the same for one token repeated.

    Attributes:
        stopped: row indices stopped for repetition so far.
    """

    def __init__(self, prompt_width: int, *, max_n: int = 8, min_repeats: int = 4, min_unigram_repeats: int = 8) -> None:
        self.prompt_width, self.max_n = prompt_width, max_n
        self.min_repeats, self.min_unigram_repeats = min_repeats, min_unigram_repeats
        self.stopped: set[int] = set()

    def looping(self, tokens: list[int]) -> bool:
        """Whether ``tokens`` (generated ones only) end in a loop."""
        if _tail_repeats(tokens, 1, self.min_unigram_repeats):
            return True
        return any(_tail_repeats(tokens, n, self.min_repeats) for n in range(2, self.max_n + 1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_width:].tolist()
        done = [self.looping(row) for row in generated]
        self.stopped.update(i for i, stop in enumerate(done) if stop)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
