"""The ``whisper`` family: transformers' ``WhisperForConditionalGeneration`` (tiny ... large-v3, large-v3-turbo).

Training targets are the decoder prompt after ``<|startoftranscript|>`` (language and task for
multilingual models, ``<|notimestamps|>``), the text with Whisper's leading space, and
``<|endoftext|>``; the decoder input is the targets shifted right behind ``<|startoftranscript|>``.
Every target position counts in the loss, the prompt tokens included (as Whisper's own recipe).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from asrtune.errors import AsrtuneError
from asrtune.models.family import FAMILIES, ModelFamily, ModuleMap

__all__ = ["WhisperFamily", "prefix_ids", "DECODER_POSITIONS"]

DECODER_POSITIONS = 448  # Whisper's decoder positions


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


@FAMILIES.register("whisper")
class WhisperFamily(ModelFamily):
    name = "whisper"
    core_class = "WhisperModel"
    model_class = "WhisperForConditionalGeneration"
    model_types = ("whisper",)
    processor_classes = ("WhisperProcessor",)
    modules = ModuleMap(encoder="encoder", decoder="decoder", projector=None,
                        stem=("encoder.conv1", "encoder.conv2", "encoder.embed_positions"),
                        fixed=("encoder.embed_positions.weight",))
    max_label_tokens = DECODER_POSITIONS

    def load(self, location: Path | str, dtype: torch.dtype):
        try:
            model = WhisperForConditionalGeneration.from_pretrained(location, dtype=dtype)
            processor = WhisperProcessor.from_pretrained(location)
        except OSError as error:
            raise AsrtuneError(f"cannot load Whisper from {location}: {str(error).splitlines()[0]}") from error
        return model, processor

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

    def loss(self, model: torch.nn.Module, batch: dict, *, plan=None) -> tuple[torch.Tensor, torch.Tensor]:
        from asrtune.training.step import whisper_loss  # lives beside the training forward

        return whisper_loss(model, batch, plan)

    def decode(self, loaded, features: torch.Tensor, frames: Sequence[int], *, language: str | None, task: str,
               max_new_tokens: int, short_input: bool = False, **generate_options) -> tuple[list[str], list[bool]]:
        from asrtune.evaluation.decode import whisper_decode_batch  # lives beside the batching loop

        return whisper_decode_batch(loaded, features, frames, language=language, task=task,
                                    max_new_tokens=max_new_tokens, short_input=short_input, **generate_options)

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
