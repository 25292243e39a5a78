"""How many decoder positions a transcript takes, from the model's tokenizer alone.

``asrtune prepare`` drops transcripts longer than Whisper's decoder holds (448 positions) before
training would fail on them. Counting needs only the tokenizer, so it is loaded without the
weights: from ``tokenizer.json`` of a CTranslate2 folder (a bundled alias), or the tokenizer files
of an HF folder. The count is the one :class:`~asrtune.data.features.FeatureDataset` checks:
``<|startoftranscript|>`` + prefix (language and task for multilingual models, then
no-timestamps) + the text's tokens + ``<|endoftext|>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from transformers import WhisperTokenizerFast

from asrtune.data.features import MAX_LABEL_TOKENS, label_ids
from asrtune.errors import AsrtuneError
from asrtune.models.load import load_base_model, resolve_source, run_model_source

__all__ = ["LabelBudget", "load_label_budget"]

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")
_MULTILINGUAL_VOCAB = 51865  # openai/whisper: n_vocab >= 51865 means multilingual


@dataclass(frozen=True)
class LabelBudget:
    """A tokenizer and what the model's decoder prompt looks like.

    Attributes:
        tokenizer: the model's Whisper tokenizer.
        multilingual: whether the prompt carries language and task tokens.
        languages: language codes the tokenizer has a token for.
        limit: decoder positions (Whisper: 448).
    """

    tokenizer: object = field(repr=False)
    multilingual: bool
    languages: frozenset[str]
    limit: int = MAX_LABEL_TOKENS

    def positions(self, text: str) -> int:
        """Decoder positions the transcript takes in training (as FeatureDataset counts them)."""
        prefix = [0] * (3 if self.multilingual else 1)
        return len(label_ids(SimpleNamespace(tokenizer=self.tokenizer), text, prefix)) + 1


def _languages(tokenizer) -> frozenset[str]:
    vocab = tokenizer.get_added_vocab()
    return frozenset(m.group(1) for token in vocab if (m := _LANGUAGE_TOKEN.match(token)))


def _from_ct2(directory: Path) -> LabelBudget:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise AsrtuneError(f"{directory}: CTranslate2 model has no tokenizer.json")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    # The vocabulary size with the 1501 timestamp tokens (some bundles leave them out) tells the kind.
    size = len(tokenizer)
    if size == tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1:
        size += 1501
    return LabelBudget(tokenizer, size >= _MULTILINGUAL_VOCAB, _languages(tokenizer))


def _from_hf_dir(directory: Path) -> LabelBudget:
    try:
        tokenizer = WhisperTokenizerFast.from_pretrained(str(directory))
    except (OSError, ValueError) as error:
        raise AsrtuneError(
            f"cannot load the tokenizer of {directory}: {str(error).splitlines()[0]}"
        ) from error
    multilingual = None
    generation = directory / "generation_config.json"
    if generation.is_file():
        multilingual = json.loads(generation.read_text()).get("is_multilingual")
    if multilingual is None:
        config = json.loads((directory / "config.json").read_text())
        multilingual = config.get("vocab_size", 0) >= _MULTILINGUAL_VOCAB
    return LabelBudget(tokenizer, bool(multilingual), _languages(tokenizer))


def load_label_budget(source: str) -> LabelBudget:
    """The label budget of any model source asrtune accepts, loading only its tokenizer where it can.

    Raises:
        AsrtuneError: the source is not a model, or has no tokenizer.
    """
    kind, location = resolve_source(source)
    if kind == "run":
        return load_label_budget(run_model_source(Path(location)))
    if kind == "ct2":
        return _from_ct2(Path(location))
    if kind == "hf_dir":
        return _from_hf_dir(Path(location))
    loaded = load_base_model(source)  # a hub id: transformers resolves it (offline, only when cached)
    tokenizer = loaded.processor.tokenizer
    return LabelBudget(tokenizer, loaded.multilingual, _languages(tokenizer))
