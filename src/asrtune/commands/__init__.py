"""One module per ``asrtune`` subcommand, each registering itself in :data:`COMMANDS`.

A command module defines ``add(subparsers)`` that adds its parser and sets ``func``; the
registry keeps CLI work on one command from touching the others.
"""

from __future__ import annotations

import importlib
import pkgutil

from asrtune.registry import Registry

COMMANDS: Registry = Registry("command")


def load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


__all__ = ["COMMANDS", "load_all"]
