"""The optimizations that turn a naive RNN into a fused one, as composable steps.

- :mod:`fusion.steps`: step names, :class:`~fusion.steps.Plan`, the ladder order.
- :mod:`fusion.gemm`: weight arrangement for ``group_gemm``, ``hoist_input``, ``pretranspose``,
  and the GEMM provider (on the CPU under ``pretranspose``: oneDNN with weights packed once).
- :mod:`fusion.pointwise`: the fused per-step pointwise kernels (``fuse_pointwise``).
"""
from .steps import LADDER, STEPS, Plan, Step, ladder

__all__ = ["LADDER", "STEPS", "Plan", "Step", "ladder"]
