"""``asrtune sweep``: strategies x datasets x seeds, each a run folder, then seed 002's tables and figures."""

from asrtune.sweep.config import SweepConfig, load_sweep, sweep_from_dict

__all__ = ["SweepConfig", "load_sweep", "sweep_from_dict"]
