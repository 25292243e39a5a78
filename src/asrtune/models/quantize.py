"""A quantized frozen base (``quantization: 4bit | 8bit``, QLoRA): transformers' ``BitsAndBytesConfig``.

4bit is NF4 with double quantization (Dettmers et al. 2023), 8bit is LLM.int8; both replace only the
``nn.Linear`` layers of the loaded model (bitsandbytes quantizes nothing else: the audio encoder's
convolutions, norms and embeddings keep the load dtype). The family's projector and output head are left
out (``llm_int8_skip_modules``): the projector may train, and the head is tied to the token embeddings.
bitsandbytes 0.50 runs 4-bit and 8-bit layers on CPU as well as CUDA.
"""

from __future__ import annotations

import importlib.util

import torch

from asrtune.errors import AsrtuneError
from asrtune.models.family import ModelFamily

__all__ = ["quantization_config", "check_quantization"]


def check_quantization(quantization: str | None) -> None:
    """Refuse, before loading, a quantized base this installation cannot build.

    Raises:
        AsrtuneError: bitsandbytes is not installed.
    """
    if quantization and importlib.util.find_spec("bitsandbytes") is None:
        raise AsrtuneError(f"quantization {quantization} needs bitsandbytes (pip install 'asrtune[big]'); or "
                           "quantization: null (the base in full precision)")


def quantization_config(quantization: str, family: ModelFamily):
    """The ``BitsAndBytesConfig`` a family's model loads with for ``4bit`` or ``8bit``."""
    from transformers import BitsAndBytesConfig

    check_quantization(quantization)
    skip = [name for name in (family.modules.projector, family.modules.head or "proj_out") if name]
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
