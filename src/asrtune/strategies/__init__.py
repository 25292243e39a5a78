"""Fine-tuning strategies: each module registers one; specs compose them (``freeze:n=20+lora:r=8``)."""

from __future__ import annotations

import importlib
import pkgutil

from asrtune.strategies.base import (
    STRATEGIES,
    Strategy,
    apply_strategy,
    default_learning_rate,
    merge_strategy,
    parse_spec,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "Strategy", "apply_strategy", "default_learning_rate", "merge_strategy", "parse_spec"]
