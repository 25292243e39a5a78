"""CTranslate2 (faster-whisper) export through ctranslate2's own converter.

The merged HF folder (see :mod:`asrtune.export.merge`) goes through
``ctranslate2.converters.TransformersConverter``; ``tokenizer.json`` and ``preprocessor_config.json``
are copied beside ``model.bin`` so ``faster_whisper.WhisperModel(folder)`` loads it as is (without
them faster-whisper fetches a tokenizer from the hub and assumes 80 mel bins). After conversion the
ctranslate2 runtime decodes a fixed input greedily and its tokens are compared with the HF model's.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asrtune.errors import AsrtuneError
from asrtune.export.ct2_runtime import ct2_greedy_ids, load_ct2_whisper
from asrtune.export.merge import MergedModel, load_merged, prepare_output_dir, save_hf, write_marker
from asrtune.export.quantization import DEFAULT_QUANTIZATION, QUANTIZATIONS
from asrtune.models.whisper import prefix_ids

__all__ = ["DEFAULT_QUANTIZATION", "QUANTIZATIONS", "Ct2Check", "check_ct2_export", "export_ct2"]

COPY_FILES = ("tokenizer.json", "preprocessor_config.json")


@dataclass(frozen=True, kw_only=True)
class Ct2Check:
    """HF vs ctranslate2 greedy tokens on one fixed input.

    Attributes:
        hf_tokens: the HF model's greedy continuation (prompt and end-of-text excluded).
        ct2_tokens: the ctranslate2 runtime's.
        agree: length of the common prefix.
    """

    hf_tokens: list[int]
    ct2_tokens: list[int]

    @property
    def agree(self) -> int:
        count = 0
        for a, b in zip(self.hf_tokens, self.ct2_tokens):
            if a != b:
                break
            count += 1
        return count

    @property
    def identical(self) -> bool:
        return self.hf_tokens == self.ct2_tokens

    def describe(self) -> str:
        total = max(len(self.hf_tokens), len(self.ct2_tokens))
        return "identical" if self.identical else f"first {self.agree} of {total} tokens agree"


def _probe_features(merged: MergedModel) -> np.ndarray:
    """A fixed input the size of the model's window: (1, n_mels, 2 * max_source_positions)."""
    config = merged.model.config
    extractor = merged.processor.feature_extractor
    rate = extractor.sampling_rate
    seconds = 2 * config.max_source_positions * extractor.hop_length / rate
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    # A warbling tone in noise: deterministic, not silence (silence decodes to end-of-text at once).
    pitch = 220 + 80 * np.sin(2 * np.pi * 0.7 * t)
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.size)
    features = extractor(wave.astype(np.float32), sampling_rate=rate, return_tensors="np").input_features
    return np.ascontiguousarray(features[:, :, : 2 * config.max_source_positions], dtype=np.float32)


def _decoder_prompt(merged: MergedModel) -> list[int]:
    generation = merged.model.generation_config
    multilingual = bool(getattr(generation, "is_multilingual", False))
    return [generation.decoder_start_token_id] + prefix_ids(merged.processor, multilingual=multilingual,
                                                            language="en", task="transcribe")


@torch.no_grad()
def _hf_greedy_ids(merged: MergedModel, features: np.ndarray, prompt: list[int],
                   max_new_tokens: int) -> list[int]:
    model = merged.model
    kwargs = {"language": "en", "task": "transcribe"} if getattr(model.generation_config, "is_multilingual",
                                                                  False) else {}
    output = model.generate(input_features=torch.from_numpy(features), max_new_tokens=max_new_tokens,
                            do_sample=False, num_beams=1, **kwargs)
    ids = output[0].tolist()
    if ids[: len(prompt)] == prompt:
        ids = ids[len(prompt):]
    eos = model.generation_config.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def check_ct2_export(merged: MergedModel, ct2_dir: str | Path, *, max_new_tokens: int = 24) -> Ct2Check:
    """Decode one fixed input greedily with the HF model and with the ctranslate2 runtime.

    Float32 exports give identical tokens; quantised ones may part ways after a few tokens.
    """
    features = _probe_features(merged)
    prompt = _decoder_prompt(merged)
    hf_ids = _hf_greedy_ids(merged, features, prompt, max_new_tokens)
    runtime = load_ct2_whisper(ct2_dir, compute_type="default")
    ct2_ids = ct2_greedy_ids(runtime, features, prompt, max_new_tokens=max_new_tokens)[0]
    eos = merged.model.generation_config.eos_token_id
    ct2_ids = ct2_ids[: ct2_ids.index(eos)] if eos in ct2_ids else ct2_ids
    return Ct2Check(hf_tokens=hf_ids, ct2_tokens=ct2_ids)


def _convert(hf_dir: Path, out: Path, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(hf_dir), copy_files=list(COPY_FILES))
    try:
        converter.convert(str(out), quantization=quantization, force=True)
    except (NotImplementedError, ValueError, RuntimeError) as error:
        raise AsrtuneError(f"ctranslate2 could not convert the merged model: {error}") from error
    missing = [name for name in ("model.bin", "config.json", *COPY_FILES) if not (out / name).is_file()]
    if missing:
        raise AsrtuneError(f"ctranslate2 conversion left out {', '.join(missing)}")


def export_ct2(source: str | MergedModel, out: str | Path, *, quantization: str = DEFAULT_QUANTIZATION,
               overwrite: bool = False, check: bool = True) -> Ct2Check | None:
    """Export ``source`` as a CTranslate2 / faster-whisper folder at ``out``.

    Args:
        source: any model source asrtune accepts, or an already merged model.
        out: the folder to create (swapped in whole when everything succeeded).
        quantization: weight type, one of :data:`QUANTIZATIONS`.
        overwrite: replace ``out`` when it holds an earlier asrtune export.
        check: decode a fixed input with both runtimes and return the comparison.

    Returns:
        The HF-vs-ctranslate2 comparison, or None when ``check`` is off.

    Raises:
        AsrtuneError: unknown quantization, an unmergeable strategy (e.g. bottleneck adapters, which
            CTranslate2's Whisper cannot hold), or a failed conversion.
    """
    if quantization not in QUANTIZATIONS:
        raise AsrtuneError(f"unknown quantization {quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    out = Path(out)
    prepare_output_dir(out, overwrite)
    merged = source if isinstance(source, MergedModel) else load_merged(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        hf_dir, ct2_dir = work / "hf", work / "ct2"
        save_hf(merged, hf_dir)
        _convert(hf_dir, ct2_dir, quantization)
        write_marker(ct2_dir, merged, "ct2", quantization=quantization)
        result = check_ct2_export(merged, ct2_dir) if check else None
        if out.exists():
            shutil.rmtree(out)
        ct2_dir.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
