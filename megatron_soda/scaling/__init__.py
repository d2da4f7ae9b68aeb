"""Scaling-law toolkit: FLOP accounting, IsoFLOP planning and launch, collection, fits, plots.

Modules, one job each: ``flops`` (FLOP and parameter counts, shared with the trainer's MFU),
``rules`` (shape and hyperparameter rules), ``planner`` (budgets -> runs), ``launcher`` (command
lines, Slurm array, run metadata), ``collector`` (trainer JSONL -> results table), ``results``
(the results CSV), ``fitter`` (IsoFLOP parabolas, power laws, bootstrap, prediction),
``parametric`` (Chinchilla L(N, D)), ``memory`` (GPU memory per preset and layout, the largest
micro-batch that fits), ``plots`` and ``cli`` (``python -m megatron_soda.scaling``).

Importing this package stays cheap (no scipy/matplotlib): the trainer imports ``flops``.
"""

from megatron_soda.scaling.errors import ScalingError
from megatron_soda.scaling.flops import (
    ModelShape,
    forward_flops_per_token,
    kaplan_flops_per_token,
    paper_training_flops_per_token,
    param_counts,
    run_flop_counts,
    training_flops_per_token,
)

__all__ = [
    "ModelShape",
    "ScalingError",
    "forward_flops_per_token",
    "kaplan_flops_per_token",
    "paper_training_flops_per_token",
    "param_counts",
    "run_flop_counts",
    "training_flops_per_token",
]
