"""The CTranslate2 weight types an export may take (a light module: the CLI builds its choices from it)."""

from __future__ import annotations

__all__ = ["QUANTIZATIONS", "DEFAULT_QUANTIZATION"]

# ctranslate2's accepted weight types (ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES).
QUANTIZATIONS = ("float16", "float32", "bfloat16", "int8", "int8_float16", "int8_float32", "int8_bfloat16",
                 "int16")
DEFAULT_QUANTIZATION = "float16"  # what faster-whisper's published models use; on a CPU, run int8
