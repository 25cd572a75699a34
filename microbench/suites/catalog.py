"""Named suites: each a list of case specs that ``python -m microbench suite NAME`` expands into cases.

A :class:`CaseSpec` says *what* to compute (an RNN shape or a conv layer) and *which* variants:
``ladder=True`` runs naive and each fusion rung (``lstm --ladder``), otherwise every variant the
registry has for the op (``lstm --all``).  The command expands a spec over the registry's
backends on the chosen device, the ``--dtype`` list and the ``--threads`` list, so the catalog
stays data and the registry stays the one place that knows the variants.

Suites:

    deepbench-rnn-train       DeepBench training_set          (rnn_shapes.py names the source)
    deepbench-rnn-inference   DeepBench inference_server_set
    deepbench-rnn-device      DeepBench inference_device_set
    resnet50-conv             every distinct ResNet-50 conv layer, batch 32 (conv_shapes.py)
    deepbench-conv-train      DeepBench conv training table
    deepbench-conv-inference  DeepBench conv inference (server) table
    deepbench-conv-device     DeepBench conv inference (device) table
    deepbench-train           deepbench-rnn-train and deepbench-conv-train together (also
    deepbench-inference       -inference, -device: DESIGN.md's "suite deepbench-inference")
    deepbench-device
    quick                     a two-minute CPU tour: small LSTM/GRU ladders, two small conv layers

Every DeepBench RNN row is timed the way DeepBench times it: the recurrent part only
(``skip_input``; cuDNN ``CUDNN_SKIP_INPUT``), the vanilla rows as ReLU RNNs (``CUDNN_RNN_RELU``),
and the training suite a training step.  Each record of a suite run carries the entry's trace
(:meth:`CaseSpec.trace`: suite, entry, source with its commit, table name and row index).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from kernels.errors import BadInput

from . import DEEPBENCH_COMMIT, conv_shapes, rnn_shapes


@dataclass(frozen=True)
class CaseSpec:
    """One entry of a suite.

    name     ``suite/row`` (``deepbench-rnn-train/012``, ``resnet50-conv/res2_3x3``)
    op       lstm, gru, rnn (the vanilla cell, with ``nonlinearity``) or conv
    T, B, H  RNN sizes (I = H, L = 1 unless ``I``/``L`` given); unused for conv
    layer    conv layer name for :func:`conv_shapes.conv_layer`; ``batch`` overrides its N
    ladder   run naive and each fusion rung instead of every variant
    threads  thread counts this entry sweeps unless the command line gives --threads
    skip_input  RNN: time the recurrent part only (DeepBench's definition, see RNNProblem)
    training    time a training step (forward + backward) instead of the forward pass
    table, row  where the entry comes from: the list's name in the source file
                (``training_set``) and the row's index in it; None for entries of our own
    """

    name: str
    op: str
    T: int = 0
    B: int = 0
    H: int = 0
    I: int | None = None
    L: int = 1
    layer: str = ""
    batch: int | None = None
    ladder: bool = False
    threads: tuple | None = None    # thread counts to sweep when --threads is not given
    nonlinearity: str = ""
    skip_input: bool = False
    training: bool = False
    table: str | None = None
    row: int | None = None

    @property
    def is_conv(self) -> bool:
        return self.op == "conv"

    def describe(self) -> str:
        train = " train" if self.training else ""
        if self.is_conv:
            n = "" if self.batch is None else f" N{self.batch}"
            return f"conv {self.layer}{n}{train}"
        extra = "" if self.I in (None, self.H) else f" I{self.I}"
        layers = "" if self.L == 1 else f" L{self.L}"
        act = f" {self.nonlinearity}" if self.nonlinearity else ""
        skip = " skip-input" if self.skip_input else ""
        return f"{self.op} H{self.H} B{self.B} T{self.T}{extra}{layers}{act}{skip}{train}"

    def trace(self, suite: "Suite") -> dict:
        """What a record of this entry carries to find its source row without matching shapes."""
        return {"suite": suite.name, "entry": self.name, "source": suite.source,
                "table": self.table, "row": self.row}


@dataclass(frozen=True)
class Suite:
    name: str
    about: str
    source: str
    specs: tuple
    # What a run of the suite times, in words (the suite list and docs/suites.md's table say it).
    times: str = "forward"
    # Timing used when the command line does not set it (quick trades precision for time).
    timing: dict = field(default_factory=dict)


def _deepbench_rnn(name: str, training: bool) -> Suite:
    specs = []
    for i, s in enumerate(rnn_shapes.shapes(name)):
        op, act = rnn_shapes.OPS[s.cell]
        specs.append(CaseSpec(f"{name}/{i:03d}", op, T=s.steps, B=s.batch, H=s.hidden, nonlinearity=act,
                              skip_input=True, training=training, table=rnn_shapes.HEADER_NAMES[name], row=i))
    vanilla = sum(s.op == "rnn" for s in specs)
    times = ("training step (forward + backward-data + backward-weights), recurrent part only "
             "(skip-input)" if training else "forward, recurrent part only (skip-input)")
    return Suite(name, f"DeepBench RNN {rnn_shapes.HEADER_NAMES[name]} ({len(specs)} rows, {vanilla} vanilla "
                       "ReLU)", rnn_shapes.SOURCE, tuple(specs), times=times)


def _conv(name: str, table: str, about: str, source: str, header: str | None = None,
          times: str = "forward", training: bool = False) -> Suite:
    specs = tuple(CaseSpec(f"{name}/{full.partition('/')[2]}", "conv", layer=full, table=header,
                           row=int(full.partition('/')[2]) if header else None, training=training)
                  for full in conv_shapes.list_layers(table))
    return Suite(name, f"{about} ({len(specs)} layers)", source, specs, times=times)


_DB_CONV = f"baidu-research/DeepBench code/kernels/conv_problems.h (commit {DEEPBENCH_COMMIT})"

# The quick tour: ladders small enough that Python overhead and fusion both show (one of them at
# 1 and 2 threads, for the thread-scaling plot), and two conv layers at batch 1-2.  About two
# minutes on a 2-core CPU with its timing.
_QUICK = (
    CaseSpec("quick/lstm-h128", "lstm", T=50, B=16, H=128, ladder=True),
    CaseSpec("quick/lstm-h256", "lstm", T=50, B=32, H=256, ladder=True, threads=(1, 2)),
    CaseSpec("quick/gru-h128", "gru", T=50, B=16, H=128, ladder=True),
    CaseSpec("quick/gru-h256", "gru", T=50, B=32, H=256, ladder=True),
    CaseSpec("quick/res2_3x3", "conv", layer="resnet50/res2_3x3", batch=1),
    CaseSpec("quick/res4_1x1a", "conv", layer="resnet50/res4_1x1a", batch=2),
)

_SUITES_RNN = {kind: _deepbench_rnn(f"deepbench-rnn-{kind}", kind == "train")
               for kind in ("train", "inference", "device")}
_SUITES_CONV = {
    "train": _conv("deepbench-conv-train", "deepbench-training", "DeepBench conv training_set", _DB_CONV,
                   "training_set", training=True,
                   times="forward + backward-data + backward-weights, each phase its own record "
                         "(backward: the im2col and direct variants, CPU)"),
    "inference": _conv("deepbench-conv-inference", "deepbench-inference-server",
                       "DeepBench conv inference_server_set", _DB_CONV, "inference_server_set"),
    "device": _conv("deepbench-conv-device", "deepbench-inference-device",
                    "DeepBench conv inference_device_set", _DB_CONV, "inference_device_set"),
}
_RESNET50 = _conv("resnet50-conv", "resnet50", "every distinct ResNet-50 conv layer, batch 32",
                  "He et al. 2016, torchvision layout (see conv_shapes.py)")
# 24 named layers, 23 distinct shapes (res2_proj and res2_1x1b coincide): say both
_RESNET50 = Suite(_RESNET50.name, _RESNET50.about.replace(
    f"({len(_RESNET50.specs)} layers)", f"({len(_RESNET50.specs)} layers, "
    f"{len({conv_shapes.conv_layer(s.layer) for s in _RESNET50.specs})} distinct shapes)"),
    _RESNET50.source, _RESNET50.specs)

SUITES = {s.name: s for s in (
    *_SUITES_RNN.values(),
    _RESNET50,
    *_SUITES_CONV.values(),
    *(Suite(f"deepbench-{kind}", f"DeepBench {kind}: the RNN and the conv {kind} tables together",
            f"baidu-research/DeepBench (commit {DEEPBENCH_COMMIT}; rnn_shapes.py, conv_shapes.py)",
            _SUITES_RNN[kind].specs + _SUITES_CONV[kind].specs,
            times=f"RNN rows: {_SUITES_RNN[kind].times}; conv rows: {_SUITES_CONV[kind].times}")
      for kind in ("train", "inference", "device")),
    Suite("quick", "a two-minute CPU tour: small LSTM/GRU ladders and two small conv layers",
          "microbench", _QUICK, timing={"warmup": 0.05, "min_time": 0.25, "max_time": 3.0,
                                        "min_samples": 5, "max_noise": 0.05}),
)}


def get(name: str) -> Suite:
    """The suite of that name; an unknown name raises BadInput with the close matches."""
    try:
        return SUITES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(SUITES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BadInput(f"suite {name!r} is unknown; {hint}allowed: {', '.join(SUITES)}") from None
