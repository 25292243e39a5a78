"""What ``--resume`` may and may not change, checked before anything trains.

A resumed run continues the same experiment: its model, strategy, data, language, task and seed are
fixed. Optimizer and loop settings may change, and a changed ``optim.*`` takes effect (recorded in
``metrics.jsonl``), never silently the old value.
"""

from __future__ import annotations

import torch

from asrtune.config import RunConfig, config_from_dict, config_to_dict, parse_yaml
from asrtune.errors import AsrtuneError
from asrtune.runs.layout import LAST, RunDir
from asrtune.training.lr_control import parameter_groups

__all__ = ["check_run_dir", "apply_new_optim", "FIXED_ON_RESUME", "OPTIM_ON_RESUME"]

FIXED_ON_RESUME = ("model", "strategy", "init_from", "language", "language_init", "task", "seed", "data",
                   "quantization")
OPTIM_ON_RESUME = ("learning_rate", "encoder_learning_rate", "projector_learning_rate", "weight_decay", "betas",
                   "eps")


def check_run_dir(run: RunDir, config: RunConfig, resume: bool) -> None:
    """The run folder fits the launch: a new run in a folder with none, a resume where one can continue.

    Raises:
        AsrtuneError: nothing to resume, a resume that changes a fixed setting, an existing run without
            ``--resume``, or a folder that cannot be written.
    """
    if resume:
        if not (run.checkpoints / LAST / "state.json").is_file():
            raise AsrtuneError(f"--resume: no checkpoint to resume in {run.root}")
        saved = config_to_dict(config_from_dict(parse_yaml(run.config.read_text())))
        wanted = config_to_dict(config)
        changed = [key for key in FIXED_ON_RESUME if saved[key] != wanted[key]]
        if changed:
            raise AsrtuneError(f"--resume: the run's config.yaml has another {', '.join(changed)}; "
                               "a resumed run may change only optim and loop settings")
        if saved["optim"]["name"] != wanted["optim"]["name"]:
            raise AsrtuneError(f"--resume: the run trained with optim.name {saved['optim']['name']}; its saved "
                               f"state cannot continue as {wanted['optim']['name']} (start a new run)")
    elif run.holds_a_run():
        raise AsrtuneError(f"{run.root} already holds a run; pass --resume to continue it, "
                           "or choose another --output-dir (asrtune never overwrites a run)")
    run.check_writable()


def apply_new_optim(optimizer: torch.optim.Optimizer, scheduler, model: torch.nn.Module, config: RunConfig,
                    learning_rate: float, saved: dict, step: int) -> tuple[str, dict] | None:
    """Give a resumed optimizer the run config's optim settings where they differ from the saved ones.

    Args:
        model: the model being trained (its parameter groups give the peak LRs as configured now).
        saved: the optim settings the checkpoint was written with.
        step: the step the run resumes at.

    Returns:
        None when nothing changed; else the message to print and the ``metrics.jsonl`` record of the change.
    """
    wanted = config_to_dict(config.optim)
    changed = {key: (saved.get(key), wanted[key]) for key in OPTIM_ON_RESUME if saved.get(key) != wanted[key]}
    if not changed:
        return None
    groups = parameter_groups(model, learning_rate, config.optim.encoder_learning_rate,
                              config.optim.projector_learning_rate)
    peak = {group["name"]: group["lr"] for group in groups}
    optim = config.optim
    for index, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = peak.get(group.get("name"), learning_rate)
        group["weight_decay"] = optim.weight_decay
        if "betas" in group:  # the AdamW family (Adafactor has no betas, and its eps is another pair)
            group["betas"], group["eps"] = tuple(optim.betas), optim.eps
        scheduler.base_lrs[index] = group["initial_lr"]
        group["lr"] = group["initial_lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    message = "--resume: applying the new " + ", ".join(f"optim.{key} {old} -> {new}"
                                                          for key, (old, new) in changed.items())
    record = {"step": step, "optim_change": {key: list(value) if isinstance(value, tuple) else value
                                             for key, value in changed.items()}}
    return message, record
