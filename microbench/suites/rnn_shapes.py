"""DeepBench's RNN shapes, carried over as data.

Source: baidu-research/DeepBench at its last commit, da81ba7 (2020-08-11), file
``code/kernels/rnn_problems.h`` (the conv tables in conv_shapes.py are read at the same commit).
The header holds three tables, each row a tuple in the header's order

    (hidden units, batch size, timesteps, cell type)          # cell: "vanilla", "lstm", "gru"

    training_set          53 rows: training-sized batches (8..128), 12 of them vanilla
    inference_server_set  69 rows: batch 1, 2, 4
    inference_device_set   3 rows: batch 1, small hidden sizes (on-device inference), 2 vanilla

Rows are kept exactly, in table order, so a row's name is its table and index:
``deepbench-rnn-train/012`` is the 13th row of ``training_set``.  (Commit 608d7a3 commented out
the GRU row 2816 x 32 x 1500; 11dd9f7, "revert change to rnn_problems.h", restored it 44 minutes
later, and it is live at HEAD and in DeepBenchKernels_train.xlsx: it is row 034 here.)

What DeepBench times, and so what :func:`rnn_problem` builds: one layer, unidirectional, the
input width equal to the hidden size, and the *recurrent part only*: cuDNN runs with
``CUDNN_SKIP_INPUT`` (MIOpen ``miopenRNNskip``), and DeepBench's README says the W x_t product
"should not be included in the time for the recurrent layer".  So the suites' problems are
``skip_input=True``: the input projection is taken as given (see microbench.problems.RNNProblem),
and FLOPs count the recurrent GEMMs only.  A ``vanilla`` row is cuDNN's ``CUDNN_RNN_RELU``
(DeepBench's cudnn_helper.h maps "vanilla" to it): microbench's ``rnn`` op with a ReLU.
The training suite times forward + backward (DeepBench's training table times forward,
backward-data and backward-weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels.errors import BadInput

from ..problems import RNNProblem
from . import DEEPBENCH_COMMIT

COMMIT = DEEPBENCH_COMMIT
SOURCE = f"baidu-research/DeepBench code/kernels/rnn_problems.h (commit {COMMIT})"
CELLS = ("vanilla", "lstm", "gru")


@dataclass(frozen=True)
class RNNShape:
    """One table row.  ``hidden``, ``batch``, ``steps``: H, B, T; ``cell``: vanilla, lstm or gru."""

    hidden: int
    batch: int
    steps: int
    cell: str


# (hidden units, batch size, timesteps, cell), in the header's order.
_TRAIN = (
    (1760, 16, 50, "vanilla"), (1760, 32, 50, "vanilla"), (1760, 64, 50, "vanilla"),
    (1760, 128, 50, "vanilla"), (2048, 16, 50, "vanilla"), (2048, 32, 50, "vanilla"),
    (2048, 64, 50, "vanilla"), (2048, 128, 50, "vanilla"), (2560, 16, 50, "vanilla"),
    (2560, 32, 50, "vanilla"), (2560, 64, 50, "vanilla"), (2560, 128, 50, "vanilla"),
    (512, 16, 25, "lstm"), (512, 32, 25, "lstm"), (512, 64, 25, "lstm"), (512, 128, 25, "lstm"),
    (1024, 16, 25, "lstm"), (1024, 32, 25, "lstm"), (1024, 64, 25, "lstm"), (1024, 128, 25, "lstm"),
    (2048, 16, 25, "lstm"), (2048, 32, 25, "lstm"), (2048, 64, 25, "lstm"), (2048, 128, 25, "lstm"),
    (4096, 16, 25, "lstm"), (4096, 32, 25, "lstm"), (4096, 64, 25, "lstm"), (4096, 128, 25, "lstm"),
    (1536, 8, 50, "lstm"), (1536, 16, 50, "lstm"), (1536, 32, 50, "lstm"),
    (256, 16, 150, "lstm"), (256, 32, 150, "lstm"), (256, 64, 150, "lstm"),
    (2816, 32, 1500, "gru"), (2816, 32, 750, "gru"), (2816, 32, 375, "gru"), (2816, 32, 187, "gru"),
    (2048, 32, 1500, "gru"), (2048, 32, 750, "gru"), (2048, 32, 375, "gru"), (2048, 32, 187, "gru"),
    (1536, 32, 1500, "gru"), (1536, 32, 750, "gru"), (1536, 32, 375, "gru"), (1536, 32, 187, "gru"),
    (2560, 32, 1500, "gru"), (2560, 32, 750, "gru"), (2560, 32, 375, "gru"), (2560, 32, 187, "gru"),
    (512, 32, 1, "gru"), (1024, 32, 1500, "gru"), (1024, 64, 1500, "gru"),
)


def _gru_block(hidden: int, batches=(1, 2, 4), steps=(1500, 750, 375, 187)) -> tuple:
    return tuple((hidden, b, t, "gru") for b in batches for t in steps)


# The server table's GRU rows run every batch 1, 2, 4 over T = 1500, 750, 375, 187 for each
# hidden size, in this order; the blocks are written out by _gru_block (tests count the rows).
_INFERENCE_SERVER = (
    (512, 1, 25, "lstm"), (512, 2, 25, "lstm"), (512, 4, 25, "lstm"),
    (1024, 1, 25, "lstm"), (1024, 2, 25, "lstm"), (1024, 4, 25, "lstm"),
    (2048, 1, 25, "lstm"), (2048, 2, 25, "lstm"), (2048, 4, 25, "lstm"),
    (1536, 1, 50, "lstm"), (1536, 2, 50, "lstm"), (1536, 4, 50, "lstm"),
    (256, 1, 150, "lstm"), (256, 2, 150, "lstm"), (256, 4, 150, "lstm"),
    *_gru_block(2816), *_gru_block(2048), *_gru_block(1536), *_gru_block(2560),
    (512, 1, 1, "gru"), (512, 2, 1, "gru"), (512, 4, 1, "gru"),
    (1024, 1, 1500, "gru"), (1024, 2, 1500, "gru"), (1024, 4, 1500, "gru"),
)

_INFERENCE_DEVICE = (
    (32, 1, 672, "vanilla"), (64, 1, 96, "vanilla"), (256, 1, 150, "lstm"),
)

TABLES = {
    "deepbench-rnn-train": tuple(RNNShape(*r) for r in _TRAIN),
    "deepbench-rnn-inference": tuple(RNNShape(*r) for r in _INFERENCE_SERVER),
    "deepbench-rnn-device": tuple(RNNShape(*r) for r in _INFERENCE_DEVICE),
}
# Which header table each suite comes from (named in plans and reports).
HEADER_NAMES = {"deepbench-rnn-train": "training_set",
                "deepbench-rnn-inference": "inference_server_set",
                "deepbench-rnn-device": "inference_device_set"}


def shapes(table: str) -> tuple:
    """The rows of one table (``deepbench-rnn-train``, ``-inference`` or ``-device``)."""
    try:
        return TABLES[table]
    except KeyError:
        raise BadInput(f"RNN table {table!r} is unknown; allowed: {', '.join(TABLES)}") from None


# DeepBench's cell names -> microbench op and the vanilla cell's nonlinearity (cudnn_helper.h
# maps "vanilla" to CUDNN_RNN_RELU; MIOpen's bench to miopenRNNRELU).
OPS = {"vanilla": ("rnn", "relu"), "lstm": ("lstm", ""), "gru": ("gru", "")}


def rnn_problem(shape: RNNShape, batch: int | None = None, *, skip_input: bool = True) -> RNNProblem:
    """The RNNProblem DeepBench times for a row: I = H, one layer, the recurrent part only
    (``skip_input``; False: the whole layer, input GEMM included); ``batch`` overrides B."""
    if shape.cell not in OPS:
        raise BadInput(f"cell {shape.cell!r} is unknown; allowed: {', '.join(OPS)}")
    op, act = OPS[shape.cell]
    return RNNProblem(op, shape.steps, shape.batch if batch is None else batch,
                      shape.hidden, shape.hidden, 1, nonlinearity=act, skip_input=skip_input)
