"""Optimizers in plain torch (no megatron-core, no run configuration): SODA's Cautious Adam with
AdamC weight decay and the statistic groups that make it match the authors' Levanter run."""

from megatron_soda.optim.cautious import CautiousAdamC, MaskStatistics
from megatron_soda.optim.groups import GPTLayout, clip_runs, group_name, param_runs

__all__ = ["CautiousAdamC", "GPTLayout", "MaskStatistics", "clip_runs", "group_name", "param_runs"]
