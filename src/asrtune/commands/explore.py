"""``asrtune explore RUN_OR_EVALUATION... [--data [SET=]MANIFEST] [--out page.html] [--serve]``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asrtune.commands import COMMANDS

DEFAULT_OUT = "explore.html"
EMBED_LIMIT_MB = 20.0  # asrtune.explore.page.DEFAULT_EMBED_LIMIT_MB


@COMMANDS.register("explore")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explore",
        help="one offline HTML page to listen to and compare every utterance, before and after",
        description="Write one self-contained HTML page (no network) with every utterance of the inputs: "
        "audio, reference, base and tuned hypotheses with a word diff, WER before/after, flags, terms, "
        "filters and the set's numbers.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_OR_EVALUATION",
        help="run folder (every set it scored), RUN/evaluation/SET.jsonl, saved evaluation "
        "(asrtune evaluate ... --save FILE.json; two of one manifest: before, after) or sweep "
        "folder",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[SET=]MANIFEST",
        help="read audio and fields from this manifest: for every set whose utterances it holds, "
        "or for the set named SET (default: the manifests the inputs name)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the page to write (default: {DEFAULT_OUT} in the run folder, else here)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NAME",
        help="only this set (repeatable; e.g. test)",
    )
    parser.add_argument(
        "--pick",
        action="append",
        default=[],
        metavar="GLOB",
        help="sweep folders: only runs whose cell matches (dataset/strategy/seed-k; repeatable)",
    )
    parser.add_argument(
        "--embed-audio",
        action="store_true",
        help="put the clips inside the page (data: URIs) instead of referring to them",
    )
    parser.add_argument(
        "--embed-limit-mb",
        type=float,
        default=EMBED_LIMIT_MB,
        help=f"largest total of embedded clips (default {EMBED_LIMIT_MB:g} MB)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="also serve the page and its clips on 127.0.0.1 until interrupted (for a remote "
        "machine: ssh -L PORT:127.0.0.1:PORT host)",
    )
    parser.add_argument("--port", type=int, default=8000, help="--serve's port (0: any free one)")
    parser.set_defaults(func=run)


def default_out(inputs: list[str]) -> Path:
    """``explore.html`` in the (only) run or sweep folder given, else in the current folder."""
    folders = [Path(i) for i in inputs if Path(i).is_dir()]
    return folders[0] / DEFAULT_OUT if len(inputs) == 1 and folders else Path(DEFAULT_OUT)


def run(args: argparse.Namespace) -> int:
    from asrtune.explore import build_page, parse_data, start_server, write_page
    from asrtune.report import print_table

    started = time.perf_counter()
    page = build_page(
        args.inputs, data=[parse_data(d) for d in args.data], picks=tuple(args.pick), sets=tuple(args.sets)
    )
    out = write_page(
        page, args.out or default_out(args.inputs), embed=args.embed_audio, limit_mb=args.embed_limit_mb
    )
    for warning in page.warnings:
        print(f"asrtune explore: {warning}")
    rows = [
        [
            f"{v['source']} · {v['name']}",
            str(len(v["rows"])),
            " / ".join(f"{label} {n}" for _, label, n in v["options"]["categories"]),
        ]
        for v in page.views
    ]
    print_table(["set", "utterances", "rows"], rows)
    print(
        f"page: {out} ({out.stat().st_size / 1e6:.1f} MB, {len(page.audio_files)} clips, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    if args.serve:
        server = start_server(out, [] if args.embed_audio else page.audio_files, port=args.port)
        print(
            f"serving {server.url} (127.0.0.1 only; from another machine: ssh -L "
            f"{server.httpd.server_address[1]}:127.0.0.1:{server.httpd.server_address[1]} HOST); Ctrl-C stops"
        )
        try:
            server.thread.join()
        finally:
            server.close()
    return 0
