"""CTranslate2 model files: parsing, conversion to HF Whisper, and the HF -> CT2 -> HF round trip."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_tiny

from asrtune.errors import AsrtuneError
from asrtune.models.ct2 import Ct2Model, ct2_to_hf_state_dict, read_model_bin, whisper_config_from_ct2
from asrtune.models.ct2 import convert_ct2_dir
from asrtune.models.load import resolve_source
from asrtune.runs.load import load_model

DTYPE_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}


# --- a minimal writer for the format in asrtune/models/ct2.py's docstring -------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(
    path: Path,
    variables: dict,
    aliases: dict | None = None,
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
) -> None:
    """``variables``: name -> ndarray, or name -> (dtype_code, dims, raw bytes) for codes numpy lacks."""
    out = bytearray(struct.pack("<I", version) + _string(spec) + struct.pack("<II", revision, len(variables)))
    for name, value in variables.items():
        if isinstance(value, tuple):
            code, dims, raw = value
        else:
            array = np.require(value, requirements="C")  # keeps 0-d scalars 0-d
            code, dims, raw = DTYPE_CODES[array.dtype], array.shape, array.tobytes()
        out += _string(name) + struct.pack("<B", len(dims)) + b"".join(struct.pack("<I", d) for d in dims)
        out += struct.pack("<BI", code, len(raw)) + raw
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    path.write_bytes(bytes(out))


def hf_to_ct2_variables(model) -> dict[str, np.ndarray]:
    """The inverse of ``ct2_to_hf_state_dict``: an HF Whisper as CTranslate2 WhisperSpec variables."""
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    config = model.config
    out: dict[str, np.ndarray] = {}

    def linear(src, dst):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def norm(src, dst):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def self_attention(src, dst):
        q, k, v = (sd[f"{src}.{p}_proj.weight"] for p in "qkv")
        out[f"{dst}/linear_0/weight"] = np.concatenate([q, k, v], axis=0)
        zeros = np.zeros_like(sd[f"{src}.q_proj.bias"])
        out[f"{dst}/linear_0/bias"] = np.concatenate(
            [sd[f"{src}.q_proj.bias"], zeros, sd[f"{src}.v_proj.bias"]]
        )
        linear(f"{src}.out_proj", f"{dst}/linear_1")

    def cross_attention(src, dst):
        linear(f"{src}.q_proj", f"{dst}/linear_0")
        out[f"{dst}/linear_1/weight"] = np.concatenate(
            [sd[f"{src}.k_proj.weight"], sd[f"{src}.v_proj.weight"]]
        )
        zeros = np.zeros_like(sd[f"{src}.v_proj.bias"])
        out[f"{dst}/linear_1/bias"] = np.concatenate([zeros, sd[f"{src}.v_proj.bias"]])
        linear(f"{src}.out_proj", f"{dst}/linear_2")

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = sd[f"{enc}.embed_positions.weight"]
    for i in range(config.encoder_layers):
        src, dst = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        self_attention(f"{src}.self_attn", f"{dst}/self_attention")
        norm(f"{src}.self_attn_layer_norm", f"{dst}/self_attention/layer_norm")
        linear(f"{src}.fc1", f"{dst}/ffn/linear_0")
        linear(f"{src}.fc2", f"{dst}/ffn/linear_1")
        norm(f"{src}.final_layer_norm", f"{dst}/ffn/layer_norm")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    out["encoder/num_heads"] = np.array(config.encoder_attention_heads, dtype=np.int16)
    out["decoder/embeddings/weight"] = sd[f"{dec}.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = sd[f"{dec}.embed_positions.weight"]
    for i in range(config.decoder_layers):
        src, dst = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        self_attention(f"{src}.self_attn", f"{dst}/self_attention")
        norm(f"{src}.self_attn_layer_norm", f"{dst}/self_attention/layer_norm")
        cross_attention(f"{src}.encoder_attn", f"{dst}/attention")
        norm(f"{src}.encoder_attn_layer_norm", f"{dst}/attention/layer_norm")
        linear(f"{src}.fc1", f"{dst}/ffn/linear_0")
        linear(f"{src}.fc2", f"{dst}/ffn/linear_1")
        norm(f"{src}.final_layer_norm", f"{dst}/ffn/layer_norm")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    out["decoder/num_heads"] = np.array(config.decoder_attention_heads, dtype=np.int16)
    return out


def write_ct2_dir(hf_dir: Path, out_dir: Path) -> Path:
    """HF folder -> CTranslate2 folder, with this file's writer (model.bin, config.json, tokenizer.json)."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(hf_dir)
    out_dir.mkdir(parents=True)
    write_model_bin(
        out_dir / "model.bin",
        hf_to_ct2_variables(model),
        aliases={"decoder/projection/weight": "decoder/embeddings/weight"},
    )
    (out_dir / "config.json").write_text(
        json.dumps(
            {
                "alignment_heads": [[1, 0]],
                "lang_ids": [],
                "suppress_ids": [],
                "suppress_ids_begin": [220, 50256],
            }
        )
    )
    shutil.copy(hf_dir / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def ctranslate2_convert(hf_dir: Path, out_dir: Path) -> Path:
    converters = pytest.importorskip("ctranslate2.converters")
    converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
        str(out_dir), quantization="float32"
    )
    return out_dir


CONVERTERS = {"ctranslate2": ctranslate2_convert, "test-writer": write_ct2_dir}


@pytest.fixture(scope="module")
def hf_tiny_perturbed(tmp_path_factory) -> Path:
    # Perturbed: a trained model has no two equal tensors (see the xfail below for a fresh init).
    return save_tiny(tmp_path_factory.mktemp("hf-perturbed"), seed=5, perturb=0.05)


@pytest.fixture(scope="module", params=sorted(CONVERTERS))
def ct2_dir(request, hf_tiny_perturbed, tmp_path_factory) -> Path:
    return CONVERTERS[request.param](hf_tiny_perturbed, tmp_path_factory.mktemp("ct2") / "model")


def _logits(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 80, 100, generator=generator)
    decoder_ids = torch.tensor([[50257, 50362, 464, 3797, 3332], [50257, 50362, 15496, 995, 50256]])
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=decoder_ids).logits


# --- read_model_bin -------------------------------------------------------------------------------------


def test_read_model_bin_parses_dtypes_scalars_and_aliases(tmp_path):
    bf16_values = np.array([1.0, -2.5, 0.15625], dtype=np.float32)  # exactly representable in bfloat16
    bf16_raw = (bf16_values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    variables = {
        "a/weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a/half": np.array([0.5, -1.25], dtype=np.float16),
        "a/int8": np.array([-3, 7], dtype=np.int8),
        "encoder/num_heads": np.array(6, dtype=np.int16),
        "a/bf16": (5, (3,), bf16_raw),
    }
    write_model_bin(tmp_path / "model.bin", variables, {"b/weight": "a/weight"}, spec="TestSpec", revision=7)
    model = read_model_bin(tmp_path / "model.bin")
    assert (model.spec, model.revision) == ("TestSpec", 7)
    v = model.variables
    assert set(v) == {"a/weight", "a/half", "a/int8", "encoder/num_heads", "a/bf16", "b/weight"}
    np.testing.assert_array_equal(v["a/weight"], [[0, 1, 2], [3, 4, 5]])
    assert v["a/weight"].dtype == np.float32
    assert v["a/half"].dtype == np.float16 and v["a/half"].tolist() == [0.5, -1.25]
    assert v["a/int8"].tolist() == [-3, 7]
    assert v["encoder/num_heads"].shape == () and int(v["encoder/num_heads"]) == 6
    assert v["a/bf16"].dtype == np.float32 and v["a/bf16"].tolist() == [1.0, -2.5, 0.15625]
    np.testing.assert_array_equal(v["b/weight"], v["a/weight"])


def test_read_model_bin_rejects_old_versions_and_unknown_dtypes(tmp_path):
    write_model_bin(tmp_path / "old.bin", {"x": np.zeros(1, np.float32)}, version=4)
    with pytest.raises(ValueError, match="too old"):
        read_model_bin(tmp_path / "old.bin")
    write_model_bin(tmp_path / "odd.bin", {"x": (9, (1,), b"\0\0\0\0")})
    with pytest.raises(ValueError, match="dtype code 9"):
        read_model_bin(tmp_path / "odd.bin")


def _small_model_file(path: Path) -> tuple[bytes, int]:
    """A small model.bin with one alias; returns its bytes and where the alias table starts."""
    variables = {
        "enc/w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "enc/n": np.array(2, dtype=np.int16),
        "dec/w": np.ones((2, 2), dtype=np.float16),
    }
    write_model_bin(path, variables, {"dec/alias": "enc/w"})
    data = path.read_bytes()
    alias_table = 4 + len(_string("dec/alias")) + len(_string("enc/w"))
    return data, len(data) - alias_table


def test_read_model_bin_on_truncated_files_raises_value_error(tmp_path):
    data, aliases_start = _small_model_file(tmp_path / "model.bin")
    assert read_model_bin(tmp_path / "model.bin").variables["dec/alias"].shape == (
        3,
        4,
    )  # the whole file is fine
    for cut in range(aliases_start + 1):  # every cut in the header and the variables
        (tmp_path / "cut.bin").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            read_model_bin(tmp_path / "cut.bin")


def test_read_model_bin_truncated_in_the_alias_table_raises_value_error(tmp_path):
    data, aliases_start = _small_model_file(tmp_path / "model.bin")
    for cut in range(aliases_start + 1, len(data)):
        (tmp_path / "cut.bin").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            read_model_bin(tmp_path / "cut.bin")


def test_whisper_config_rejects_other_specs():
    with pytest.raises(ValueError, match="not a Whisper model"):
        whisper_config_from_ct2(Ct2Model(spec="TransformerSpec", revision=1, variables={}), {})


# --- the round trip -------------------------------------------------------------------------------------


def test_round_trip_hf_ct2_hf_is_exact(hf_tiny_perturbed, ct2_dir):
    assert resolve_source(str(ct2_dir)) == ("ct2", ct2_dir)
    original = load_model(str(hf_tiny_perturbed)).model
    converted = load_model(str(ct2_dir))
    assert converted.base_dir.parent.parent == Path(os.environ["ASRTUNE_CACHE"])

    # Config: every architecture number survives.
    for key in (
        "vocab_size",
        "num_mel_bins",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
    ):
        assert getattr(converted.model.config, key) == getattr(original.config, key), key

    # Weights: bit for bit, every tensor, and the output projection stays tied to the embeddings.
    expected, actual = original.state_dict(), converted.model.state_dict()
    assert set(actual) == set(expected)
    unequal = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert unequal == []
    assert (
        converted.model.proj_out.weight.data_ptr()
        == converted.model.model.decoder.embed_tokens.weight.data_ptr()
    )

    # Logits: identical.
    assert torch.equal(_logits(converted.model), _logits(original))

    # Generation settings for an English-only model.
    generation = converted.generation_config
    assert converted.multilingual is False
    assert generation.decoder_start_token_id == 50257
    assert generation.eos_token_id == generation.pad_token_id == 50256
    assert generation.no_timestamps_token_id == 50362
    # The tiny.en tokenizer lacks timestamp tokens; conversion appends all 1501 of them
    # right after <|notimestamps|>.
    tokenizer = converted.processor.tokenizer
    assert len(tokenizer) == 51864
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == 50363
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == 50363 + 1500


def test_conversion_is_cached_by_model_bin_digest(ct2_dir, monkeypatch):
    first = convert_ct2_dir(ct2_dir)
    assert (first / "model.safetensors").is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr("asrtune.models.ct2.read_model_bin", must_not_run)
    assert convert_ct2_dir(ct2_dir) == first


def test_ct2_folder_without_tokenizer_is_a_user_error(hf_tiny_perturbed, tmp_path, monkeypatch):
    monkeypatch.setenv("ASRTUNE_CACHE", str(tmp_path / "cache"))  # no earlier conversion of this model.bin
    folder = write_ct2_dir(hf_tiny_perturbed, tmp_path / "ct2")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(AsrtuneError, match="no tokenizer.json"):
        load_model(str(folder))


def test_truncated_ct2_folder_is_a_user_error(hf_tiny_perturbed, tmp_path, monkeypatch):
    monkeypatch.setenv("ASRTUNE_CACHE", str(tmp_path / "cache"))
    folder = write_ct2_dir(hf_tiny_perturbed, tmp_path / "ct2")
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(AsrtuneError, match="truncated|not a CTranslate2|cannot reshape|buffer size"):
        load_model(str(folder))


# --- aliases: CTranslate2 stores equal variables once ---------------------------------------------------


def test_aliased_variables_become_independent_tensors(hf_tiny_perturbed, tmp_path):
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(hf_tiny_perturbed)
    variables = hf_to_ct2_variables(model)
    # CTranslate2 writes a variable equal to an earlier one as an alias (here: two equal layer-norm gains).
    variables["decoder/layer_norm/gamma"] = variables["encoder/layer_norm/gamma"].copy()
    aliased = {"decoder/layer_norm/gamma": "encoder/layer_norm/gamma"}
    del variables["decoder/layer_norm/gamma"]
    write_model_bin(tmp_path / "model.bin", variables, aliased)
    state = ct2_to_hf_state_dict(read_model_bin(tmp_path / "model.bin"))
    encoder_gain, decoder_gain = (
        state["model.encoder.layer_norm.weight"],
        state["model.decoder.layer_norm.weight"],
    )
    assert torch.equal(encoder_gain, decoder_gain)
    encoder_gain.add_(1.0)  # training one must not move the other
    assert not torch.equal(encoder_gain, decoder_gain)


def test_round_trip_of_a_fresh_init_model_with_aliases(tmp_path):
    hf_dir = save_tiny(tmp_path / "hf", seed=9, perturb=0.0)
    ct2 = ctranslate2_convert(hf_dir, tmp_path / "ct2")
    assert read_model_bin(ct2 / "model.bin")  # parses fine
    converted = load_model(str(ct2))
    assert torch.equal(_logits(converted.model), _logits(load_model(str(hf_dir)).model))
