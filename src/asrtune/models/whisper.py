"""The ``whisper`` family: transformers' ``WhisperForConditionalGeneration`` (tiny ... large-v3, large-v3-turbo).

Training targets are the decoder prompt after ``<|startoftranscript|>`` (language and task for
multilingual models, ``<|notimestamps|>``), the text with Whisper's leading space, and
``<|endoftext|>``; the decoder input is the targets shifted right behind ``<|startoftranscript|>``.
Every target position counts in the loss, the prompt tokens included (as Whisper's own recipe).

With timestamp training (``data.timestamps``) an utterance with timed segments is instead, as in Whisper's
pre-training data, language and task, then for each segment ``<|start|>`` its text ``<|end|>`` (times quantised
to 0.02 s, relative to the 30 s window), then ``<|endoftext|>``: the timestamp tokens are targets like the text.

The frozen prefix: the encoder's stem (convolutions, positions) and its bottom layers, when nothing in
them trains and no dropout applies; a step then runs the layers above from the cached output.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    StoppingCriteriaList,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from asrtune.errors import AsrtuneError
from asrtune.models.family import FAMILIES, BatchDecode, CachePlan, ModelFamily, ModuleMap
from asrtune.models.encoder_plan import whisper_shaped_plan
from asrtune.models.guards import RepetitionStop
from asrtune.models.new_language import add_language_token
from asrtune.models.short_input import encode_short, encoder_stem, short_input_frames
from asrtune.models.whisper_timing import ensure_alignment_heads
from asrtune.models.whisper_deploy import deploy_decode_batch

__all__ = ["WhisperFamily", "prefix_ids", "DECODER_POSITIONS", "whisper_core", "whisper_loss",
           "whisper_decode_batch", "deployable_generation_config", "timestamp_ids", "TIME_PRECISION"]

DECODER_POSITIONS = 448  # Whisper's decoder positions
TIME_PRECISION = 0.02  # seconds between two of Whisper's timestamp tokens (<|0.00|> ... <|30.00|>)


def whisper_core(model: torch.nn.Module) -> torch.nn.Module:
    """The ``WhisperModel`` (encoder + decoder) inside a possibly wrapped model."""
    for module in model.modules():
        if type(module).__name__ == "WhisperModel":
            return module
    raise AsrtuneError("this needs a Whisper model")


def prefix_ids(processor: WhisperProcessor, *, multilingual: bool, language: str | None, task: str) -> list[int]:
    """Decoder prompt after ``<|startoftranscript|>``: language and task (multilingual only), no-timestamps."""
    tokenizer = processor.tokenizer
    ids = []
    if multilingual:
        lang_id = tokenizer.convert_tokens_to_ids(f"<|{language or 'en'}|>")
        if lang_id is None or lang_id == tokenizer.unk_token_id:
            raise AsrtuneError(f"language {language!r} is not one this Whisper model knows")
        ids += [lang_id, tokenizer.convert_tokens_to_ids(f"<|{task}|>")]
    ids.append(tokenizer.convert_tokens_to_ids("<|notimestamps|>"))
    return ids


def timestamp_ids(processor: WhisperProcessor, segments, window_seconds: float) -> list[int] | None:
    """``<|start|>`` text ``<|end|>`` for each segment (``.start``, ``.end``, ``.text``), or None when a segment
    lies outside ``[0, window_seconds]``.

    Raises:
        AsrtuneError: the tokenizer has no timestamp tokens.
    """
    tokenizer = processor.tokenizer
    first = tokenizer.convert_tokens_to_ids("<|0.00|>")
    if not isinstance(first, int) or first == tokenizer.unk_token_id:
        raise AsrtuneError("data.timestamps: this Whisper tokenizer has no timestamp tokens (<|0.00|> ...)")
    last_step = int(round(window_seconds / TIME_PRECISION))
    ids: list[int] = []
    for segment in segments:
        start, end = round(segment.start / TIME_PRECISION), round(segment.end / TIME_PRECISION)
        if start < 0 or end > last_step or end < start or not segment.text.strip():
            return None
        ids += [first + start, *tokenizer.encode(" " + segment.text.strip(), add_special_tokens=False), first + end]
    return ids


def encode_top(model: torch.nn.Module, prefix: torch.Tensor, plan: CachePlan) -> torch.Tensor:
    """The encoder output from a cached prefix: the layers above it and the final layer norm.

    Shapes: (B, positions, d_model) -> (B, positions, d_model). Gradients flow as usual.
    """
    if plan.whole:
        return prefix
    encoder = whisper_core(model).encoder
    hidden = prefix
    for layer in encoder.layers[plan.layers:]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def whisper_loss(model: torch.nn.Module, batch: dict, plan: CachePlan | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward: the encoder from log-mels, from a cached frozen prefix, or on a cut window; the
    decoder on the labels shifted right behind ``<|startoftranscript|>``. Summed token cross-entropy and the
    number of target tokens."""
    labels = batch["labels"]
    if batch.get("prefix") is not None:
        inputs = {"encoder_outputs": (encode_top(model, batch["prefix"], plan),)}
    elif batch.get("short_frames") is not None:
        inputs = {"encoder_outputs": (encode_short(model, batch["input_features"], batch["short_frames"]),)}
    else:
        inputs = {"input_features": batch["input_features"]}
    core = whisper_core(model)
    decoder_input_ids = shift_tokens_right(labels, core.config.pad_token_id, core.config.decoder_start_token_id)
    # use_cache=False: training keeps no KV cache (it would hold every layer's keys and values beyond what
    # backward needs, and undo gradient checkpointing); generate turns it on for itself
    hidden = core(**inputs, decoder_input_ids=decoder_input_ids, use_cache=False).last_hidden_state
    # The output projection (d_model x vocabulary, the largest matmul of the decoder) and the softmax run on
    # the positions that count in the loss only, not on the batch's label padding
    targets = labels != -100
    logits = model.get_output_embeddings()(hidden[targets])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[targets], reduction="sum")
    return loss, targets.sum()


def whisper_decode_batch(loaded, features: torch.Tensor, frames: Sequence[int], *, language: str | None, task: str,
                         max_new_tokens: int, short_input: bool = False, num_beams: int = 1,
                         **generate_options) -> BatchDecode:
    """One batch through ``generate`` from log-mels (or the encoder on the batch's cut window), greedy or with
    ``num_beams`` beams, with the repetition guard: transcripts, which stopped at ``max_new_tokens`` without
    end-of-text, and which ended in a loop. A row that never loops decodes exactly as without the guard (the
    guard only ends rows; it changes no score)."""
    model = loaded.model
    if short_input:
        cut = short_input_frames(frames, features.shape[-1])
        inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=encode_short(model, features, cut))}
    else:
        inputs = {"input_features": features}
    tokenizer = loaded.processor.tokenizer
    guard = RepetitionStop(0)  # generated tokens only are checked below; the prompt never repeats
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams,
                            stopping_criteria=StoppingCriteriaList([guard]),
                            **loaded.language_kwargs(language, task), **generate_options)
    sequences = output.sequences if hasattr(output, "sequences") else output
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    generated = [_generated(row, tokenizer) for row in sequences.tolist()]
    return BatchDecode.of([text.strip() for text in texts], [len(row) >= max_new_tokens for row in generated],
                          [guard.looping(row) for row in generated])


def _generated(row: list[int], tokenizer) -> list[int]:
    """The tokens ``generate`` produced in one output row: after the prompt's special tokens, before end-of-text
    and the padding (Whisper's ``generate`` drops the end-of-text of the longest rows and pads the others with
    it, so a row that ran to ``max_new_tokens`` is the one this many tokens long)."""
    special = set(tokenizer.all_special_ids)
    start = 0
    while start < len(row) and row[start] in special:
        start += 1
    end = row.index(tokenizer.eos_token_id, start) if tokenizer.eos_token_id in row[start:] else len(row)
    return row[start:end]


def deployable_generation_config(generation: GenerationConfig, tokenizer=None) -> GenerationConfig:
    """A copy of ``generation`` that every Whisper runtime reads correctly.

    English-only models must not carry ``lang_to_id``: transformers' ``generate`` sees the attribute,
    runs language detection over an empty language set and inserts token 0 (``!``) after
    ``<|startoftranscript|>``, which wrecks every transcript (and timestamps). ``prev_sot_token_id``
    (``<|startofprev|>``, which opens the previous-text / prompt context) is filled in from ``tokenizer``
    when missing; transformers otherwise guesses it from the suppressed-token list.
    """
    fixed = copy.deepcopy(generation)
    english_only = not getattr(fixed, "is_multilingual", False)
    if english_only and hasattr(fixed, "lang_to_id") and not fixed.lang_to_id:
        delattr(fixed, "lang_to_id")
    if tokenizer is not None and getattr(fixed, "prev_sot_token_id", None) is None:
        prev = tokenizer.convert_tokens_to_ids("<|startofprev|>")
        if isinstance(prev, int) and prev != tokenizer.unk_token_id:
            fixed.prev_sot_token_id = prev
    return fixed


@FAMILIES.register("whisper")
class WhisperFamily(ModelFamily):
    name = "whisper"
    display_name = "Whisper"
    core_class = "WhisperModel"
    model_class = "WhisperForConditionalGeneration"
    model_types = ("whisper",)
    processor_classes = ("WhisperProcessor",)
    modules = ModuleMap(encoder="encoder", decoder="decoder", projector=None,
                        stem=("encoder.conv1", "encoder.conv2", "encoder.embed_positions"),
                        fixed=("encoder.embed_positions.weight",))
    max_label_tokens = DECODER_POSITIONS
    short_input = True
    long_form = True
    new_language_tokens = True
    timestamp_tokens = True
    decodings = ("greedy", "deploy")

    def load(self, location: Path | str, dtype: torch.dtype, **options):
        try:
            model = WhisperForConditionalGeneration.from_pretrained(location, dtype=dtype, **options)
            processor = WhisperProcessor.from_pretrained(location)
        except OSError as error:
            raise AsrtuneError(f"cannot load Whisper from {location}: {str(error).splitlines()[0]}") from error
        ensure_alignment_heads(model)  # word timing: openai/whisper's heads where the folder has none
        return model, processor

    def timestamp_sequences(self, processor, segments, ids, languages, durations, *, multilingual: bool,
                            task: str) -> list[np.ndarray | None]:
        window = float(processor.feature_extractor.chunk_length)
        eos = processor.tokenizer.eos_token_id
        labels: list[np.ndarray | None] = []
        for utt_id, spans, lang, seconds in zip(ids, segments, languages, durations, strict=True):
            timed = timestamp_ids(processor, spans, window) if spans and seconds <= window + 1e-6 else None
            if timed is None:
                labels.append(None)
                continue
            prompt = prefix_ids(processor, multilingual=multilingual, language=lang, task=task)[:-1]
            sequence = prompt + timed + [eos]  # no <|notimestamps|>: the model predicts times
            if len(sequence) + 1 > self.max_label_tokens:
                raise AsrtuneError(f"{utt_id}: transcript with timestamps is {len(sequence)} tokens, more than "
                                   f"Whisper's decoder holds ({self.max_label_tokens})")
            labels.append(np.asarray(sequence, dtype=np.int32))
        return labels

    def sequences(self, processor, texts, ids, languages, valid_frames, *, multilingual: bool,
                  task: str) -> tuple[list[np.ndarray], list[int]]:
        prefixes: dict[str | None, list[int]] = {}
        spaced = [" " + text.strip() for text in texts]
        encoded = processor.tokenizer(spaced, add_special_tokens=False)["input_ids"] if spaced else []
        labels = []
        eos = processor.tokenizer.eos_token_id
        for utt_id, lang, text_ids in zip(ids, languages, encoded, strict=True):
            if lang not in prefixes:
                prefixes[lang] = prefix_ids(processor, multilingual=multilingual, language=lang, task=task)
            sequence = prefixes[lang] + list(text_ids) + [eos]
            if len(sequence) + 1 > self.max_label_tokens:
                raise AsrtuneError(f"{utt_id}: transcript is {len(sequence)} tokens, more than Whisper's "
                                   f"decoder holds ({self.max_label_tokens}); `asrtune prepare` drops such rows")
            labels.append(np.asarray(sequence, dtype=np.int32))
        return labels, [0] * len(labels)

    def collate(self, items: list[dict], pad_to_multiple_of: int, processor=None) -> dict[str, torch.Tensor]:
        longest = max(len(item["labels"]) for item in items)
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, item in enumerate(items):
            labels[row, : len(item["labels"])] = torch.as_tensor(np.asarray(item["labels"]), dtype=torch.long)
        return {
            "input_features": torch.stack([item["input_features"] for item in items]),
            "labels": labels,
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "frames": torch.tensor([item["frames"] for item in items], dtype=torch.long),
        }

    def loss(self, model: torch.nn.Module, batch: dict, *, plan=None, ctc=None) -> tuple[torch.Tensor, torch.Tensor]:
        del ctc  # Whisper has no CTC head (ctc is False): the recipe refuses loop.ctc_* for it
        return whisper_loss(model, batch, plan)

    def decode(self, loaded, features: torch.Tensor, frames: Sequence[int], *, language: str | None, task: str,
               max_new_tokens: int, short_input: bool = False, decoding: str = "greedy", num_beams: int = 1,
               **generate_options) -> BatchDecode:
        if decoding == "deploy":
            if short_input or num_beams != 1:
                raise AsrtuneError("deploy decoding is faster-whisper's (5 beams, the 30 s window): it takes no "
                                   "--num-beams and no --short-input")
            prompt = [loaded.generation_config.decoder_start_token_id] + prefix_ids(
                loaded.processor, multilingual=loaded.multilingual, language=language, task=task)
            return deploy_decode_batch(loaded, features, frames, prompt, max_new_tokens=max_new_tokens,
                                       logits_processor=generate_options.get("logits_processor"))
        return whisper_decode_batch(loaded, features, frames, language=language, task=task, num_beams=num_beams,
                                    max_new_tokens=max_new_tokens, short_input=short_input, **generate_options)

    # --- the frozen prefix ------------------------------------------------------------------------------

    def cache_plan(self, model: torch.nn.Module) -> CachePlan | None:
        core = whisper_core(model)
        return whisper_shaped_plan(core.encoder, core.config)

    def prefix_shape(self, model: torch.nn.Module, processor=None) -> tuple[int, int]:
        config = whisper_core(model).config
        return config.max_source_positions, config.d_model

    @torch.no_grad()
    def encode_prefix(self, model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                      frames: torch.Tensor | None = None) -> torch.Tensor:
        del frames  # the encoder sees its whole 30 s window
        encoder = whisper_core(model).encoder
        was_training = encoder.training
        encoder.eval()
        features = features.to(dtype=next(encoder.parameters()).dtype)
        if plan.whole:
            hidden = encoder(features).last_hidden_state
        else:
            hidden = encoder_stem(encoder, features)
            for layer in encoder.layers[: plan.layers]:
                hidden = layer(hidden, None)
        encoder.train(was_training)
        return hidden

    # --- languages --------------------------------------------------------------------------------------

    def add_language_token(self, model: torch.nn.Module, processor, language: str, init: str) -> int:
        return add_language_token(model, processor, language, init)

    # --- export -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def probe_logits(self, model: torch.nn.Module) -> torch.Tensor:
        config = model.config
        generator = torch.Generator().manual_seed(0)
        parameter = next(model.parameters())
        features = torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions, generator=generator)
        decoder_ids = torch.tensor([[config.decoder_start_token_id, 1, 2, 3]])
        output = model(input_features=features.to(parameter.device, parameter.dtype),
                       decoder_input_ids=decoder_ids.to(parameter.device))
        return output.logits.float().cpu()

    def prepare_export(self, model: torch.nn.Module, processor) -> None:
        model.generation_config = deployable_generation_config(model.generation_config, processor.tokenizer)
