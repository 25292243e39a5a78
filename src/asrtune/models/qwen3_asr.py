"""The ``qwen3_asr`` family: transformers' native ``Qwen3ASRForConditionalGeneration`` + ``Qwen3ASRProcessor``.

Not the ``qwen-asr`` package (it pins transformers 4.x). The audio encoder cuts the log-mels into
``2 * n_window``-frame chunks (1 s), downsamples each by three stride-2 convolutions (13 tokens a
full chunk) and packs the valid positions of every row into one sequence; a two-layer projector
maps them into the LLM (Qwen3).

Training follows the official fine-tuning recipe: the prompt is the chat template's user turn with
the audio and the assistant's opening; the target is ``language <Name><asr_text>`` then the
transcript and ``<|im_end|>``. The prompt and audio are masked from the loss here (the processor's
``output_labels=True`` masks only audio and padding). Decoding strips the prompt and everything up
to ``<asr_text>``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asrtune.errors import AsrtuneError
from asrtune.models.family import FAMILIES, CachePlan, ModuleMap, load_pretrained, model_core, trains
from asrtune.models.qwen2_audio import LLM_LINEARS, Qwen2AudioFamily

__all__ = ["Qwen3ASRFamily", "qwen3_audio_tokens", "ASR_TEXT"]

ASR_TEXT = "<asr_text>"


def qwen3_audio_tokens(frames: int, n_window: int = 50) -> int:
    """Audio tokens for ``frames`` valid log-mel frames (as ``Qwen3ASRProcessor`` counts them)."""
    chunk = 2 * n_window
    remainder = frames % chunk
    tail = ((((remainder - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 2 + 1 if remainder else 0
    return tail + (frames // chunk) * 13


def _language_name(language: str | None) -> str:
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    if language is None:
        return "English"
    if language in LANGUAGE_CODE_TO_NAME.values():
        return language
    name = LANGUAGE_CODE_TO_NAME.get(language.lower())
    if name is None:
        raise AsrtuneError(f"language {language!r} is not one Qwen3-ASR knows "
                           f"({', '.join(sorted(LANGUAGE_CODE_TO_NAME))})")
    return name


@FAMILIES.register("qwen3_asr")
class Qwen3ASRFamily(Qwen2AudioFamily):
    name = "qwen3_asr"
    display_name = "Qwen3-ASR"
    core_class = "Qwen3ASRModel"
    model_class = "Qwen3ASRForConditionalGeneration"
    model_types = ("qwen3_asr",)
    processor_classes = ("Qwen3ASRProcessor",)
    modules = ModuleMap(encoder="audio_tower", decoder="language_model", projector="multi_modal_projector",
                        stem=("audio_tower.conv2d1", "audio_tower.conv2d2", "audio_tower.conv2d3",
                              "audio_tower.conv_out"),
                        fixed=(), llm_linears=LLM_LINEARS, head="lm_head")
    feature_mask_arg = "input_features_mask"
    ctc = False  # its target starts with the language and <asr_text>: no CTC alignment here

    def load(self, location: Path | str, dtype: torch.dtype, **options):
        from transformers import Qwen3ASRForConditionalGeneration

        model, processor = load_pretrained(Qwen3ASRForConditionalGeneration, location, dtype, label="Qwen3-ASR",
                                           processor_classes=self.processor_classes, **options)
        self.prepare_export(model, processor)
        return model, processor

    def audio_tokens(self, frames: int) -> int:
        return qwen3_audio_tokens(frames)

    def prompt(self, processor, language: str | None) -> str:
        if not getattr(processor, "chat_template", None):
            raise AsrtuneError("the Qwen3-ASR processor has no chat template")
        messages = [{"role": "user", "content": [{"type": "audio", "audio": "speech.wav"}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def target_ids(self, tokenizer, text: str, language: str | None) -> list[int]:
        return tokenizer(f"language {_language_name(language)}{ASR_TEXT}{text.strip()}",
                         add_special_tokens=False)["input_ids"]

    def transcript_ids(self, tokens: list[int], processor) -> list[int]:
        marker = processor.tokenizer.convert_tokens_to_ids(ASR_TEXT)
        if marker in tokens:
            return tokens[tokens.index(marker) + 1:]
        return tokens

    def encode_audio(self, model: torch.nn.Module, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The audio encoder's output per row, (B, positions, d_model), zero past each row's audio tokens."""
        tower = model_core(model).audio_tower
        mask = (torch.arange(features.shape[-1], device=features.device)[None, :]
                < frames.to(features.device)[:, None]).long()
        packed = tower(input_features=features, input_features_mask=mask).last_hidden_state
        counts = [self.audio_tokens(int(f)) for f in frames.tolist()]
        width = self.audio_tokens(features.shape[-1])
        rows = torch.zeros(len(counts), width, packed.shape[-1], dtype=packed.dtype, device=packed.device)
        for row, piece in enumerate(torch.split(packed, counts)):
            rows[row, : len(piece)] = piece
        return rows

    def audio_states(self, model: torch.nn.Module, batch: dict, plan: CachePlan | None = None) -> torch.Tensor:
        """The audio encoder's output (B, audio tokens, d_model): cached whole, or encoded from the log-mels."""
        if batch.get("prefix") is not None:
            return batch["prefix"]
        return self.encode_audio(model, batch["input_features"], batch["feature_attention_mask"].sum(-1))

    def cache_plan(self, model: torch.nn.Module) -> CachePlan | None:
        """The whole audio encoder when nothing in it trains and it applies no dropout (its windows are chunked
        and packed: a partly trained encoder is not cached)."""
        encoder = model_core(model).get_submodule(self.modules.encoder)
        if any(getattr(encoder.config, name, 0) for name in ("dropout", "attention_dropout", "activation_dropout",
                                                              "encoder_layerdrop")) or trains(encoder):
            return None
        return CachePlan(layers=len(encoder.layers), whole=True)

    @torch.no_grad()
    def encode_prefix(self, model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                      frames: torch.Tensor) -> list[torch.Tensor]:
        """Each utterance's encoder output, its audio tokens only."""
        tower = model_core(model).get_submodule(self.modules.encoder)
        was_training = tower.training
        tower.eval()
        output = self.encode_audio(model, features.to(dtype=next(tower.parameters()).dtype), frames)
        tower.train(was_training)
        return [row[: self.audio_tokens(int(f))] for row, f in zip(output, frames.tolist(), strict=True)]

    def probe_frames(self, audio_config) -> int:
        return 2 * audio_config.n_window

    def prefix_shape(self, model: torch.nn.Module, processor=None) -> tuple[int, int]:
        config = model_core(model).audio_tower.config
        if processor is None:
            raise AsrtuneError("the qwen3_asr prefix cache needs the processor (its window length)")
        extractor = processor.feature_extractor
        chunk = 2 * config.n_window
        frames = -(-(extractor.n_samples // extractor.hop_length) // chunk) * chunk
        return self.audio_tokens(frames), config.d_model
