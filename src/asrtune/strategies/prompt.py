"""``prompt:n=16[,init=vocab|random]``: prompt tuning, n learned soft prompt vectors before the decoder's prompt.

The decoder's input becomes ``[p_1 … p_n, <|startoftranscript|>, <|en|>, …, labels…]``: n free vectors of
the decoder's width (``d_model``) sit in the first n decoder positions, ahead of the special prompt tokens,
and are the only trained parameters (n x d_model; Lester et al. 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning"). Every pretrained weight stays frozen, so the whole encoder is frozen
and the recipe caches its outputs.

How it is wired: the vectors are a child module of Whisper's decoder (``decoder.soft_prompt.weight``), and
two hooks on the decoder do the rest, so ``generate``, the training forward and evaluation all see the same
prompt without changes elsewhere:

* a forward pre-hook, on a pass that starts an empty (or no) cache, embeds the tokens, prepends the n
  vectors to ``inputs_embeds`` (positions 0..n-1 of Whisper's learned absolute positions; the tokens move
  to n, n+1, …), and widens a 2-D ``attention_mask`` / shifts given ``position_ids`` to match;
* on a cached step (the cache already holds the n prompt keys/values) it only widens the mask and shifts
  given positions by n; positions it does not get are counted from the cache length, which includes n;
* a forward hook drops the n prompt positions from the decoder's output, so logits line up with labels
  exactly as without a prompt.

Whisper's decoder has ``max_target_positions`` (448) learned positions; the prompt takes n of them, so
decoding must keep ``n + prompt tokens + max_new_tokens <= 448`` (an error says so, not an index error).

Step 0 is *not* the pretrained model: the decoder now attends to n vectors it never saw. With
``init=vocab`` (the default, as in Lester et al.) they start as the embeddings of n distinct tokens drawn
from the 5000 most frequent ids of the vocabulary (GPT-2 byte-level BPE numbers tokens by merge order,
roughly by frequency), with a fixed seed; ``init=random`` draws them from N(0, sigma^2) with sigma the
embedding table's standard deviation. A run's step-0 evaluation therefore scores the prompted, untrained
model; the "before" numbers in ``results.json`` still come from the untouched base model.

Soft prompts cannot be folded into Whisper's weights and CTranslate2's Whisper takes token ids only, so
``export`` (``--to hf`` and ``--to ct2``) refuses a run that has one; use the run folder with asrtune.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy

__all__ = ["Prompt", "SoftPrompt", "FREQUENT_TOKENS", "soft_prompt_length"]

FREQUENT_TOKENS = 5000  # init=vocab samples among the first this many token ids (Lester et al. 2021)
_INIT_SEED = 0


class SoftPrompt(nn.Module):
    """n learned vectors put before the decoder's inputs.

    Shapes: ``weight`` (n, d_model); :meth:`expand` gives (B, n, d_model).
    """

    asrtune_added = True  # marks modules that strategies add (kept trainable by later additions)

    def __init__(self, initial: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(initial.detach().clone())

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    def expand(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def initial_vectors(embeddings: torch.Tensor, n: int, init: str) -> torch.Tensor:
    """The prompt's starting vectors (n, d_model) from the decoder's token embeddings (vocab, d_model)."""
    generator = torch.Generator().manual_seed(_INIT_SEED)
    table = embeddings.detach().float().cpu()
    if init == "random":
        vectors = torch.randn(n, table.shape[1], generator=generator) * table.std()
    else:
        pool = min(FREQUENT_TOKENS, table.shape[0])
        if n > pool:
            raise AsrtuneError(f"prompt:n={n} needs {n} distinct tokens to start from, the vocabulary has {pool}")
        vectors = table[torch.randperm(pool, generator=generator)[:n]]
    return vectors.to(embeddings.device, embeddings.dtype)


def soft_prompt_length(model: nn.Module) -> int:
    """How many decoder positions a soft prompt takes in ``model`` (0: none, or not a Whisper model)."""
    for module in model.modules():
        if isinstance(module, SoftPrompt):
            return module.n
    return 0


def _before_decoder(decoder: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Prepend the soft prompt on a pass that starts the cache; keep mask and positions in step on later ones."""
    if args:
        raise AsrtuneError("prompt: the decoder was called with positional arguments; asrtune's soft prompt "
                           "expects transformers' keyword call")
    prompt: SoftPrompt = decoder.soft_prompt
    n = prompt.n
    cache = kwargs.get("cache")
    past = cache.get_seq_length() if cache is not None else 0
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = decoder.embed_tokens(kwargs["input_ids"])
    batch = embeds.shape[0]
    mask, positions = kwargs.get("attention_mask"), kwargs.get("position_ids")
    if mask is not None and mask.ndim != 2:
        raise AsrtuneError("prompt: a soft prompt needs a 2-D decoder attention mask (or none); got a "
                           f"{mask.ndim}-D one (a static cache or compiled generation is not supported)")
    first = past == 0
    if first:
        embeds = torch.cat([prompt.expand(batch, embeds.dtype), embeds], dim=1)
        if positions is not None:
            head = torch.arange(n, device=positions.device, dtype=positions.dtype).expand(batch, n)
            positions = torch.cat([head, positions + n], dim=1)
    elif positions is not None:
        positions = positions + n
    if mask is not None and mask.shape[1] == past + embeds.shape[1] - n:  # generate's mask knows no prompt
        mask = torch.cat([mask.new_ones(batch, n), mask], dim=1)
    limit = decoder.config.max_target_positions
    if past + embeds.shape[1] > limit:
        raise AsrtuneError(f"prompt:n={n}: the soft prompt takes {n} of the decoder's {limit} positions, and this "
                           f"decode reaches position {past + embeds.shape[1]}; lower max_new_tokens (keep n + "
                           f"prompt tokens + max_new_tokens <= {limit})")
    decoder._asrtune_prompt_injected = first
    kwargs = {**kwargs, "input_ids": None, "inputs_embeds": embeds, "attention_mask": mask,
              "position_ids": positions}
    return args, kwargs


def _after_decoder(decoder: nn.Module, _args: tuple, _kwargs: dict, output):
    """Drop the prompt's n positions from the decoder's output (logits then line up with the labels)."""
    if not getattr(decoder, "_asrtune_prompt_injected", False):
        return output
    decoder._asrtune_prompt_injected = False
    n = decoder.soft_prompt.n
    if isinstance(output, tuple):
        return (output[0][:, n:],) + output[1:]
    output.last_hidden_state = output.last_hidden_state[:, n:]
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(h[:, n:] for h in output.hidden_states)
    return output


@STRATEGIES.register("prompt")
@dataclass(frozen=True, kw_only=True)
class Prompt(Strategy):
    """Prompt tuning: ``n`` soft prompt vectors before the decoder's prompt tokens (see the module docstring)."""

    name = "prompt"
    kind = "add"
    # Prompt vectors take far larger steps than weights do (Lester et al.: 0.3 with Adafactor). 1e-2 with
    # AdamW is the rate configs/sweep-prompt.yaml used (README, "Prompt tuning, measured"); not searched.
    default_lr = 1e-2
    families = ("whisper",)
    n: int = 16
    init: str = "vocab"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.init not in ("vocab", "random"):
            raise ValueError(f"init must be vocab or random, got {self.init!r}")

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        # here: reading a config parses strategy specs, which must not load transformers' Whisper
        from asrtune.models.whisper import whisper_core

        decoder = whisper_core(model).decoder
        limit = decoder.config.max_target_positions
        if self.n > limit // 2:
            raise AsrtuneError(f"prompt:n={self.n} would take more than half of the decoder's {limit} positions")
        if hasattr(decoder, "soft_prompt"):
            raise AsrtuneError("prompt: the decoder already has a soft prompt")
        for parameter in model.parameters():
            if not getattr(parameter, "asrtune_added", False):
                parameter.requires_grad_(False)
        decoder.soft_prompt = SoftPrompt(initial_vectors(decoder.embed_tokens.weight, self.n, self.init))
        decoder.soft_prompt.weight.asrtune_added = True
        decoder.register_forward_pre_hook(_before_decoder, with_kwargs=True)
        decoder.register_forward_hook(_after_decoder, with_kwargs=True)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        raise AsrtuneError(
            "soft prompt vectors are extra decoder inputs: transformers' Whisper would load the exported weights "
            "without them (decoding as the base model does) and CTranslate2's Whisper takes token ids only, so "
            "this run cannot be exported to hf or ct2. Use the run folder itself with asrtune (evaluate, "
            "transcribe), or train with lora, whose updates merge into the weights."
        )
