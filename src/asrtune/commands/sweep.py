"""``asrtune sweep GRID.yaml --output-dir DIR [--report-only]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("sweep")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="strategies x datasets x seeds -> run folders, report.md/.html and plots",
        description="Train every (dataset, strategy, seed) of a grid as its own run folder (runs with "
        "results are skipped, interrupted ones resumed), then write DIR/report.md and DIR/report.html "
        "shaped like seed 002's Tables 4-6, with PNG figures.",
    )
    parser.add_argument("grid", type=Path, help="sweep grid YAML (see configs/sweep-smoke.yaml)")
    parser.add_argument("--output-dir", required=True, type=Path, help="sweep folder")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing; rebuild the report from the runs"
    )
    parser.add_argument(
        "--stale",
        choices=["rerun", "refuse"],
        default="rerun",
        help="a cell whose folder holds a run of another config (the grid was edited): move the old run "
        "aside and train again (rerun), or refuse it and leave it out of the report (refuse)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.analysis.tables import dataset_table, paper_orderings
    from asrtune.report import print_table
    from asrtune.sweep import load_sweep
    from asrtune.sweep.runner import run_sweep

    grid = load_sweep(args.grid)
    outcome = run_sweep(
        grid, args.output_dir, progress=not args.no_progress, report_only=args.report_only, stale=args.stale
    )
    for dataset, base in outcome.bases.items():
        print(f"\n{dataset}")
        print_table(*dataset_table(dataset, base, outcome.rows))
    print()
    print_table(
        ["claim", "verdict", "numbers"], [list(c) for c in paper_orderings(outcome.bases, outcome.rows)]
    )
    print(f"\nreport: {outcome.report_md}  ({outcome.report_html})")
    if outcome.failures:
        print(f"{len(outcome.failures)} run(s) failed; see the report")
        return 1
    return 0
