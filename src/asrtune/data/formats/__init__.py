"""Corpus formats ``asrtune prepare`` reads: each module registers one reader in :data:`FORMATS`.

asrtune JSONL, NeMo JSON-lines manifests, Common Voice TSV, Hugging Face audiofolder
(``metadata.csv``), Kaldi data directories and Hugging Face ``datasets`` saved with
``save_to_disk``. :func:`detect_format` picks the reader from the source itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from asrtune.data.formats.base import FORMATS, Format, ReadContext, Source, detect_format, read_source

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FORMATS", "Format", "ReadContext", "Source", "detect_format", "read_source"]
