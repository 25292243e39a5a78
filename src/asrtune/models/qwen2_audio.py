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
    CtcSettings,
    CachePlan,
    ModelFamily,
    ModuleMap,
    load_pretrained,
    model_core,
)
from asrtune.models.encoder_plan import whisper_shaped_plan
from asrtune.models.guards import RepetitionStop

__all__ = ["Qwen2AudioFamily", "INSTRUCTION", "audio_token_count", "prompt_text", "LLM_LINEARS", "ctc_collapse"]

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


def ctc_collapse(best: Sequence[int], blank: int) -> list[int]:
    """A greedy CTC path as tokens: repeats collapsed, then blanks dropped (``a a - a b`` -> ``a a b``)."""
    return [token for i, token in enumerate(best) if token != blank and (i == 0 or token != best[i - 1])]


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
    ctc = True  # CTC of the projected audio onto the LLM's embeddings (loop.ctc_weight, loop.ctc_only)
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

    # The audio tower on each utterance's valid positions only. Qwen2AudioModel runs it on the whole padded
    # window and masks the padded keys; here the stem runs on the valid frames and the few padded frames its
    # convolutions see at the edge, then the layers on the valid positions: the same outputs for a fraction of
    # the work on short clips.

    def _positions(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder positions (after the stride-2 convolution) of ``frames`` valid log-mel frames, (B,)."""
        return (frames - 1) // 2 + 1

    def _stem(self, tower: torch.nn.Module, features: torch.Tensor, positions: int) -> torch.Tensor:
        """(B, n_mels, frames) log-mels -> (B, positions, d_audio): convolutions, GELU, positions, dropout.

        The convolutions see the first ``2 * positions + 4`` frames only: each of the first ``positions``
        outputs depends on frames up to ``2 * positions`` (two kernels of 3, the second of stride 2), so they
        equal the whole window's while the work follows the speech, not the 30 s of padding."""
        features = features[..., : 2 * positions + 4].to(dtype=tower.conv1.weight.dtype)
        hidden = torch.nn.functional.gelu(tower.conv2(torch.nn.functional.gelu(tower.conv1(features))))
        hidden = hidden.permute(0, 2, 1)[:, :positions] + tower.embed_positions.weight[:positions]
        return torch.nn.functional.dropout(hidden, p=tower.config.dropout, training=tower.training)

    def _layers(self, tower: torch.nn.Module, hidden: torch.Tensor, lengths: torch.Tensor,
                layers) -> torch.Tensor:
        """``layers`` of the tower on (B, positions, d_audio), each row's keys past ``lengths`` masked."""
        from transformers.masking_utils import create_bidirectional_mask

        valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).long()
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=hidden, attention_mask=valid)
        for layer in layers:
            if tower.training and tower.config.encoder_layerdrop > 0 and torch.rand([]) < tower.config.encoder_layerdrop:
                continue
            hidden = layer(hidden, mask)
        return hidden

    def _pooled(self, tower: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Average-pool by 2, then the tower's final LayerNorm: (B, positions, d) -> (B, positions // 2, d)."""
        return tower.layer_norm(tower.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1))

    def audio_states(self, model: torch.nn.Module, batch: dict, plan: CachePlan | None = None) -> torch.Tensor:
        """The audio tower's output (B, audio tokens, d_audio), padded past each row's count: from the cached
        frozen prefix (``batch["prefix"]``, the layers above it run here) or from the log-mels."""
        tower = model_core(model).get_submodule(self.modules.encoder)
        frames = batch["feature_attention_mask"].sum(-1)
        lengths = self._positions(frames)
        if batch.get("prefix") is not None:
            if plan.whole:
                return batch["prefix"]
            hidden = batch["prefix"].to(dtype=tower.conv1.weight.dtype)
            return self._pooled(tower, self._layers(tower, hidden, lengths, tower.layers[plan.layers:]))
        hidden = self._stem(tower, batch["input_features"], int(lengths.max()))
        return self._pooled(tower, self._layers(tower, hidden, lengths, tower.layers))

    def embed_with_audio(self, model: torch.nn.Module, input_ids: torch.Tensor, projected: torch.Tensor,
                         frames: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's audio tokens replaced by its projected audio positions."""
        core = model_core(model)
        counts = [self.audio_tokens(int(f)) for f in frames.tolist()]
        valid = torch.cat([projected[row, :count] for row, count in enumerate(counts)])
        embeds = core.get_input_embeddings()(input_ids)
        where = (input_ids == core.config.audio_token_id).unsqueeze(-1)
        return embeds.masked_scatter(where, valid.to(embeds.dtype))

    def loss(self, model: torch.nn.Module, batch: dict, *, plan=None,
             ctc: CtcSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy through the LLM, plus ``ctc.weight`` times the CTC loss of the projected
        audio against the LLM's embeddings (``ctc.only``: the CTC loss alone, the LLM not run)."""
        labels, input_ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
        frames = batch["feature_attention_mask"].sum(-1)
        projected = model_core(model).multi_modal_projector(self.audio_states(model, batch, plan))
        targets = labels[:, 1:]
        where = targets != -100
        loss = projected.new_zeros((), dtype=torch.float32)
        if ctc is None or not ctc.only:
            embeds = self.embed_with_audio(model, input_ids, projected, frames)
            # use_cache=False: training keeps no KV cache (see whisper_loss)
            hidden = model_core(model)(inputs_embeds=embeds, attention_mask=attention,
                                       use_cache=False).last_hidden_state
            # the head (hidden x vocabulary) and the softmax run on the transcript's positions only: the prompt
            # and the audio tokens, most of the sequence, predict nothing that counts
            logits = model.get_output_embeddings()(hidden[:, :-1][where])
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[where], reduction="sum")
        if ctc is not None:
            loss = loss + ctc.weight * self.ctc_loss(model, projected, frames, labels, ctc)
        return loss, where.sum()

    # --- CTC of the projected audio onto the LLM's embeddings (alignment; WeST, Soundwave) ----------------

    def ctc_logits(self, model: torch.nn.Module, projected: torch.Tensor,
                   vocab: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, V) scores of projected audio frames against the LLM's input embeddings (rows ``vocab``, or
        every row): dot products, as the LLM's own embedding space measures them."""
        embeddings = model_core(model).get_input_embeddings().weight
        if vocab is not None:
            embeddings = embeddings[vocab]
        return projected @ embeddings.to(projected.dtype).T

    def ctc_loss(self, model: torch.nn.Module, projected: torch.Tensor, frames: torch.Tensor, labels: torch.Tensor,
                 ctc: CtcSettings) -> torch.Tensor:
        """Summed CTC loss of each row's transcript tokens (its labels but the end token), blank = ``vocab[0]``."""
        counts = torch.tensor([self.audio_tokens(int(f)) for f in frames.tolist()], device=projected.device)
        log_probs = self.ctc_logits(model, projected, ctc.vocab).float().log_softmax(-1).transpose(0, 1)
        rows = [row[row != -100][:-1] for row in labels]  # the target, without its end token
        targets = ctc.index.to(labels.device)[torch.cat(rows)]
        if (targets < 0).any():
            raise AsrtuneError("CTC: a transcript token is outside the CTC vocabulary (built from the training "
                               "transcripts)")
        lengths = torch.tensor([len(row) for row in rows], device=projected.device)
        return torch.nn.functional.ctc_loss(log_probs, targets, counts, lengths, blank=0, reduction="sum",
                                            zero_infinity=True)

    @torch.no_grad()
    def ctc_decode(self, loaded, features: torch.Tensor, frames: Sequence[int]) -> list[str]:
        """Greedy CTC transcripts of a batch, no LLM involved: the best embedding row per projected frame,
        repeats collapsed, blanks (the audio placeholder's row) dropped."""
        model, processor = loaded.model, loaded.processor
        frames = torch.tensor(list(frames), device=features.device)
        batch = {"input_features": features,
                 "feature_attention_mask": (torch.arange(features.shape[-1], device=features.device)[None, :]
                                            < frames[:, None]).long()}
        projected = model_core(model).multi_modal_projector(self.audio_states(model, batch))
        best = self.ctc_logits(model, projected).argmax(-1).tolist()
        blank = model_core(model).config.audio_token_id
        counts = [self.audio_tokens(int(f)) for f in frames.tolist()]
        return [processor.tokenizer.decode(ctc_collapse(row[:count], blank), skip_special_tokens=True).strip()
                for row, count in zip(best, counts, strict=True)]

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

    # --- the frozen prefix: the tower's stem and bottom layers, each utterance's valid positions only -----

    def cache_plan(self, model: torch.nn.Module) -> CachePlan | None:
        """The largest frozen prefix of the audio tower (stem and bottom layers; ``whole`` adds the pooling
        and final LayerNorm), or None when the stem trains or dropout is on."""
        tower = model_core(model).get_submodule(self.modules.encoder)
        return whisper_shaped_plan(tower, tower.config)

    def prefix_shape(self, model: torch.nn.Module, processor=None) -> tuple[int, int]:
        """The longest cached item (positions, width): the tower's positions for a full window."""
        config = model_core(model).audio_tower.config
        return config.max_source_positions, config.d_model

    @torch.no_grad()
    def encode_prefix(self, model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                      frames: torch.Tensor) -> list[torch.Tensor]:
        """Each utterance's cached prefix, its valid positions only: the stem and ``plan.layers`` layers'
        output (positions, d_audio), or with ``plan.whole`` the tower's output (audio tokens, d_audio)."""
        tower = model_core(model).get_submodule(self.modules.encoder)
        was_training = tower.training
        tower.eval()
        frames = frames.to(features.device)
        lengths = self._positions(frames)
        hidden = self._layers(tower, self._stem(tower, features, int(lengths.max())), lengths,
                              tower.layers[: plan.layers])
        if plan.whole:
            hidden, lengths = self._pooled(tower, hidden), frames.new_tensor([self.audio_tokens(int(f))
                                                                               for f in frames.tolist()])
        tower.train(was_training)
        return [row[:length] for row, length in zip(hidden, lengths.tolist(), strict=True)]
