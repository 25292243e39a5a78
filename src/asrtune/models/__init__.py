"""Model sources: HF ids and folders, CTranslate2 folders, bundled real Whisper weights, run folders."""

from __future__ import annotations

from asrtune.models.load import LoadedModel, load_model, resolve_source

__all__ = ["LoadedModel", "load_model", "resolve_source"]
