"""``asrtune explore``: a page to listen to and compare every utterance a model (before and after
fine-tuning) transcribed: word diffs, per-utterance WER, flags, terms, filters. One offline HTML file.

Modules: :mod:`~asrtune.explore.sources` (runs, saved evaluations, sweeps), :mod:`~asrtune.explore.clips`
(audio and manifest fields), :mod:`~asrtune.explore.align` (diffs and flags), :mod:`~asrtune.explore.view`
(one set's rows and summary), :mod:`~asrtune.explore.page` (the HTML), :mod:`~asrtune.explore.serve`
(localhost server). None of them imports torch.
"""

from __future__ import annotations

from asrtune.explore.clips import DataOverride, parse_data
from asrtune.explore.page import Page, build_page, write_page
from asrtune.explore.serve import start_server

__all__ = ["DataOverride", "Page", "build_page", "parse_data", "start_server", "write_page", "write_run_page"]


def write_run_page(run_dir, out) -> Page:
    """Write the page of one run folder to ``out`` (what ``asrtune demo`` does for its run)."""
    page = build_page([run_dir])
    write_page(page, out)
    return page
