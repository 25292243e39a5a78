"""The optimizer a run steps with (``optim.name``), and the refusal of one this machine cannot run.

- ``adamw``: PyTorch's fused AdamW (one kernel per step on CPU and CUDA; the Trainer's default,
  ``adamw_torch_fused``). State: two fp32 moments, 8 bytes a trainable parameter.
- ``adafactor``: PyTorch's ``torch.optim.Adafactor`` (Shazeer & Stern 2018): no first moment and, for a
  matrix, a row and a column of second-moment statistics instead of a full copy, so its state is
  ~(rows + columns) / (rows x columns) of AdamW's second moment. Driven by the run's learning rate and
  schedule like AdamW (no relative step size).
- ``adamw_8bit``: bitsandbytes' ``AdamW8bit``: the moments block-wise quantized to 8 bits, 2 bytes a
  parameter (bitsandbytes 0.50 runs it on CPU too).
- ``paged_adamw_8bit``: bitsandbytes' ``PagedAdamW8bit``: the same, its state in CUDA unified memory that
  pages to CPU RAM under pressure. Needs a CUDA device; on a CPU there is nothing to page.

Every choice saves and restores its state through ``state_dict`` (``checkpoints/last``), so a resumed run
continues exactly.
"""

from __future__ import annotations

import importlib.util

import torch

from asrtune.config import OptimConfig
from asrtune.errors import AsrtuneError

__all__ = ["check_optimizer", "build_optimizer", "STATE_BYTES"]

# Bytes of optimizer state per trainable parameter (asrtune plan; Adafactor's is per matrix, see plan).
STATE_BYTES = {"adamw": 8.0, "adafactor": 4.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0}
_BITSANDBYTES = ("adamw_8bit", "paged_adamw_8bit")


def check_optimizer(name: str, device_type: str) -> None:
    """Refuse, before any model loads, an optimizer this machine cannot run, naming what to use instead.

    Raises:
        AsrtuneError: bitsandbytes is missing for an 8-bit choice, or a paged optimizer off CUDA.
    """
    if name in _BITSANDBYTES and importlib.util.find_spec("bitsandbytes") is None:
        raise AsrtuneError(f"optim.name {name} needs bitsandbytes (pip install 'asrtune[big]'); "
                           "or use optim.name: adafactor, which needs nothing more")
    if name == "paged_adamw_8bit" and device_type != "cuda":
        raise AsrtuneError(f"optim.name paged_adamw_8bit pages optimizer state out of CUDA memory; this run "
                           f"trains on {device_type}, where there is nothing to page: use adamw_8bit (the "
                           "same 8-bit state, unpaged) or adafactor")


def build_optimizer(optim: OptimConfig, groups: list[dict], learning_rate: float,
                    device_type: str) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names over the parameter groups (each with its own ``lr``)."""
    check_optimizer(optim.name, device_type)
    if optim.name == "adamw":
        # fused: one kernel per step instead of a dozen passes over every parameter (CPU and CUDA; FSDP2's
        # DTensor parameters too)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=optim.betas, eps=optim.eps,
                                 weight_decay=optim.weight_decay, fused=device_type in ("cpu", "cuda"))
    if optim.name == "adafactor":
        return torch.optim.Adafactor(groups, lr=learning_rate, weight_decay=optim.weight_decay)
    import bitsandbytes as bnb

    chosen = bnb.optim.AdamW8bit if optim.name == "adamw_8bit" else bnb.optim.PagedAdamW8bit
    return chosen(groups, lr=learning_rate, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
