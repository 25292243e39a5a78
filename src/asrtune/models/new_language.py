"""A language Whisper lacks, as a new language token (``language: new:xx,init=yy`` in a run config).

Whisper chooses the language by one decoder-prompt token, ``<|xx|>``. For a language it was never
trained on there is no such token; borrowing a related language's (``<|kk|>`` for Kyrgyz) works but
ties the two languages together for good. :func:`add_language_token` gives the new language its own
token instead: appended to the tokenizer as a special token, one more row in the decoder's token
embeddings (Whisper's output projection is tied to them, so it is one more output class too),
initialised as a copy of the related language's row, and registered in the generation config's
``lang_to_id`` (which ``generate`` and CTranslate2's converter read). At step 0 the new token
therefore prompts the model exactly as the related language's token does; training moves it.

The run records ``language`` and ``language_init`` in its ``config.yaml``; reloading the run repeats
this (deterministic) step before its strategy and checkpoint are applied, and ``export`` writes the
grown tokenizer, weights and generation config.
"""

from __future__ import annotations

import torch

from asrtune.errors import AsrtuneError
from asrtune.languages import parse_new_language

__all__ = ["parse_new_language", "language_token", "has_language", "add_language_token", "apply_config_language",
           "generate_language"]


def language_token(code: str) -> str:
    return f"<|{code}|>"


def generate_language(language: str, generation_config) -> str:
    """What Whisper's ``generate`` takes for ``language`` (a code or a ``<|xx|>`` token): the code, or,
    for a token asrtune added (``language: new:xx,init=yy``), the token itself, since transformers' table
    of Whisper's languages (which ``generate`` checks codes against) does not list it."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    code = language.strip("<|>")
    token = language_token(code)
    if code not in LANGUAGES and token in (getattr(generation_config, "lang_to_id", None) or {}):
        return token
    return code


def _token_id(tokenizer, token: str) -> int | None:
    index = tokenizer.convert_tokens_to_ids(token)
    if index is None or index == tokenizer.unk_token_id:
        return None
    return int(index)


def has_language(model: torch.nn.Module, code: str) -> bool:
    """Whether the model's generation config knows ``<|code|>`` as a language token."""
    return language_token(code) in (getattr(model.generation_config, "lang_to_id", None) or {})


def add_language_token(model: torch.nn.Module, processor, code: str, init: str) -> int:
    """Give a Whisper model and its tokenizer a new language token, initialised from a related one.

    Changes ``model`` (embedding rows, ``config.vocab_size``, ``generation_config.lang_to_id``) and
    ``processor.tokenizer`` in place.

    Args:
        model: a multilingual ``WhisperForConditionalGeneration`` (no strategy applied yet).
        processor: its processor; the tokenizer gains ``<|code|>``.
        code: the new language's code (``ky``).
        init: a language the model knows (``kk``); its token's embedding row is copied.

    Returns:
        The new token's id.

    Raises:
        AsrtuneError: the model is English-only, ``init`` is not one of its languages, or ``code``
            already is.
    """
    generation = model.generation_config
    known = dict(getattr(generation, "lang_to_id", None) or {})
    if not getattr(generation, "is_multilingual", False) or not known:
        raise AsrtuneError(f"language new:{code}: the model is English-only; a new language token needs a "
                           "multilingual Whisper")
    tokenizer = processor.tokenizer
    new_token, init_token = language_token(code), language_token(init)
    if new_token in known or _token_id(tokenizer, new_token) is not None:
        raise AsrtuneError(f"language new:{code}: the model already has {new_token}; write language: {code}")
    if init_token not in known:
        codes = ", ".join(sorted(t.strip("<|>") for t in known))
        raise AsrtuneError(f"language new:{code},init={init}: {init!r} is not a language of this model "
                           f"(known: {codes})")
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0]
    tokenizer.add_tokens([new_token], special_tokens=True)
    new_id = _token_id(tokenizer, new_token)
    if new_id is None or new_id < rows:  # the id would share a row the model already uses
        raise AsrtuneError(f"language new:{code}: the tokenizer ({len(tokenizer)} tokens) is shorter than the "
                           f"model's vocabulary ({rows}); cannot append a token")
    # mean_resizing would draw the new rows from the embeddings' statistics: wasted, they are overwritten
    model.resize_token_embeddings(new_id + 1, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[rows:] = weight[known[init_token]]  # rows between (none in practice) copy it too
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != weight.data_ptr():  # untied: keep them alike
            output.weight[rows:] = output.weight[known[init_token]]
    generation.lang_to_id = {**known, new_token: new_id}
    # Never emitted as text: its id lies past the timestamp tokens, where timestamp decoding would read
    # it as <|30.02|>. Forcing it in the prompt and language detection do not go through suppression.
    generation.suppress_tokens = sorted({*(generation.suppress_tokens or []), new_id})
    return new_id


def apply_config_language(loaded, config) -> None:
    """Add the run config's new language token (``language_init`` set) to a freshly loaded base model.

    Nothing happens for a language the model has. Called before any strategy is applied, by training
    and by every reload of the run, so the embedding rows match the checkpoint's.
    """
    if config.language_init is None:
        return
    loaded.family.add_language_token(loaded.model, loaded.processor, config.language, config.language_init)
