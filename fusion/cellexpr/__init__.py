"""Cells as expressions: declare a cell's pointwise part once, generate its kernels for every backend.

Modules, along the seams: :mod:`.language` (the :class:`Cell`, its analysis, the helpers the
generators share), one generator per target (:mod:`.numpy_gen`, :mod:`.numba_cpu`,
:mod:`.cuda_c`, :mod:`.numba_cuda`), the shipped cells (:mod:`.cells`).  Everything is
imported from here: ``from fusion import cellexpr as ce; ce.LSTM, ce.numba_source(...)``.

A :class:`Cell` is a list of assignments in a small language (parsed with :mod:`ast`, never
``eval``-ed as given), one statement per line, each name assigned once (the shipped cells in
:mod:`.cells`, e.g. ``PEEPHOLE_LSTM``, show a parameter declaration too)::

    MINIMAL_GRU = Cell("minimal_gru", gates="fn", states=(), body='''
        f = sigmoid(gx_f + gh_f + bx_f + bh_f)
        n = tanh(gx_n + bx_n + f * (gh_n + bh_n))
        h = (1 - f) * h_prev + f * n
    ''')

Names a body may read, all at one unit ``(b, j)`` of the step:

- ``gx_<g>``, ``gh_<g>``: gate ``g``'s input and recurrent GEMM results (``(B, G, H)`` views);
- ``bx_<g>``, ``bh_<g>``: the two biases of gate ``g`` (a launcher passes zeros for an absent one);
- ``h_prev`` and ``<s>_prev`` for each extra state ``s`` (LSTM: ``c``);
- per-unit parameters: ``<p>_<row>`` for a parameter declared with rows (array ``(rows, H)``),
  ``<p>`` for one declared with ``None`` (array ``(H,)``);
- ``H``, the hidden size, as a number.

Functions: ``sigmoid``, ``tanh``, ``relu`` (NaN stays NaN), ``exp``, ``sqrt``, and ``rowsum(e)``: the sum of ``e`` over the
H units of the batch row (what layer norm needs).  Operators ``+ - * /``, unary minus, ``** n``
for a small positive integer n.  A body must assign ``h`` and each state.  Statements may appear
in any order that defines a name before its use.

Reductions.  ``rowsum`` makes a statement a per-row scalar.  The generator gives every reduction
a level (1 + the deepest reduction its argument depends on) and runs one pass over the row per
level, then a final pass that writes the outputs.  Each pass recomputes the per-unit statements
it needs instead of storing them: a layer-norm LSTM (mean and variance of the input and of the
recurrent pre-activations, then mean and variance of c) is five passes, two-pass variance (no
E[x^2] - E[x]^2 cancellation).  Outputs are written only in the last pass, so a state updated
in place is read intact by the earlier ones.

Generated kernels (sources are plain text, inspectable with ``print(gen.numba_source(CELL))``):

- :func:`numpy_source`: op by op over ``(B, H)`` arrays (``rowsum`` -> ``sum(axis=1)``): the
  ``naive`` pointwise stage and a readable statement of the math.
- :func:`numba_source`: ``@njit(parallel=True)``, one parallel iteration per batch row, inner
  loops over contiguous units (vectorized by LLVM), fp32 tanh as the rational approximation of
  :mod:`fusion.pointwise`, reductions accumulated in the storage type.
- :func:`cuda_source`: CUDA C, ``float``/``__half``/``__nv_bfloat16`` storage, fp32 math, gate
  views read in place through their batch and gate strides like ``kernels/cuda/rnn_pointwise.cu``.
  Without reductions: one thread per unit (x along H, y along B, grid-stride over B), the
  mapping of the hand-written kernel.  With reductions: one block per batch row (grid-stride over
  B), threads stride over H, each pass ends in a block reduction (warp shuffles, then one warp
  over the per-warp sums in shared memory); blockDim must be a multiple of 32 (see
  :func:`cuda_launch_shape`).
- :func:`numba_cuda_source`: ``numba.cuda``, one block per batch row for every cell, shared-memory
  tree reduction (blockDim a power of two, at most ``NUMBA_CUDA_THREADS``).

Kernel arguments, in this order (every generator): ``gx, gh, bx, bh, h_prev``, then per state
``<s>_prev, <s>_out`` (the numba CPU kernel takes one in-place ``<s>`` array instead: two
names for one buffer defeat LLVM's alias check), then the parameters in declaration order,
then ``h_out``.  CUDA C adds the batch stride after each array of rows (and the gate stride after
gx, gh) and ``B, H`` at the end; biases may be null pointers there.
"""
from __future__ import annotations

from .cells import CELLS, GRU, LAYERNORM_LSTM, LN_EPS, LSTM, PEEPHOLE_LSTM, RNN_RELU, RNN_TANH, get
from .cuda_c import _CUDA_PRELUDE, CUDA_THREADS, SUFFIX, cuda_launch_shape, cuda_source, cuda_symbol
from .language import FUNCS, MAX_POW, Cell, analyse, foldable_biases
from .numba_cpu import NumbaCell, numba_kernel, numba_source
from .numba_cuda import NUMBA_CUDA_THREADS, numba_cuda_kernel, numba_cuda_launch_shape, numba_cuda_source
from .numpy_gen import numpy_source, numpy_step

__all__ = ["CELLS", "CUDA_THREADS", "Cell", "FUNCS", "GRU", "LAYERNORM_LSTM", "LN_EPS", "LSTM", "MAX_POW",
           "NUMBA_CUDA_THREADS", "NumbaCell", "PEEPHOLE_LSTM", "RNN_RELU", "RNN_TANH", "SUFFIX", "_CUDA_PRELUDE",
           "analyse", "cuda_launch_shape", "cuda_source", "cuda_symbol", "foldable_biases", "get",
           "numba_cuda_kernel", "numba_cuda_launch_shape", "numba_cuda_source", "numba_kernel", "numba_source",
           "numpy_source", "numpy_step"]
