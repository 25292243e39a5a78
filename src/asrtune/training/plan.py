"""``asrtune plan``: what a run trains and the peak memory it needs, predicted without loading any weights.

The model is built on the meta device from its ``config.json`` alone (a bundled alias, an HF folder or hub
id in the local cache, a run folder, or a published shape shipped with asrtune: ``whisper-large-v3``,
``whisper-large-v3-turbo``, ``qwen2-audio-7b``, ``qwen3-asr-0.6b``, ``qwen3-asr-1.7b``), the strategy is
applied to it exactly as training applies it, and the trainable parameters are counted. Peak training
memory is the sum of

- weights: every parameter in its dtype (fp32 master weights; a quantized base's frozen ``nn.Linear``
  weights at 4.13 bits (NF4 with double quantization) or 8 bits, the rest in bf16), plus the bf16 copies
  bf16 autocast keeps of trainable weights during a step;
- gradients (fp32) and optimizer state of the trainable parameters (AdamW 8 bytes a parameter, 8-bit
  AdamW 2, Adafactor a row and a column per matrix);
- activations kept for the backward pass, per transformer block, from the lowest block that trains (or that
  gradients must cross) upwards: per token ``8h + 2f`` values for an encoder block (Korthikanti et al.
  2022's ``34 sbh`` bytes in half precision, with a fused attention kernel that keeps no ``a s^2`` scores),
  ``12h + 2f`` for a Whisper decoder block plus its cross-attention keys and values over the encoder's
  positions, ``6h + 3 kv + 4f`` for a gated LLM block; with gradient checkpointing each block keeps its
  input only and one block is recomputed at a time; plus backward's working set (the gradients of one
  block's activations, ``BACKWARD_BLOCKS`` of them) and the logits of the target positions (the families'
  losses project only those), their log-softmax and gradient;
- what the training process itself holds (the CPU process's interpreter, libraries, tokenizer, loader and
  the other copies of the weights it keeps at its peak; a GPU's context and allocator slack), constants
  calibrated on measured runs by ``benchmarks/memory.py --fit``.

Sequence lengths: the Whisper encoder sees 1500 positions (30 s); the decoder the labels' tokens
(``label_tokens``); an LLM the prompt, the audio tokens of ``audio_seconds`` and the labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.inspection import count_parameters
from asrtune.models.family import ModelFamily, model_core
from asrtune.models.load import PUBLISHED_SHAPES, source_config
from asrtune.strategies import apply_strategy, parse_spec
from asrtune.training.optimizers import STATE_BYTES

__all__ = ["PUBLISHED", "MemoryPlan", "meta_model", "plan_memory", "largest_batch", "advice", "bytes_text",
           "parse_size", "data_lengths", "GIB"]

GIB = 1024**3
PUBLISHED = PUBLISHED_SHAPES
# Calibrated on this project's measured CPU runs (benchmarks/memory.py, 36 rows: tiny.en and base x full,
# freeze:n=3, lora, decoder x batch 4, 8 x checkpointing off, on, plus tiny.en lora:r=8 and llm-asr-tiny
# projector+lora; kept in benchmarks/data/memory/, refitted by `--replan FILES --fit`): the CPU training
# process holds 0.33 GiB of its own (the interpreter and libraries, measured alone: `benchmarks/memory.py
# --baseline`), the equivalent of 2.6 copies of the weights at its peak (the model, the pristine copy that
# decodes the "before" transcripts, what loading leaves allocated), activations at 1.13 of the formula, and
# backward's working set of 1.45 blocks' activations (the gradients of the block being differentiated, on
# top of what is kept). Constants fitted without a model's rows predict that model's rows with a median
# error of 8.3% (leave one model out; 6.5% in sample). On a GPU (not measured here): one copy of the
# weights, and 1 GiB of CUDA context and allocator slack.
PROCESS_BYTES = {"cpu": int(0.33 * GIB), "cuda": int(1.0 * GIB)}
WEIGHT_COPIES = {"cpu": 2.61, "cuda": 1.0}
ACTIVATION_SCALE = 1.13
BACKWARD_BLOCKS = 1.45
LOGIT_COPIES = 3  # logits, their log-softmax (kept by cross-entropy) and its gradient
PROMPT_TOKENS = 24  # an LLM family's chat-template prompt around the audio
QUANTIZED_BYTES = {"4bit": 4.13 / 8, "8bit": 1.0}


def meta_model(source: str, strategy: str) -> tuple[ModelFamily, torch.nn.Module, int]:
    """The model on the meta device with the strategy applied, its family and its base parameter count."""
    parse_spec(strategy)
    family, config = source_config(source)
    model = family.empty_model(config)
    _, base_total = count_parameters(model)
    with torch.device("meta"), contextlib.suppress(Warning):
        model = apply_strategy(model, strategy)
    return family, model, base_total


def data_lengths(source: str, manifest: str, language: str | None = None) -> tuple[int, float]:
    """The longest training target in tokens (as the family builds it from each transcript: Whisper's prompt,
    text and end token; an LLM's transcript and end token) and the longest utterance in seconds.

    Raises:
        AsrtuneError: a published shape (no tokenizer here: give ``--label-tokens``), or a bad manifest.
    """
    from transformers import AutoProcessor

    from asrtune.data.features import audio_duration
    from asrtune.data.manifest import read_manifest
    from asrtune.models.load import model_folder

    if source in PUBLISHED:
        raise AsrtuneError(f"--data: {source} is a published shape without its tokenizer here; give "
                           "--label-tokens (and --audio-seconds) instead")
    family, config = source_config(source)
    processor = AutoProcessor.from_pretrained(model_folder(source))
    rows = read_manifest(manifest)
    if not rows:
        raise AsrtuneError(f"--data {manifest}: no utterances")
    seconds = [audio_duration(row) for row in rows]
    languages = [r.language or language for r in rows]
    sequences, prompts = family.sequences(processor, [r.text for r in rows], [r.id for r in rows], languages,
                                          [int(s * 100) for s in seconds], task="transcribe",
                                          multilingual=config.get("vocab_size", 0) >= 51865)
    return max(len(seq) - prompt for seq, prompt in zip(sequences, prompts, strict=True)), max(seconds)


@dataclass
class Block:
    """One transformer block's activation shape (per utterance)."""

    part: str  # "encoder" or "decoder"
    tokens: int
    hidden: int
    ffn: int
    gated: bool = False
    kv_width: int = 0  # gated blocks: key/value width (grouped-query attention)
    cross_positions: int = 0  # Whisper decoder blocks: the encoder positions cross-attention reads
    trains: bool = False
    dropout_values: int = 0  # what dropout inside the block keeps (LoRA's dropout: its output and mask)
    heads: int = 0
    masked_scores: bool = False  # attention with a padding mask on a CPU: scores and softmax are kept

    def values(self) -> int:
        """Activation values one utterance keeps for backward in this block."""
        if self.gated:
            scores = 2 * self.heads * self.tokens**2 if self.masked_scores else 0
            per_token = 6 * self.hidden + 3 * self.kv_width + 4 * self.ffn
            return self.tokens * per_token + self.dropout_values + scores
        per_token = (12 if self.cross_positions else 8) * self.hidden + 2 * self.ffn
        return self.tokens * per_token + 2 * self.cross_positions * self.hidden + self.dropout_values


def _dropout_values(layer: torch.nn.Module, tokens: int, cross_positions: int) -> int:
    """Values LoRA's dropout keeps in a block per utterance: a copy of each adapted layer's input and its mask
    (a byte, a quarter of an fp32 value), over the block's tokens (cross-attention keys and values: over the
    encoder's positions)."""
    total = 0.0
    for name, module in layer.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if dropouts is None or not hasattr(module, "in_features"):
            continue
        if any(isinstance(d, torch.nn.Dropout) and d.p > 0 for d in dropouts.values()):
            cross = cross_positions and "encoder_attn" in name and name.endswith(("k_proj", "v_proj"))
            total += (cross_positions if cross else tokens) * module.in_features * 1.25
    return int(total)


def _config_value(config, *names: str, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _blocks(family: ModelFamily, model: torch.nn.Module, label_tokens: int, audio_seconds: float,
            device: str) -> list[Block]:
    core = model_core(model)
    encoder, decoder = core.get_submodule(family.modules.encoder), core.get_submodule(family.modules.decoder)
    enc_config, dec_config = encoder.config, decoder.config
    positions = _config_value(enc_config, "max_source_positions", default=1500)
    blocks = [Block("encoder", positions, _config_value(enc_config, "d_model", "hidden_size"),
                    _config_value(enc_config, "encoder_ffn_dim", "intermediate_size"),
                    trains=any(p.requires_grad for p in layer.parameters()),
                    dropout_values=_dropout_values(layer, positions, 0)) for layer in encoder.layers]
    if family.modules.projector is None:  # Whisper: the decoder reads the encoder through cross-attention
        tokens, cross = label_tokens, positions
    else:  # an LLM: prompt, audio tokens (25 a second after pooling), transcript
        tokens, cross = PROMPT_TOKENS + family_audio_tokens(family, audio_seconds) + label_tokens, 0
    hidden = _config_value(dec_config, "d_model", "hidden_size")
    gated = family.modules.projector is not None
    heads = _config_value(dec_config, "num_attention_heads", "decoder_attention_heads", default=1)
    head_dim = _config_value(dec_config, "head_dim", default=hidden // heads)
    kv_width = _config_value(dec_config, "num_key_value_heads", default=heads) * head_dim
    ffn = _config_value(dec_config, "decoder_ffn_dim", "intermediate_size")
    # An LLM's batch carries a padding mask; PyTorch's CPU attention then keeps the scores and their softmax
    # (measured: benchmarks/memory.py); CUDA's memory-efficient kernel takes the mask without them.
    blocks += [Block("decoder", tokens, hidden, ffn, gated=gated, kv_width=kv_width, cross_positions=cross,
                     trains=any(p.requires_grad for p in layer.parameters()),
                     dropout_values=_dropout_values(layer, tokens, cross), heads=heads,
                     masked_scores=gated and device == "cpu") for layer in decoder.layers]
    return blocks


def family_audio_tokens(family: ModelFamily, seconds: float) -> int:
    return family.audio_tokens(int(seconds * 100)) if hasattr(family, "audio_tokens") else 0


def _stem_trains(family: ModelFamily, model: torch.nn.Module) -> bool:
    core = model_core(model)
    return any(p.requires_grad for name in family.modules.stem for p in core.get_submodule(name).parameters())


def _lowest_training_block(family: ModelFamily, model: torch.nn.Module, blocks: list[Block]) -> int | None:
    """Index of the first block (forward order) that trains or that gradients must cross; None: none."""
    core = model_core(model)
    if _stem_trains(family, model):
        return 0
    encoder_count = sum(block.part == "encoder" for block in blocks)
    projector = family.modules.projector
    for index, block in enumerate(blocks):
        if index == encoder_count and projector and any(p.requires_grad for p in
                                                        core.get_submodule(projector).parameters()):
            return index  # a training projector: every LLM block passes gradients down to it
        if block.trains:
            return index
    return None


@dataclass
class MemoryPlan:
    """What ``asrtune plan`` reports (bytes unless named otherwise)."""

    model: str
    strategy: str
    family: str
    total_params: int
    trainable_params: int
    batch_size: int
    label_tokens: int
    precision: str
    optim: str
    gradient_checkpointing: bool
    quantization: str | None
    device: str
    weights_bytes: int = 0
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    activations_bytes: int = 0
    activations_kept_bytes: int = 0
    activations_workspace_bytes: int = 0
    activations_per_utterance_bytes: int = 0
    logits_bytes: int = 0
    process_bytes: int = 0
    peak_memory_bytes: int = 0
    layers_with_activations: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _weights_bytes(model: torch.nn.Module, family: ModelFamily, quantization: str | None,
                   precision: str) -> int:
    total = 0
    seen: set[int] = set()
    skip = {family.modules.projector} if family.modules.projector else set()
    core = model_core(model)
    skipped_ids = {id(p) for name in skip for p in core.get_submodule(name).parameters()}
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if quantization and not parameter.requires_grad:
                linear = (isinstance(module, torch.nn.Linear) and parameter.dim() == 2
                          and id(parameter) not in skipped_ids
                          and module.out_features < 32000)  # the output head stays unquantized
                total += parameter.numel() * (QUANTIZED_BYTES[quantization] if linear else 2)
            else:
                total += parameter.numel() * 4
                if precision == "bf16" and parameter.requires_grad and parameter.dim() == 2:
                    total += parameter.numel() * 2  # autocast's cached bf16 copy during the step
    return int(total)


def _optimizer_bytes(model: torch.nn.Module, optim: str) -> int:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optim != "adafactor":
        return int(sum(p.numel() for p in trainable) * STATE_BYTES[optim])
    return int(sum((p.shape[-2] + p.shape[-1]) * 4 if p.dim() >= 2 else p.numel() * 4 for p in trainable))


def plan_memory(source: str, strategy: str, *, batch_size: int, label_tokens: int = 64,
                audio_seconds: float = 30.0,
                precision: str = "no", optim: str = "adamw", gradient_checkpointing: bool = False,
                quantization: str | None = None, device: str = "cpu") -> MemoryPlan:
    """Predict the peak memory of one training process (see the module docstring)."""
    if optim not in STATE_BYTES:
        raise AsrtuneError(f"--optim {optim!r}: allowed: {', '.join(STATE_BYTES)}")
    if quantization is not None:
        from asrtune.config import RunConfig

        RunConfig(strategy=strategy, quantization=quantization)  # the config's own check
    family, model, base_total = meta_model(source, strategy)
    trainable, _ = count_parameters(model)
    plan = MemoryPlan(model=source, strategy=strategy, family=family.name, total_params=base_total,
                      trainable_params=trainable, batch_size=batch_size, label_tokens=label_tokens,
                      precision="bf16" if precision == "bf16" else "fp32", optim=optim,
                      gradient_checkpointing=gradient_checkpointing, quantization=quantization, device=device)
    plan.weights_bytes = _weights_bytes(model, family, quantization, precision)
    plan.gradients_bytes = trainable * 4
    plan.optimizer_bytes = _optimizer_bytes(model, optim)
    blocks = _blocks(family, model, label_tokens, audio_seconds, device)
    lowest = _lowest_training_block(family, model, blocks)
    kept = blocks[lowest:] if lowest is not None else []
    plan.layers_with_activations = len(kept)
    element = 2 if precision == "bf16" else 4
    largest = max((b.values() for b in kept), default=0)
    if gradient_checkpointing:  # each block's input, and the one block being recomputed
        per_utterance = sum(b.tokens * b.hidden for b in kept) + largest
    else:
        per_utterance = sum(b.values() for b in kept)
    if _stem_trains(family, model):  # two convolutions over 2P and P frames, each with its GELU
        per_utterance += 6 * blocks[0].tokens * blocks[0].hidden
    plan.activations_kept_bytes = int(per_utterance * element * ACTIVATION_SCALE) * batch_size
    # backward's working set on top of what is kept: the gradients of one block's activations
    plan.activations_workspace_bytes = int(largest * element * ACTIVATION_SCALE * BACKWARD_BLOCKS) * batch_size
    plan.activations_bytes = plan.activations_kept_bytes + plan.activations_workspace_bytes
    plan.activations_per_utterance_bytes = plan.activations_bytes // batch_size
    decoder_config = model_core(model).get_submodule(family.modules.decoder).config
    vocab = _config_value(decoder_config, "vocab_size", default=0)
    # the head runs on the target positions only (the families' training losses)
    plan.logits_bytes = int(batch_size * label_tokens * vocab * 4 * LOGIT_COPIES) if kept else 0
    # the process's own memory, and on a CPU the weights' other copies (see WEIGHT_COPIES)
    plan.process_bytes = PROCESS_BYTES[device] + int((WEIGHT_COPIES[device] - 1) * plan.weights_bytes)
    plan.peak_memory_bytes = (plan.weights_bytes + plan.gradients_bytes + plan.optimizer_bytes
                              + plan.activations_bytes + plan.logits_bytes + plan.process_bytes)
    return plan


def largest_batch(plan: MemoryPlan, budget: int) -> int:
    """The largest batch whose predicted peak fits ``budget`` bytes (0: not even one utterance)."""
    fixed = plan.peak_memory_bytes - plan.activations_bytes - plan.logits_bytes
    per_utterance = (plan.activations_bytes + plan.logits_bytes) / plan.batch_size
    if budget <= fixed:
        return 0
    return int((budget - fixed) // per_utterance) if per_utterance else 1 << 20


def advice(plan: MemoryPlan) -> list[str]:
    """Settings that lower the peak, largest saving first, for a plan that does not fit."""
    options = []
    if not plan.gradient_checkpointing and plan.activations_bytes:
        options.append("--gradient-checkpointing (loop.gradient_checkpointing: true)")
    if plan.optim == "adamw" and plan.optimizer_bytes > GIB:
        options.append("--optim adamw_8bit (optim.name; 1/4 of AdamW's state) or adafactor")
    if plan.quantization is None and plan.trainable_params < 0.1 * plan.total_params:
        options.append("--quantization 4bit (QLoRA: the frozen base's linear layers in NF4)")
    if plan.trainable_params > 0.5 * plan.total_params:
        options.append("a strategy that trains less (lora:r=8,alpha=32, freeze:n=N, decoder)")
    options.append("a smaller batch with loop.grad_accum_steps for the same global batch")
    options.append("loop.parallel: fsdp over N GPUs (weights, gradients and optimizer state / N)")
    return options


def bytes_text(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB / 10 else f"{count / 1024**2:.0f} MiB"


def parse_size(text: str) -> int:
    """``24GiB``, ``40GB``, ``80G`` -> bytes (GB and G are read as GiB, as GPU makers' "80 GB" cards hold)."""
    units = {"gib": GIB, "gb": GIB, "g": GIB, "mib": 1024**2, "mb": 1024**2, "m": 1024**2}
    lowered = text.strip().lower()
    for unit, scale in units.items():
        if lowered.endswith(unit):
            try:
                return int(float(lowered[: -len(unit)]) * scale)
            except ValueError:
                break
    raise AsrtuneError(f"--gpu-memory {text!r}: write a size like 24GiB or 80GB")
