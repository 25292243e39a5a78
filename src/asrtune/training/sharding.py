"""FSDP (``loop.parallel: fsdp``): parameters, gradients and optimizer state sharded across the processes.

PyTorch's FSDP2 (``fully_shard``) on an explicit device mesh (``init_device_mesh``: on a CPU the gloo group
torchrun forms; pytorch #132471), one unit per transformer block of the audio encoder and the decoder / LLM
(the family's ``layer_classes``: ``WhisperEncoderLayer``/``WhisperDecoderLayer``,
``Qwen2AudioEncoderLayer``/``Qwen2DecoderLayer``, not accelerate's default for Qwen2-Audio, which wraps
attention modules only) and the training forward as the root. The frozen encoder prefix whose outputs are
cached is not sharded (each process encodes its own utterances at its own pace, so no collective may run
there). Gradients are averaged across processes as DDP averages them, so the recipe's loss normalisation
holds unchanged.

Evaluation and checkpoints see whole parameters: :meth:`Sharding.full` gathers every unit once on every
process (one collective each, in the same order everywhere) and keeps them gathered, so ``generate`` runs
with no collective per token and each process may decode a different number of batches; checkpoints hold
the consolidated trainable weights and the consolidated optimizer state (``torch.distributed.checkpoint``'s
full state dicts), so ``export`` reads an ordinary checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from asrtune.models.family import CachePlan, family_of, model_core
from asrtune.runs.weights import TRAINABLE, load_trainable

__all__ = ["Sharding"]

ROOT_PREFIX = "model."  # the model's names inside the training forward (the FSDP root)


class Sharding:
    """The run's sharding: FSDP2 over ``world`` processes, or nothing (each method then does the plain thing).

    Args:
        enabled: ``loop.parallel == "fsdp"``.
        device_type: the training device's type (``cpu`` or ``cuda``).
        world: the number of processes.
    """

    def __init__(self, enabled: bool, device_type: str, world: int) -> None:
        self.enabled = enabled
        self.device_type = device_type
        self.world = world
        self.root: torch.nn.Module | None = None

    def shard(self, forward: torch.nn.Module, plan: CachePlan | None) -> torch.nn.Module:
        """Apply FSDP2 to the training forward (in place) and return it; unchanged when not enabled."""
        if not self.enabled:
            return forward
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device_type, (self.world,))
        model = forward.model
        ignored = _cached_prefix_parameters(model, plan)
        classes = family_of(model).layer_classes(model)
        for module in list(model.modules()):
            if isinstance(module, classes) and not any(id(p) in ignored for p in module.parameters()):
                fully_shard(module, mesh=mesh)
        fully_shard(forward, mesh=mesh, ignored_params={p for p in model.parameters() if id(p) in ignored})
        # The root must be initialised before any block runs on its own (prefix cache, evaluation at step 0)
        forward._get_fsdp_state()._lazy_init()
        self.root = forward
        return forward

    def _units(self) -> list[torch.nn.Module]:
        from torch.distributed.fsdp import FSDPModule

        return [m for m in self.root.modules() if isinstance(m, FSDPModule)]

    @contextmanager
    def full(self) -> Iterator[None]:
        """Every parameter whole on every process for the duration (collective: all processes enter it)."""
        if not self.enabled:
            yield
            return
        units = self._units()
        for unit in units:
            unit.unshard()
        self.root.set_reshard_after_forward(False)
        try:
            yield
        finally:
            for unit in units:
                if unit is not self.root:
                    unit.set_reshard_after_forward(True, recurse=False)
                unit.reshard()

    def grad_norm(self, norm: torch.Tensor) -> float:
        """A clipped gradient norm as a number (FSDP2's is a replicated DTensor)."""
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """What a checkpoint stores of the optimizer (collective under FSDP: the consolidated state)."""
        if not self.enabled:
            return optimizer.state_dict()
        if not optimizer.state:  # before the first step: torch.distributed.checkpoint would step at lr 0
            return {"state": {}}  # to create the state, and AdamW's step counts would then run one ahead
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.root, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.enabled:
            optimizer.load_state_dict(state)
            return
        if not state["state"]:  # saved before the first step: nothing to restore
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.root, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def load_trainable(self, model: torch.nn.Module, folder: Path) -> None:
        """A checkpoint's trainable weights into the (sharded) model; every process reads the file."""
        if not self.enabled:
            load_trainable(model, folder)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = {ROOT_PREFIX + name: value for name, value in load_file(str(folder / TRAINABLE)).items()}
        set_model_state_dict(self.root, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _cached_prefix_parameters(model: torch.nn.Module, plan: CachePlan | None) -> set[int]:
    """Ids of the parameters of the frozen encoder prefix whose outputs are cached (never sharded)."""
    if plan is None:
        return set()
    family = family_of(model)
    encoder = model_core(model).get_submodule(family.modules.encoder)
    if plan.whole:
        return {id(p) for p in encoder.parameters()}
    core = model_core(model)
    modules = [core.get_submodule(name) for name in family.modules.stem] + list(encoder.layers[: plan.layers])
    return {id(p) for module in modules for p in module.parameters()}
