"""Read CTranslate2 (faster-whisper) Whisper models and convert them to Hugging Face Whisper.

The CTranslate2 ``model.bin`` layout (little-endian), as written by ctranslate2's own
``ModelSpec.save``::

    u32 binary version | str spec name | u32 spec revision | u32 variable count
    per variable: str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | raw bytes
    u32 alias count | per alias: str alias | str target

where ``str`` is a u16 length followed by that many bytes (NUL-terminated). Variable names map
one-to-one onto HF Whisper parameters; fused projections (q,k,v and cross-attention k,v) are split.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from asrtune.errors import AsrtuneError
from asrtune.paths import cache_dir, file_sha256, write_dir_atomically

__all__ = ["Ct2Model", "read_model_bin", "ct2_to_hf_state_dict", "whisper_config_from_ct2",
           "read_ct2_config", "convert_ct2_dir"]

_CONVERSION_FORMAT = 2  # bump when the conversion changes, so stale caches are rebuilt
_SPECIAL = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>")

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: "bfloat16",
}


@dataclass(frozen=True, kw_only=True)
class Ct2Model:
    """The variables of a CTranslate2 model file, aliases resolved."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def _need(self, count: int) -> None:
        if self.offset + count > len(self.data):
            raise ValueError(f"truncated: needs {count} bytes at offset {self.offset}, file has {len(self.data)}")

    def unpack(self, fmt: str):
        self._need(struct.calcsize("<" + fmt))
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.unpack("H")
        self._need(length)
        raw = self.data[self.offset : self.offset + length]
        self.offset += length
        return raw.rstrip(b"\0").decode("utf-8")

    def array(self, dtype_code: int, dims: list[int], nbytes: int) -> np.ndarray:
        self._need(nbytes)
        raw = self.data[self.offset : self.offset + nbytes]
        self.offset += nbytes
        dtype = _DTYPES.get(dtype_code)
        if dtype is None:
            raise ValueError(f"unsupported CTranslate2 dtype code {dtype_code}")
        if dtype == "bfloat16":
            as_u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            return as_u16.view(np.float32).reshape(dims)
        return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()


def read_model_bin(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin``.

    Args:
        path: the file.

    Returns:
        The spec name, its revision and every variable (aliases point at the same array).

    Raises:
        ValueError: the file is truncated, quantised to a type we cannot read, or not a model.
    """
    data = Path(path).read_bytes()
    reader = _Reader(data)
    try:
        version = reader.unpack("I")
        if version < 5:
            raise ValueError(f"binary version {version} is too old (need >= 5)")
        spec = reader.string()
        revision = reader.unpack("I")
        count = reader.unpack("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = reader.string()
            rank = reader.unpack("B")
            dims = [reader.unpack("I") for _ in range(rank)]
            dtype_code = reader.unpack("B")
            nbytes = reader.unpack("I")
            variables[name] = reader.array(dtype_code, dims, nbytes)
        for _ in range(reader.unpack("I")):
            alias, target = reader.string(), reader.string()
            if target not in variables:
                raise ValueError(f"alias {alias!r} points at unknown variable {target!r}")
            # A copy: HF parameters built from aliases must not share storage.
            variables[alias] = variables[target].copy()
        if reader.offset != len(data):
            raise ValueError(f"{len(data) - reader.offset} unexpected trailing bytes")
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CTranslate2 model file ({error})") from error
    return Ct2Model(spec=spec, revision=revision, variables=variables)


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return len({match.group(1) for name in variables if (match := pattern.match(name))})


def whisper_config_from_ct2(model: Ct2Model, token_ids: dict[str, int]) -> dict:
    """Keyword arguments for ``transformers.WhisperConfig`` describing ``model``.

    Args:
        model: a parsed WhisperSpec model.
        token_ids: special token ids (``<|endoftext|>``, ``<|startoftranscript|>``) from its tokenizer.
    """
    if model.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: CTranslate2 spec is {model.spec!r}")
    v = model.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    eot = token_ids["<|endoftext|>"]
    return {
        "vocab_size": int(vocab_size),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _layer_count(v, "encoder"),
        "decoder_layers": _layer_count(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": token_ids["<|startoftranscript|>"],
        "tie_word_embeddings": True,
    }


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(array, parts, axis=0)


def _attention(out: dict, v: dict, src: str, dst: str, *, fused_qkv: bool) -> None:
    """Map one CTranslate2 attention block onto HF q/k/v/out projections."""
    if fused_qkv:
        q_w, k_w, v_w = _split(v[f"{src}/linear_0/weight"], 3)
        q_b, _k_b, v_b = _split(v[f"{src}/linear_0/bias"], 3)  # Whisper's k_proj has no bias
        out_proj = f"{src}/linear_1"
    else:  # cross-attention: q from the decoder, k,v fused over the encoder output
        q_w, q_b = v[f"{src}/linear_0/weight"], v[f"{src}/linear_0/bias"]
        k_w, v_w = _split(v[f"{src}/linear_1/weight"], 2)
        _k_b, v_b = _split(v[f"{src}/linear_1/bias"], 2)
        out_proj = f"{src}/linear_2"
    out[f"{dst}.q_proj.weight"], out[f"{dst}.q_proj.bias"] = q_w, q_b
    out[f"{dst}.k_proj.weight"] = k_w
    out[f"{dst}.v_proj.weight"], out[f"{dst}.v_proj.bias"] = v_w, v_b
    out[f"{dst}.out_proj.weight"] = v[f"{out_proj}/weight"]
    out[f"{dst}.out_proj.bias"] = v[f"{out_proj}/bias"]


def _layer_norm(out: dict, v: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _linear(out: dict, v: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = v[f"{src}/weight"]
    out[f"{dst}.bias"] = v[f"{src}/bias"]


def _dequantized(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float weights from int8/int16-quantised ones: CTranslate2 stores ``round(w * scale)`` with one
    scale per output row in ``<name>_scale`` (e.g. ``.../linear_0/weight_scale``)."""
    result = dict(variables)
    for name, scale in variables.items():
        if not name.endswith("weight_scale"):
            continue
        weight_name = name.removesuffix("_scale")
        weight = variables[weight_name].astype(np.float32)
        factors = np.asarray(scale, dtype=np.float32)
        result[weight_name] = weight / (factors.reshape(-1, *([1] * (weight.ndim - 1))) if factors.ndim else factors)
    return result


def ct2_to_hf_state_dict(model: Ct2Model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """HF ``WhisperForConditionalGeneration`` state dict from a CTranslate2 Whisper model."""
    v = _dequantized(model.variables)
    out: dict[str, np.ndarray] = {}
    enc, dec = "model.encoder", "model.decoder"
    _linear(out, v, "encoder/conv1", f"{enc}.conv1")
    _linear(out, v, "encoder/conv2", f"{enc}.conv2")
    out[f"{enc}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(_layer_count(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        _attention(out, v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        _layer_norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _layer_norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    _layer_norm(out, v, "encoder/layer_norm", f"{enc}.layer_norm")
    out[f"{dec}.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    out[f"{dec}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(_layer_count(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _attention(out, v, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True)
        _layer_norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(out, v, f"{src}/attention", f"{dst}.encoder_attn", fused_qkv=False)
        _layer_norm(out, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _layer_norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    _layer_norm(out, v, "decoder/layer_norm", f"{dec}.layer_norm")
    # torch.tensor copies, so no two parameters share memory even where the file stored one array.
    return {name: torch.tensor(a, dtype=dtype) for name, a in out.items()}


def read_ct2_config(directory: Path) -> dict:
    """The ``config.json`` beside a CTranslate2 Whisper model (suppress ids, alignment heads, lang ids)."""
    path = directory / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _tokenizer_from_ct2(directory: Path) -> WhisperTokenizerFast:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise AsrtuneError(f"{directory}: CTranslate2 model has no tokenizer.json")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    # Some bundles omit the 1501 timestamp tokens <|0.00|> ... <|30.00|> that follow <|notimestamps|>.
    no_ts = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    if len(tokenizer) == no_ts + 1:
        tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=False)
    return tokenizer


def _generation_config(config: WhisperConfig, tokenizer: WhisperTokenizerFast, ct2_config: dict) -> GenerationConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL}
    multilingual = config.vocab_size >= 51865
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_length=config.max_target_positions,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, ids["<|endoftext|>"]]),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        is_multilingual=multilingual,
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        return_timestamps=False,
    )
    if multilingual:
        # Only multilingual models carry these: transformers runs language detection (a second
        # encoder pass per batch) whenever lang_to_id exists and no language is given.
        lang_ids = ct2_config.get("lang_ids") or []
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return generation


def convert_ct2_dir(directory: Path) -> Path:
    """Convert a CTranslate2 Whisper folder to an HF folder in the cache; returns the HF folder."""
    model_bin = directory / "model.bin"
    digest = file_sha256(model_bin)
    target = cache_dir() / "hf-from-ct2" / f"{digest[:24]}-v{_CONVERSION_FORMAT}"
    if (target / "model.safetensors").is_file():
        return target
    try:
        ct2 = read_model_bin(model_bin)
    except ValueError as error:
        raise AsrtuneError(str(error)) from error
    ct2_config = read_ct2_config(directory)
    tokenizer = _tokenizer_from_ct2(directory)
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}
    config = WhisperConfig(**whisper_config_from_ct2(ct2, token_ids))
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(ct2_to_hf_state_dict(ct2), strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise AsrtuneError(f"{directory}: conversion left parameters unset: {missing[:5]}")
    model.generation_config = _generation_config(config, tokenizer, ct2_config)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        tokenizer=tokenizer,
    )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "asrtune_source.json").write_text(json.dumps({"ct2_dir": str(directory), "sha256": digest}))

    write_dir_atomically(target, write)
    return target
