"""Deploy a fine-tuned model: merged Hugging Face folders and CTranslate2 (faster-whisper) folders."""

from __future__ import annotations

from asrtune.export.ct2 import DEFAULT_QUANTIZATION, QUANTIZATIONS, Ct2Check, check_ct2_export, export_ct2
from asrtune.export.merge import (
    MergedModel,
    deployable_generation_config,
    export_hf,
    load_merged,
    merge_loaded,
)

__all__ = ["DEFAULT_QUANTIZATION", "QUANTIZATIONS", "Ct2Check", "MergedModel", "check_ct2_export",
           "deployable_generation_config", "export_ct2", "export_hf", "load_merged", "merge_loaded"]
