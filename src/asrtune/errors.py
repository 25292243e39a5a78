"""The one exception type the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations

__all__ = ["AsrtuneError"]


class AsrtuneError(Exception):
    """A user-facing error: bad input, a missing file, an impossible setting."""
