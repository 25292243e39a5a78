"""Several processes: who writes, how results meet, and launches that would silently run one process.

Everything goes through accelerate's state (torchrun, ``accelerate launch`` with any config, DDP,
FSDP, DeepSpeed, several nodes); these helpers only name the few collective steps the recipe takes.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from asrtune.errors import AsrtuneError

__all__ = ["Processes", "check_launch", "leave_process_group"]

T = TypeVar("T")


def leave_process_group() -> None:
    """Destroy the default process group if this process joined one; once communication is over.

    PyTorch's shutdown rule (torch.distributed docs, "Shutdown"): each trainer process calls
    ``destroy_process_group`` near the end of its main. One that exits without it can abort at exit (SIGABRT,
    "terminate called without an active exception") when gloo's worker threads still hold work as the
    interpreter tears down (pytorch/pytorch#179291), failing a run that had finished and saved everything.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Processes:
    """The run's processes, seen from one of them."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index
        self.is_main = accelerator.is_main_process

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def from_main(self, value):
        """The main process's ``value``, on every process (decisions are made once)."""
        if self.world == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the main process; its result reaches every process, and so does its failure.

        Whatever ``work`` raises on the main process (an AsrtuneError or anything else) is raised there again
        and, as an AsrtuneError naming it, on every other process, which would otherwise wait for the main
        process's answer until the launcher's timeout.
        """
        if self.world == 1:
            return work()
        outcome, failure = None, None
        if self.is_main:
            try:
                outcome = ("ok", work())
            except Exception as error:  # noqa: BLE001 - every failure must reach the other processes
                failure = error
                outcome = ("error", str(error) if isinstance(error, AsrtuneError)
                           else f"the main process failed: {type(error).__name__}: {error}")
        outcome = self.from_main(outcome)
        if failure is not None:
            raise failure
        if outcome[0] == "error":
            raise AsrtuneError(outcome[1])
        return outcome[1]

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order, on every process.

        Items may hold tensors (RNG states): each process's list travels as ``torch.save`` bytes,
        since torch's object collectives fail to unpickle CPU tensors over gloo (torch 2.13).
        """
        if self.world == 1:
            return list(items)
        buffer = io.BytesIO()
        torch.save(list(items), buffer)
        parts = gather_object([buffer.getvalue()])
        return [item for part in parts for item in torch.load(io.BytesIO(part), weights_only=True)]

    def sum(self, value: float) -> float:
        """Sum of a number over processes (float64)."""
        if self.world == 1:
            return float(value)
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(tensor)
        return float(tensor.item())


def _requested_processes(argv: list[str]) -> int | None:
    """The process count an ``accelerate launch`` command line asks for (flag, config file or default config)."""
    count, config_file = None, None
    for position, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and position + 1 < len(argv):
                count = int(argv[position + 1])
            elif arg.startswith(flag + "="):
                count = int(arg.split("=", 1)[1])
        if arg == "--config_file" and position + 1 < len(argv):
            config_file = argv[position + 1]
        elif arg.startswith("--config_file="):
            config_file = arg.split("=", 1)[1]
    if count is None:
        default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "accelerate" / \
            "default_config.yaml"
        path = Path(config_file) if config_file else default
        if path.is_file():
            try:
                count = int((yaml.safe_load(path.read_text()) or {}).get("num_processes") or 1)
            except (yaml.YAMLError, ValueError, TypeError, AttributeError):
                count = None
    return count


def _parent_command() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def check_launch(parent_command: list[str] | None = None, environ: dict | None = None) -> None:
    """Refuse an ``accelerate launch`` that asked for several processes but started one.

    ``accelerate launch --cpu --num_processes 2`` (and a MULTI_CPU config without MPI) starts a
    single process and says nothing; training would then run on one process, at half the expected
    global batch. torchrun starts them.

    Raises:
        AsrtuneError: with the torchrun command that runs the processes.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ or "ACCELERATE_MIXED_PRECISION" not in environ:
        return  # a real multi-process launch, or not under accelerate launch at all
    command = _parent_command() if parent_command is None else parent_command
    if not any(part.endswith("accelerate") for part in command[:3]) or "launch" not in command:
        return
    requested = _requested_processes(command)
    if requested and requested > 1:
        ours = " ".join(shlex.quote(a) for a in sys.argv[1:])
        raise AsrtuneError(
            f"accelerate launch asked for {requested} processes but started one (accelerate does this on a "
            f"CPU without MPI). Run the processes with torchrun instead:\n"
            f"  torchrun --nproc_per_node {requested} -m asrtune {ours}")
