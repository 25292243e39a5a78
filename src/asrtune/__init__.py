"""asrtune: fine-tune and domain-adapt speech recognition models, measure what it bought, deploy it."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
