"""The ``qwen2_audio`` family: transformers' ``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor``.

The model: a Whisper-shaped audio encoder (``audio_tower``; exactly ``2 * max_source_positions``
log-mel frames in, average-pooled to 25 positions a second), a one-Linear projector
(``multi_modal_projector``) and a causal LLM (``language_model`` + ``lm_head``). The processor's chat
template renders the prompt; its one ``<|AUDIO|>`` is expanded to as many audio tokens as the
utterance's audio gives, exactly as ``Qwen2AudioProcessor`` does.

Training sequence: ``prompt`` (system, user turn with the audio and :data:`INSTRUCTION`, the
assistant's opening) then the transcript and ``<|im_end|>`` (the tokenizer's end-of-text when the
vocabulary has no ``<|im_end|>``). Labels mask the prompt, the audio tokens and padding (-100).
Decoding feeds the same prompt (left-padded), stops at the end token and strips the prompt; the
decoding guards (``asrtune.models.guards``) bound the new tokens by the audio's duration and stop
a row that loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteriaList

from asrtune.errors import AsrtuneError
from asrtune.models.family import (
    FAMILIES,
    BatchDecode,
    CachePlan,
    ModelFamily,
    ModuleMap,
    load_pretrained,
    model_core,
    trains,
)
from asrtune.models.guards import RepetitionStop

__all__ = ["Qwen2AudioFamily", "INSTRUCTION", "audio_token_count", "prompt_text", "LLM_LINEARS"]

INSTRUCTION = "Transcribe the audio."
END_TOKEN = "<|im_end|>"
LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_SEQUENCE = 4096  # prompt (with its audio tokens) + transcript + end token


def audio_token_count(frames: int) -> int:
    """Audio tokens for ``frames`` valid log-mel frames: conv stride 2, then average pooling by 2."""
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


def prompt_text(processor, language: str | None = None) -> str:
    """The prompt as text, with one ``<|AUDIO|>`` (the processor expands it): the chat template rendered."""
    instruction = INSTRUCTION if not language or language == "en" else f"Transcribe the audio ({language})."
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "speech.wav"},
                                             {"type": "text", "text": instruction}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"{processor.audio_bos_token}{processor.audio_token}{processor.audio_eos_token}{instruction}"


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@FAMILIES.register("qwen2_audio")
class Qwen2AudioFamily(ModelFamily):
    name = "qwen2_audio"
    display_name = "Qwen2-Audio"
    core_class = "Qwen2AudioModel"
    model_class = "Qwen2AudioForConditionalGeneration"
    model_types = ("qwen2_audio",)
    processor_classes = ("Qwen2AudioProcessor",)
    modules = ModuleMap(encoder="audio_tower", decoder="language_model", projector="multi_modal_projector",
                        stem=("audio_tower.conv1", "audio_tower.conv2", "audio_tower.embed_positions"),
                        fixed=("audio_tower.embed_positions.weight",), llm_linears=LLM_LINEARS, head="lm_head")
    max_label_tokens = MAX_SEQUENCE
    decode_guards = True
    feature_mask_arg = "feature_attention_mask"  # the model's keyword for the log-mel frame mask

    # --- what differs between LLM families (Qwen3-ASR overrides these) -----------------------------------

    def audio_tokens(self, frames: int) -> int:
        """Audio tokens the processor expands ``<|AUDIO|>`` to for ``frames`` valid log-mel frames."""
        return audio_token_count(frames)

    def prompt(self, processor, language: str | None) -> str:
        """The prompt text, with one audio placeholder."""
        return prompt_text(processor, language)

    def target_ids(self, tokenizer, text: str, language: str | None) -> list[int]:
        """Token ids of the target before the end token: the transcript."""
        return tokenizer(text.strip(), add_special_tokens=False)["input_ids"]

    def transcript_ids(self, tokens: list[int], processor) -> list[int]:
        """The transcript part of generated tokens (all of them here)."""
        return tokens

    def load(self, location: Path | str, dtype: torch.dtype, **options):
        from transformers import Qwen2AudioForConditionalGeneration

        model, processor = load_pretrained(Qwen2AudioForConditionalGeneration, location, dtype, label="Qwen2-Audio",
                                           processor_classes=self.processor_classes, **options)
        model.generation_config.eos_token_id = self.end_token_ids(processor)
        model.generation_config.pad_token_id = _pad_id(processor.tokenizer)
        return model, processor

    # --- sequences --------------------------------------------------------------------------------------

    def end_token_ids(self, processor) -> list[int]:
        tokenizer = processor.tokenizer
        end = tokenizer.convert_tokens_to_ids(END_TOKEN)
        ids = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
        return ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id not in ids else ids

    def prompt_ids(self, processor, frames: int, language: str | None) -> list[int]:
        """The prompt's token ids for an utterance of ``frames`` valid log-mel frames."""
        text = self.prompt(processor, language)
        if text.count(processor.audio_token) != 1:
            raise AsrtuneError(f"the prompt must hold one {processor.audio_token}; the chat template gives "
                               f"{text.count(processor.audio_token)}")
        text = text.replace(processor.audio_token, processor.audio_token * self.audio_tokens(frames))
        return processor.tokenizer(text)["input_ids"]  # special tokens as the processor adds them

    def sequences(self, processor, texts, ids, languages, valid_frames, *, multilingual: bool,
                  task: str) -> tuple[list[np.ndarray], list[int]]:
        del multilingual
        if task != "transcribe":
            raise AsrtuneError(f"task {task!r}: the {self.name} family transcribes only")
        tokenizer = processor.tokenizer
        end = self.end_token_ids(processor)[0]
        prompts: dict[tuple, list[int]] = {}
        sequences, prompt_lengths = [], []
        for utt_id, lang, frames, text in zip(ids, languages, valid_frames, texts, strict=True):
            text_ids = self.target_ids(tokenizer, text, lang)
            key = (lang, frames)
            if key not in prompts:
                prompts[key] = self.prompt_ids(processor, frames, lang)
            sequence = prompts[key] + list(text_ids) + [end]
            if len(sequence) > self.max_label_tokens:
                raise AsrtuneError(f"{utt_id}: prompt and transcript are {len(sequence)} tokens, more than "
                                   f"{self.max_label_tokens}; `asrtune prepare` drops such rows")
            sequences.append(np.asarray(sequence, dtype=np.int64))
            prompt_lengths.append(len(prompts[key]))
        return sequences, prompt_lengths

    def collate(self, items: list[dict], pad_to_multiple_of: int, processor=None) -> dict[str, torch.Tensor]:
        """Right-padded input ids (B, L), their attention mask, labels (-100 on prompt, audio and padding)
        and the audio's feature mask (B, frames)."""
        longest = max(len(item["labels"]) for item in items)
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.zeros((len(items), width), dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, item in enumerate(items):
            ids = torch.as_tensor(np.asarray(item["labels"]), dtype=torch.long)
            input_ids[row, : len(ids)], attention[row, : len(ids)] = ids, 1
            labels[row, item["prompt_length"]: len(ids)] = ids[item["prompt_length"]:]
        features = torch.stack([item["input_features"] for item in items])
        frames = torch.tensor([item["frames"] for item in items], dtype=torch.long)
        return {"input_features": features, "labels": labels, "input_ids": input_ids, "attention_mask": attention,
                "feature_attention_mask": (torch.arange(features.shape[-1])[None, :] < frames[:, None]).long(),
                "index": torch.tensor([item["index"] for item in items], dtype=torch.long), "frames": frames}

    # --- training forward -------------------------------------------------------------------------------

    def encode_audio(self, model: torch.nn.Module, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """The audio tower's output (B, positions, d_audio) for log-mels (B, n_mels, frames), each row's
        padding masked as ``Qwen2AudioModel`` masks it."""
        from transformers.masking_utils import create_bidirectional_mask

        tower = model_core(model).audio_tower
        lengths, _ = tower._get_feat_extract_output_lengths(frames.to(features.device))
        positions = (features.shape[-1] - 2) // 2 + 1
        mask_2d = (torch.arange(positions, device=features.device)[None, :] < lengths[:, None]).long()
        dummy = torch.zeros((features.shape[0], positions, 1), dtype=next(tower.parameters()).dtype,
                            device=features.device)
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
        return tower(features, attention_mask=mask).last_hidden_state

    def embed_with_audio(self, model: torch.nn.Module, input_ids: torch.Tensor, audio: torch.Tensor,
                         frames: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's audio tokens replaced by its projected audio positions."""
        core = model_core(model)
        projected = core.multi_modal_projector(audio)
        counts = [self.audio_tokens(int(f)) for f in frames.tolist()]
        valid = torch.cat([projected[row, :count] for row, count in enumerate(counts)])
        embeds = core.get_input_embeddings()(input_ids)
        where = (input_ids == core.config.audio_token_id).unsqueeze(-1)
        return embeds.masked_scatter(where, valid.to(embeds.dtype))

    def loss(self, model: torch.nn.Module, batch: dict, *, plan=None) -> tuple[torch.Tensor, torch.Tensor]:
        # use_cache=False: training keeps no KV cache (see whisper_loss)
        labels, input_ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
        frames = batch["feature_attention_mask"].sum(-1)
        core = model_core(model)
        if batch.get("prefix") is not None:  # the frozen audio tower's cached output
            embeds = self.embed_with_audio(model, input_ids, batch["prefix"], frames)
            hidden = core(inputs_embeds=embeds, attention_mask=attention, use_cache=False).last_hidden_state
        else:
            hidden = core(input_ids=input_ids, input_features=batch["input_features"], attention_mask=attention,
                          use_cache=False, **{self.feature_mask_arg: batch["feature_attention_mask"]}
                          ).last_hidden_state
        # the head (hidden x vocabulary) and the softmax run on the transcript's positions only: the prompt and
        # the audio tokens, most of the sequence, predict nothing that counts
        targets = labels[:, 1:]
        where = targets != -100
        logits = model.get_output_embeddings()(hidden[:, :-1][where])
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
        return loss, where.sum()

    # --- decoding ---------------------------------------------------------------------------------------

    def decode(self, loaded, features: torch.Tensor, frames: Sequence[int], *, language: str | None, task: str,
               max_new_tokens: int, short_input: bool = False, num_beams: int = 1, decoding: str = "greedy",
               **generate_options) -> BatchDecode:
        del task, short_input, decoding  # one task; the audio tower takes its full window only; greedy only
        if num_beams != 1:  # the repetition guard stops rows by index, which beams reorder
            raise AsrtuneError(f"{self.name} decodes greedily only (num_beams 1, not {num_beams})")
        processor, model = loaded.processor, loaded.model
        prompts = [self.prompt_ids(processor, int(f), language) for f in frames]
        width = max(map(len, prompts))
        pad = _pad_id(processor.tokenizer)
        device = features.device
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(prompt):], attention[row, width - len(prompt):] = torch.tensor(prompt), 1
        feature_mask = (torch.arange(features.shape[-1])[None, :] < torch.tensor(list(frames))[:, None]).long()
        ends = self.end_token_ids(processor)
        guard = RepetitionStop(width)
        output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                input_features=features, **{self.feature_mask_arg: feature_mask.to(device)},
                                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=ends,
                                pad_token_id=pad, stopping_criteria=StoppingCriteriaList([guard]),
                                **generate_options)
        sequences = output.sequences if hasattr(output, "sequences") else output
        new = sequences[:, width:]
        texts = processor.tokenizer.batch_decode([self.transcript_ids(row, processor) for row in new.tolist()],
                                                 skip_special_tokens=True)
        # a row the repetition guard stopped did not run to the cap: its loop stays in the text
        capped = [not any(token in ends for token in row) for row in new.tolist()]
        return BatchDecode.of([text.strip() for text in texts], capped, [i in guard.stopped for i in range(len(texts))])

    # --- export -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def probe_logits(self, model: torch.nn.Module) -> torch.Tensor:
        core = model_core(model)
        audio_config = core.audio_tower.config
        frames = self.probe_frames(audio_config)
        generator = torch.Generator().manual_seed(0)
        parameter = next(model.parameters())
        features = torch.randn(1, audio_config.num_mel_bins, frames, generator=generator)
        ids = [1, 2] + [core.config.audio_token_id] * self.audio_tokens(frames) + [3, 4]
        output = model(input_ids=torch.tensor([ids], device=parameter.device),
                       input_features=features.to(parameter.device, parameter.dtype),
                       attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=parameter.device),
                       **{self.feature_mask_arg: torch.ones(1, frames, dtype=torch.long, device=parameter.device)})
        return output.logits.float().cpu()

    def probe_frames(self, audio_config) -> int:
        return 2 * audio_config.max_source_positions

    def prepare_export(self, model: torch.nn.Module, processor) -> None:
        """Plain ``generate`` on the exported folder stops where asrtune's decoding stops."""
        model.generation_config.eos_token_id = self.end_token_ids(processor)
        model.generation_config.pad_token_id = _pad_id(processor.tokenizer)

    def export_record(self, processor) -> dict:
        """The prompt to feed the exported model (one audio placeholder)."""
        return {"prompt": self.prompt(processor, None)}

    # --- the frozen prefix: the whole audio tower or nothing --------------------------------------------

    def cache_plan(self, model: torch.nn.Module) -> CachePlan | None:
        """The whole audio encoder when nothing in it trains and it applies no dropout (a partly trained audio
        encoder is not cached: a step runs the projector and the LLM from the tower's output)."""
        encoder = model_core(model).get_submodule(self.modules.encoder)
        config = encoder.config
        if any(getattr(config, name, 0) for name in ("dropout", "attention_dropout", "activation_dropout",
                                                      "encoder_layerdrop")):
            return None
        if trains(encoder):
            return None
        return CachePlan(layers=len(encoder.layers), whole=True)

    def prefix_shape(self, model: torch.nn.Module, processor=None) -> tuple[int, int]:
        """One cached audio-tower output's shape (positions, width)."""
        config = model_core(model).audio_tower.config
        return (config.max_source_positions - 2) // 2 + 1, config.d_model

    @torch.no_grad()
    def encode_prefix(self, model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                      frames: torch.Tensor) -> torch.Tensor:
        """The audio tower's output before the projector, each row's padding masked by its valid ``frames``."""
        tower = model_core(model).get_submodule(self.modules.encoder)
        was_training = tower.training
        tower.eval()
        output = self.encode_audio(model, features.to(dtype=next(tower.parameters()).dtype), frames)
        tower.train(was_training)
        return output
