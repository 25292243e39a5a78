"""The ``asrtune`` command line. Errors are one clear line, not a traceback.

Each subcommand lives in :mod:`asrtune.commands` and registers itself there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from asrtune.commands import COMMANDS, load_all
from asrtune.errors import AsrtuneError
from asrtune.messages import show_messages

__all__ = ["main", "build_parser", "quiet_libraries"]


def quiet_libraries() -> None:
    """Keep the terminal for asrtune's own bars and tables (the CLI and the benchmarks call it)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes (imported by PEFT when installed) warns at import that an optional hub kernel is missing
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # PEFT calls a transformers property deprecated in v5; not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    show_messages()  # asrtune's own warnings: one "asrtune: warning: ..." line each


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrtune", description="Fine-tune and domain-adapt Whisper.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    load_all()
    for name in COMMANDS.names():
        COMMANDS.get(name)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except AsrtuneError as error:
        print(f"asrtune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asrtune: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """A command run by torchrun or ``accelerate launch`` leaves its process group before the process exits."""
    if "torch" in sys.modules:  # a command that never imported torch joined no group
        from asrtune.training.distributed import leave_process_group

        leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
