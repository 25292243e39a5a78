"""Which arithmetic training steps use: ``loop.mixed_precision`` resolved against the hardware.

``auto`` (the default) picks bf16 autocast where the hardware multiplies bf16 matrices natively and
fp32 everywhere else:

- CUDA devices that report bf16 support (Ampere and later);
- CPUs with AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bf16 matmuls on AMX. On
  this project's 2-core Xeon a (12000 x 384) @ (384 x 1536) matmul ran at ~1,080 GFLOP/s in bf16
  against ~210 in fp32 (torch 2.13, 20 timed repeats), and a training step about twice as fast.

CPUs with AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake) stay on fp32 under ``auto`` (the default
keeps the numbers measured so far); ask for ``loop.mixed_precision: bf16`` there: on the project's
later 2-core AMD EPYC the same matmul ran at 155 GFLOP/s in bf16 against 71 in fp32 (10 repeats, machine
shared).

bf16 autocast keeps fp32 master weights, fp32 optimizer state and fp32 losses; only matmuls and
convolutions run in bf16, as transformers' ``bf16=True`` and accelerate's ``mixed_precision="bf16"``
do. It changes the arithmetic, so its WER effect is measured (README): the default follows that
measurement. Evaluation always decodes in fp32, so before/after numbers compare like with like.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from accelerate import Accelerator

__all__ = ["native_bf16", "resolve_mixed_precision", "accelerator_mixed_precision", "step_autocast"]


def native_bf16() -> bool:
    """True when this machine's training device multiplies bf16 natively (see the module docstring)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; private, so looked up
    return bool(amx and amx())


def resolve_mixed_precision(requested: str) -> str:
    """The precision a run trains in: ``auto`` becomes ``bf16`` or ``no``; anything else is kept."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16() else "no"


def accelerator_mixed_precision(precision: str) -> str:
    """What ``Accelerator(mixed_precision=…)`` gets for a resolved precision.

    fp16 needs accelerate's gradient scaler. bf16 needs none, so the recipe autocasts it itself and
    accelerate stays at ``no``: accelerate's state is one per process and refuses a second precision,
    and runs in one process (a sweep, lr-search trials) may differ in precision.
    """
    return "fp16" if precision == "fp16" else "no"


def step_autocast(precision: str, accelerator: Accelerator) -> AbstractContextManager:
    """The autocast a training step (and the frozen-prefix cache) runs under."""
    if precision == "bf16":
        return torch.autocast(accelerator.device.type, dtype=torch.bfloat16)
    return accelerator.autocast()
