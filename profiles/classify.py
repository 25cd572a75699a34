"""Kernel classes from kernel names: one ordered table, first match wins.

Names are matched as recorded (mangled or not), so the table works the same on a CUPTI trace,
an ``nsys stats`` summary (demangled) and an ``ncu`` report.  Order matters: cuDNN's implicit-GEMM
convolutions contain ``gemm`` and must be caught as ``conv`` first; torch's fill kernels are
``vectorized_elementwise_kernel`` instances and must be caught as ``copy`` before ``pointwise``.
Every pattern was written against a name seen in ``profiles/reference/`` or named in the issue.
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple

CLASSES = ("gemm", "cudnn_rnn", "conv", "pointwise", "copy", "other")


class Rule(NamedTuple):
    cls: str
    pattern: re.Pattern
    why: str


def _r(cls: str, regex: str, why: str) -> Rule:
    return Rule(cls, re.compile(regex), why)


RULES: tuple[Rule, ...] = (
    _r("copy", r"^\[?(CUDA )?mem(cpy|set)|^\[?Mem(cpy|set)",
       "CUPTI/nsys/torch.profiler names for memcpy and memset operations"),
    _r("copy", r"FillFunctor|fill_kernel|broadcast_fusion$",
       "torch's fill (zeros for h0/c0) and XLA fusions whose root is a broadcast: constant writes"),
    _r("copy", r"CatArrayBatchedCopy|copy_kernel|CopyFunctor|RNN(Input|Output)Rearrangement",
       "pure data movement: torch.cat/copies, cuDNN reordering x and y between layouts"),
    _r("cudnn_rnn", r"elemWiseRNNcell|lstm_tile|gru_tile|rnn_tile|persistRNN|RNN_persist|"
                    r"LSTM_elementWise|GRU_elementWise",
       "cuDNN's RNN kernels: the per-step gate cell, and the persistent whole-sequence kernels"),
    _r("conv", r"fprop|dgrad|wgrad|convolve|conv2d|_conv_|winograd|im2col|implicit_gemm",
       "convolutions (cuDNN xmma implicit GEMM, winograd, FFT, explicit im2col)"),
    _r("gemm", r"gemm|gemv|nvjet|cutlass|xmma|cublas|matmul|sgemm|hgemm",
       "cuBLAS/cuBLASLt (xmma, nvjet, gemv), CUTLASS and generated matmuls"),
    _r("pointwise", r"elementwise|_cell_forward|_cell_backward|fusion|pointwise|triton_poi|"
                    r"sigmoid|tanh",
       "element-by-element math: ATen elementwise and fused RNN cells, XLA/Triton fusions"),
)


@functools.lru_cache(maxsize=4096)
def rule_for(name: str, kind: str = "kernel") -> Rule | None:
    """The first rule that matches, or None (class ``other``)."""
    if kind in ("memcpy", "memset"):
        return RULES[0]
    for rule in RULES:
        if rule.pattern.search(name):
            return rule
    return None


def classify(name: str, kind: str = "kernel") -> str:
    """One of :data:`CLASSES` for a kernel name; memcpy/memset records are always ``copy``."""
    rule = rule_for(name or "", kind)
    return rule.cls if rule else "other"


# GEMM precision, read from the names cuBLAS/cuDNN give their kernels: the point that
# JAX's cuDNN LSTM is faster only because its GEMMs run in TF32 rests on this.
_PRECISION = (
    ("tf32", re.compile(r"tf32")),
    ("bf16", re.compile(r"bf16|_bsb_|_bss_|_bhb_")),
    ("fp16", re.compile(r"f16|hsh|hss|_h\d{3,4}|hgemm|half")),
    ("fp32", re.compile(r"f32f32_f32f32|sgemm|ffma|gemv\w*IiiffffL|gemv2T_kernel_val")),
)


def gemm_precision(name: str) -> str | None:
    """``tf32``, ``bf16``, ``fp16`` or ``fp32`` for a GEMM kernel name; None when it is not said."""
    for label, pat in _PRECISION:
        if pat.search(name):
            return label
    return None
