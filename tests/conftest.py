"""Shared fixtures: an isolated asrtune cache, a tiny random Whisper saved as an HF folder, audio helpers.

The tiny model is English-only (vocab 51864, Whisper's English tokenizer shipped in ``assets/``)
and takes 1-second inputs: the feature extractor has ``chunk_length=1`` (80 x 100 log-mel frames) and
the encoder ``max_source_positions=50`` (Whisper's encoder needs frames == 2 * max_source_positions).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports transformers or asrtune: never touch the hub, never the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
_SESSION_CACHE = tempfile.mkdtemp(prefix="asrtune-test-cache-")
os.environ["ASRTUNE_CACHE"] = _SESSION_CACHE

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tiny models' ops are microseconds long, and with two threads on a busy
# 2-core machine OpenMP's barriers cost milliseconds per op (measured: 1000x slower small matmuls).
torch.set_num_threads(1)


@pytest.fixture
def all_cores():
    """For the few tests that train a real model: its matmuls are large enough for every core to pay."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)


SAMPLE_RATE = 16_000
TINY_TEXTS = [
    "hello world",
    "good morning",
    "the cat sat",
    "open the door",
    "blue sky today",
    "one two three",
]


def pytest_collection_modifyitems(config, items):
    """``-m unit`` / ``-m integration`` select by folder: every test is one or the other."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, folder))


def pytest_configure(config):
    # peft calls a transformers property deprecated in v5; not asrtune's to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
    )


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache():
    """Every test runs with ASRTUNE_CACHE pointing at a throwaway folder, removed at the end."""
    assert os.environ["ASRTUNE_CACHE"] == _SESSION_CACHE
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield Path(_SESSION_CACHE)
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch):
    """A test that changes the environment cannot leak a different cache to the next one."""
    monkeypatch.setenv("ASRTUNE_CACHE", _SESSION_CACHE)


TOKENIZER_ASSET = Path(__file__).parent / "assets" / "whisper-tiny.en-tokenizer.json.gz"


def tokenizer_file() -> Path:
    """Whisper's English tokenizer (GPT-2 BPE + Whisper's special tokens; MIT, from openai/whisper via tiny.en),
    shipped with the tests so the unit suite needs no bundled weights. Unpacked once per session."""
    path = Path(_SESSION_CACHE) / "tokenizer.json"
    if not path.is_file():
        path.write_bytes(gzip.decompress(TOKENIZER_ASSET.read_bytes()))
    return path


def make_tokenizer():
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(tokenizer_file=str(tokenizer_file()))


def make_processor():
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=make_tokenizer())


def tiny_whisper(seed: int = 0, perturb: float = 0.0, **overrides):
    """A tiny random English-only Whisper with a proper generation config.

    ``perturb`` adds Gaussian noise to every parameter but the (sinusoidal) encoder positions, so no two
    tensors are equal (fresh init sets every bias to 0 and every layer-norm gain to 1).
    """
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    tokenizer = make_tokenizer()
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in (
            "<|endoftext|>",
            "<|startoftranscript|>",
            "<|notimestamps|>",
            "<|transcribe|>",
            "<|translate|>",
        )
    }
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    settings = dict(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=50,
        max_target_positions=448,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**settings))
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name != "model.encoder.embed_positions.weight":
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
        max_length=20,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
    )
    model.eval()
    return model


def scripted_whisper(scripts: dict[int, dict[int, dict[int, float]]]):
    """A tiny Whisper whose next-token scores follow a script, for decoding tests.

    ``scripts[kind][last_token]`` maps the tokens that may follow ``last_token`` to their scores (every other
    token scores -30; a last token with no entry is followed by end-of-text). A row's kind is the value its
    log-mel features are filled with (>= 0): the encoder outputs their largest value everywhere, so the kind
    survives batching, beams, samples and faster-whisper's zeros after the clip.
    """
    model = tiny_whisper(seed=0)
    eot = model.generation_config.eos_token_id

    def encode(module, args, kwargs, output):
        features = kwargs.get("input_features", args[0] if args else None)
        output.last_hidden_state = features.amax(dim=(1, 2))[:, None, None].expand_as(output.last_hidden_state).clone()
        return output

    def script(module, args, kwargs, output):
        ids, encoded = kwargs["decoder_input_ids"], kwargs["encoder_outputs"][0]
        logits = torch.full_like(output.logits, -30.0)
        for row in range(ids.shape[0]):
            table = scripts[int(round(float(encoded[row, 0, 0])))]
            for position in range(ids.shape[1]):
                for token, value in table.get(int(ids[row, position]), {eot: 10.0}).items():
                    logits[row, position, token] = value
        output.logits = logits
        return output

    model.model.encoder.register_forward_hook(encode, with_kwargs=True)
    model.register_forward_hook(script, with_kwargs=True)
    return model


def save_tiny(directory: Path, **kwargs) -> Path:
    model = tiny_whisper(**kwargs)
    model.save_pretrained(directory)
    make_processor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An HF folder (model + processor) that ``load_model`` reads as an ``hf_dir`` source."""
    return save_tiny(tmp_path_factory.mktemp("tiny-whisper"), seed=0, perturb=0.02)


@pytest.fixture
def tiny_loaded(tiny_model_dir):
    from asrtune.runs.load import load_model

    return load_model(str(tiny_model_dir))


def write_tone(
    path: Path,
    seconds: float = 0.6,
    rate: int = SAMPLE_RATE,
    freq: float = 440.0,
    channels: int = 1,
    seed: int = 0,
    subtype: str | None = None,
) -> np.ndarray:
    """A sine tone plus a little noise; returns the float samples written (frames x channels)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)
    samples = np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return samples


def write_tiny_manifest(folder: Path, texts=TINY_TEXTS, name: str = "manifest.jsonl", language=None) -> Path:
    from asrtune.data.manifest import Utterance, write_manifest

    rows = []
    for i, text in enumerate(texts):
        audio = folder / "audio" / f"{name.split('.')[0]}-{i}.wav"
        write_tone(audio, seconds=0.4 + 0.1 * i, freq=200.0 + 90 * i, seed=i)
        rows.append(Utterance(id=f"u{i}", audio=str(audio), text=text, language=language))
    write_manifest(rows, folder / name)
    return folder / name


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """(train, eval) manifests of short generated tones with short English texts."""
    folder = tmp_path_factory.mktemp("tiny-data")
    train = write_tiny_manifest(folder, TINY_TEXTS, "train.jsonl")
    evaluation = write_tiny_manifest(folder, TINY_TEXTS[:3], "eval.jsonl")
    return train, evaluation


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def espeak_or_skip() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")


# --- LLM-based ASR families: tiny random Qwen2-Audio ---------------------------------------------------

LLM_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def make_llm_tokenizer():
    """Whisper's English BPE with the chat and audio special tokens Qwen2-Audio's processor needs, and no
    post-processor (Whisper's prepends <|startoftranscript|>; Qwen's tokenizers add nothing)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(tokenizer_file()))
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": LLM_SPECIAL_TOKENS})
    return tokenizer


def make_qwen2_audio_processor():
    """Qwen2AudioProcessor over 1-second inputs (80 x 100 log-mels) with its default chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=make_llm_tokenizer())


def tiny_qwen2_audio(seed: int = 0, perturb: float = 0.02):
    """A tiny random Qwen2-Audio (d_model 32, 2 audio layers, 2 LLM layers, 1 s of audio = 25 audio tokens)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tokenizer = make_llm_tokenizer()
    config = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=32, encoder_layers=2, encoder_attention_heads=2,
                          encoder_ffn_dim=64, num_mel_bins=80, max_source_positions=50),
        text_config=dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, vocab_size=len(tokenizer),
                         max_position_embeddings=512),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "embed_positions" not in name:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    model.eval()
    return model


def save_tiny_qwen2_audio(directory: Path, **kwargs) -> Path:
    tiny_qwen2_audio(**kwargs).save_pretrained(directory)
    make_qwen2_audio_processor().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_qwen2_audio_dir(tmp_path_factory) -> Path:
    """An HF folder (Qwen2-Audio model + processor) that ``load_model`` reads as an ``hf_dir`` source."""
    return save_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"))


# --- tiny random Qwen3-ASR ------------------------------------------------------------------------------

QWEN3_ASR_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_qwen3_asr_processor():
    """Qwen3ASRProcessor over 1-second inputs with Qwen3-ASR's chat layout and audio / <asr_text> tokens."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast, Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    backend = Tokenizer.from_file(str(tokenizer_file()))
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<asr_text>"]},
                                 replace_extra_special_tokens=False)
    extractor = Qwen3ASRFeatureExtractor(feature_size=80, chunk_length=1)
    return Qwen3ASRProcessor(feature_extractor=extractor, tokenizer=tokenizer, chat_template=QWEN3_ASR_TEMPLATE)


def save_tiny_qwen3_asr(directory: Path, seed: int = 0, perturb: float = 0.02) -> Path:
    """A tiny random Qwen3-ASR (d_model 32, 2 audio layers, 2 Qwen3 layers, tied head) and its processor."""
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    processor = make_qwen3_asr_processor()
    tokenizer = processor.tokenizer
    config = Qwen3ASRConfig(
        audio_config=dict(model_type="qwen3_asr_encoder", d_model=32, encoder_layers=2, encoder_attention_heads=2,
                          encoder_ffn_dim=64, num_mel_bins=80, output_dim=32, downsample_hidden_size=8,
                          n_window=50, n_window_infer=100),
        text_config=dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=len(tokenizer),
                         max_position_embeddings=512, tie_word_embeddings=True),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|audio_pad|>"),
    )
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_qwen3_asr_dir(tmp_path_factory) -> Path:
    return save_tiny_qwen3_asr(tmp_path_factory.mktemp("tiny-qwen3-asr"))
