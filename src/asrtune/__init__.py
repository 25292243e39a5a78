"""asrtune: fine-tune and domain-adapt speech recognition models, measure what it bought, deploy it.

From Python (each name is imported on first use, so ``import asrtune`` loads no torch)::

    import asrtune

    results = asrtune.train("configs/medical-decoder.yaml", "runs/py", loop={"max_steps": 30})
    scores = asrtune.evaluate("runs/py", "runs/demo/data/test/manifest.jsonl")
    transcripts = asrtune.transcribe("runs/py", ["dictation.wav"])

See :mod:`asrtune.api` for the functions and the README's "From Python" section.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from asrtune.version import __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time each name is imported on first use
    from asrtune.api import align, evaluate, load_model, train, transcribe
    from asrtune.config import RunConfig, load_config

__all__ = ["__version__", "train", "load_config", "RunConfig", "load_model", "evaluate", "transcribe", "align"]

_LAZY = {"train": "asrtune.api", "load_model": "asrtune.api", "evaluate": "asrtune.api", "transcribe": "asrtune.api",
         "align": "asrtune.api", "load_config": "asrtune.config", "RunConfig": "asrtune.config"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module 'asrtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
