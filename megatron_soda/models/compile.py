"""``torch.compile`` of the parts of the model where fusing elementwise work can pay on a GPU.

SODA's models are small (hidden 512-2560) with a 144,644-entry vocabulary, so besides the
matmuls a step spends its time in memory-bound elementwise kernels: the RMSNorms (four per layer
with QK-norm), SwiGLU, and the fp32 softmax work of the output head over ``tokens x V``.
``--torch-compile TARGETS`` compiles, in place (``nn.Module.compile``: the parameters, their names
and the checkpoint keys stay those of the eager module):

* ``mlp``: each layer's MLP (linear_fc1 -> SwiGLU -> linear_fc2);
* ``norm``: every RMSNorm (input, pre-MLP, Q/K norms, the final norm);
* ``head``: the chunked head's per-chunk fp32 math (``models/chunked_head.py``: logits ->
  max / sum-exp / target logit forward, the softmax gradient backward); needs
  ``--head-chunk-tokens``.

The whole ``TransformerLayer`` is not compiled: megatron-core's layer forks the CUDA RNG tracker
around dropout and warns inside its forward, both graph breaks (measured with
``torch._dynamo.utils.counters`` on megatron-core 0.16.1), and the attention kernel is already
compiled where it matters (``flex``).  What each target buys on a GPU is measured by
``benchmarks/gpu_check.sh`` (docs/gpu.md); on CPU the tests run the same graphs with the
``aot_eager`` backend (tracing and autograd, no code generation), since inductor's C++ compile
costs ~20 s even for the tiny model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is compiled: the config reads this module
    import torch

TORCH_COMPILE_TARGETS = ("mlp", "norm", "head")
TORCH_COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def parse_compile_targets(spec: str) -> tuple[str, ...]:
    """``"mlp,norm"`` / ``"all"`` / ``""`` -> the targets, in :data:`TORCH_COMPILE_TARGETS` order."""
    names = {s.strip() for s in spec.split(",") if s.strip()}
    if "all" in names:
        names = (names - {"all"}) | set(TORCH_COMPILE_TARGETS)
    unknown = names - set(TORCH_COMPILE_TARGETS)
    if unknown:
        raise ValueError(f"--torch-compile: unknown target(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(TORCH_COMPILE_TARGETS)} or all")
    return tuple(t for t in TORCH_COMPILE_TARGETS if t in names)


def _norms(model: torch.nn.Module) -> Iterable[torch.nn.Module]:
    import torch

    return (m for m in model.modules() if isinstance(m, torch.nn.RMSNorm))


def compile_model_chunk(model: torch.nn.Module, targets: tuple[str, ...], backend: str = "inductor") -> int:
    """Compile ``targets`` of one model chunk in place; returns how many modules were compiled.
    (``head`` is not a module: the chunked head reads its backend from the model.)"""
    if not targets:
        return 0
    import torch

    # megatron's modules call warnings.warn inside forward; without this each call is a graph break
    torch._dynamo.config.reorderable_logging_functions.add(warnings.warn)
    modules: list[torch.nn.Module] = []
    decoder = getattr(model, "decoder", None)
    if "mlp" in targets and decoder is not None:
        modules += [layer.mlp for layer in decoder.layers]
    if "norm" in targets:
        modules += list(_norms(model))
    for module in modules:
        module.compile(backend=backend)
    if "head" in targets:
        model.head_compile_backend = backend
    return len(modules)
