"""asrtune's own warnings as one clear line each, through :mod:`logging` (logger ``asrtune``).

Library code calls :func:`warn`; the command line calls :func:`show_messages` once, after which every warning
prints as ``asrtune: warning: <message>`` on stderr, written between progress bars (tqdm's ``write``) instead of
through them, and with no Python source line. Without it (asrtune used from Python) the warnings go wherever the
caller's logging sends them (plain lines on stderr when logging is not configured).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER", "warn", "show_messages"]

LOGGER = logging.getLogger("asrtune")


def warn(message: str) -> None:
    """One warning line (see the module doc)."""
    LOGGER.warning(message)


class _BetweenBars(logging.Handler):
    """Writes records with tqdm's ``write``, which clears and redraws any open bar around the line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def show_messages() -> None:
    """Print asrtune's warnings as ``asrtune: warning: ...`` lines (idempotent; the CLI calls it)."""
    if any(isinstance(handler, _BetweenBars) for handler in LOGGER.handlers):
        return
    handler = _BetweenBars(logging.WARNING)
    handler.setFormatter(logging.Formatter("asrtune: warning: %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.WARNING)
    LOGGER.propagate = False
