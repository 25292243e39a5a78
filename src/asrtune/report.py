"""Plain-text tables for the terminal (summary tables at the end of every command)."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["format_table", "print_table"]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-style Markdown table, columns padded to their widest cell."""
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def print_table(header: list[str], rows: list[list[str]], file: TextIO | None = None) -> None:
    print(format_table(header, rows), file=file or sys.stdout)
