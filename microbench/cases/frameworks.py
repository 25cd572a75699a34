"""Framework cases: each framework's fused and generic LSTM/GRU/vanilla RNN/conv2d paths, run in a
worker process.

One :class:`~microbench.registry.VariantRecord` per (op, framework, device, path), with
``variant`` = framework and ``backend`` = path, so rows read ``torch/fused``, ``jax/generic``.
The builder starts the framework's worker, sends our canonical weights and inputs (the same
``make_inputs`` every variant of ours gets), has it build and run the layer once, and returns a
Prepared whose ``check`` compares those outputs with the float64 reference and whose ``measure``
times the layer inside the worker.  A framework that is not installed, or a path that does not
exist (or does not compute our function), raises Unsupported: a SKIPPED row with the reason.

Three kinds of rows are made per run instead of registered: the layer-norm LSTM rows
(``--cell layernorm``: :data:`LAYERNORM_PATHS`, fed our LayerNormLSTMParams and checked against
its float64 reference), training-step rows (``--backward``: ``torch/fused+bwd``; the worker
also gets dY, returns y and every gradient, checked by :func:`.backward.check_grads`) and conv
backward phase rows (``conv --backward``: ``torch/fused+bwd_data``, ...; :func:`conv_backward_cases`,
checked against the float64 phase references; every adapter has them, and a geometry a
framework's gradient op refuses is a skipped row saying so).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fusion.cellexpr import LN_EPS
from kernels import dtypes
from kernels.errors import BadInput, Unsupported

from ..frameworks import (FRAMEWORKS, NOT_INSTALLABLE, NUMPY1, PATHS, default_python, describe,
                          precision_reason, skip_reason)
from ..problems import RNNProblem
from ..callsample import CallSampler
from ..registry import REGISTRY, Check, Prepared, VariantRecord, register
from ..stats import Measurement
from .custom import check_custom, make_custom_inputs
from .rnn import compare, make_inputs, reference_outputs


def parse_frameworks(text) -> list:
    """'all' or 'torch,jax' (or a list) -> names in canonical order; an unknown name raises BadInput."""
    names = text if isinstance(text, (list, tuple)) else [p.strip() for p in str(text or "").split(",")]
    names = [n for n in names if n]
    if not names:
        raise BadInput(f"--frameworks names no framework; allowed: {', '.join(FRAMEWORKS)}, all")
    if "all" in names:
        return list(FRAMEWORKS)
    for n in names:
        if n in NOT_INSTALLABLE:
            raise BadInput(f"--frameworks {n}: not supported: {NOT_INSTALLABLE[n]}")
        if n not in FRAMEWORKS:
            raise BadInput(f"--frameworks {n!r} is unknown; allowed: {', '.join(FRAMEWORKS)}, all")
    return [f for f in FRAMEWORKS if f in names]


# The layer-norm LSTM (``--cell layernorm``): no framework ships one, so each row is the cell
# written in the framework's own ops, as a researcher would (input GEMM and its layer norm over
# all T*B rows at once, then per step the recurrent GEMM, its layer norm and the pointwise
# work), loaded with our canonical parameters (kernels.custom.LayerNormLSTMParams).
# framework -> device -> path -> what it runs ("skip: " + reason where the adapter has none).
_NO_LN = ("skip: the {fw} adapter has no layer-norm LSTM (it runs the framework's built-in "
          "LSTM/GRU layers); layer-norm rows: torch, jax")
LAYERNORM_PATHS = {
    "torch": {dev: {"eager": "op-by-op layer-norm LSTM in PyTorch eager (F.layer_norm, a Python loop over steps)",
                    "compile": "the same cell step under torch.compile (Inductor), the step loop in Python"}
              for dev in ("cpu", "cuda")},
    "jax": {dev: {"scan": "layer-norm LSTM in jax.numpy, lax.scan over steps, under jax.jit"}
            for dev in ("cpu", "cuda")},
    "tensorflow": {dev: {"layernorm": _NO_LN.format(fw="tensorflow")} for dev in ("cpu", "cuda")},
    "mxnet": {dev: {"layernorm": _NO_LN.format(fw="mxnet")} for dev in ("cpu", "cuda")},
    "chainer": {dev: {"layernorm": _NO_LN.format(fw="chainer")} for dev in ("cpu", "cuda")},
}

# --backward: the frameworks whose adapter has a training step (forward + backward of
# sum(y * dY)); today every one.  A framework added to FRAMEWORKS without one gets skipped rows
# with this reason (a path an adapter cannot differentiate raises Unsupported itself).
TRAINING_FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet", "chainer")
_NO_TRAINING = "the {fw} adapter times the forward pass only; training-step rows: {have}"


def path_reason(framework: str, device: str, path: str, op: str, cell: str = "plain",
                backward: bool = False) -> str | None:
    """Why a framework row cannot run (the SKIPPED text), or None."""
    if cell == "layernorm":
        text = LAYERNORM_PATHS[framework][device][path]
        if text.startswith("skip: "):
            return text[len("skip: "):]
    else:
        reason = skip_reason(framework, device, path, op)
        if reason:
            return reason
    if backward and framework not in TRAINING_FRAMEWORKS:
        return _NO_TRAINING.format(fw=framework, have=", ".join(TRAINING_FRAMEWORKS))
    return None


def build_framework(problem: RNNProblem, seed: int, *, framework: str, path: str, device: str,
                    precision: str, plan=None, threads: int | None = None,
                    python: str | None = None, cell: str = "plain", backward: bool = False,
                    phase: str | None = None) -> Prepared:
    """``cell``: plain or layernorm (LSTM only); ``backward``: time a training step (forward and
    backward of sum(y * dY)) and check y and every gradient instead of the forward outputs;
    ``phase`` (conv only): one backward phase, bwd_data or bwd_weights, instead of the forward."""
    from ..frameworks.client import start as start_worker
    from ..frameworks.convert import pack_extras, pack_layers
    from . import backward as bwcases

    op = getattr(problem, "op", "conv")
    reason = path_reason(framework, device, path, op, cell, backward) if op != "conv" else \
        skip_reason(framework, device, path, op)
    reason = reason or precision_reason(framework, device, path, op, precision)
    if reason:
        raise Unsupported(reason)
    if op == "conv":
        return _build_conv(problem, seed, framework=framework, path=path, device=device,
                           precision=precision, threads=threads, python=python, phase=phase)
    if cell not in ("plain", "layernorm") or (cell == "layernorm" and op != "lstm"):
        raise BadInput(f"framework rows exist for plain LSTM/GRU/RNN and the layer-norm LSTM, not {cell} {op}")
    if backward:
        inp = bwcases.train_inputs(problem, seed, precision, cell)
    elif cell == "layernorm":
        inp = make_custom_inputs(problem, seed, precision, cell)
    else:
        inp = make_inputs(problem, seed, precision)
    arrays = {"x": inp["x"], "h0": inp["h0"],
              **pack_layers([layer.arrays() for layer in inp["params"].layers])}
    if inp["c0"] is not None:
        arrays["c0"] = inp["c0"]
    if cell == "layernorm":
        arrays.update(pack_extras(inp["params"].extras))
        arrays["ln_eps"] = np.float64(LN_EPS)
    if backward:
        arrays["dy"] = inp["dy"]          # its presence asks the adapter for a training step
    # the worker's op: the vanilla cell travels with its nonlinearity (rnn_relu, rnn_tanh)
    wop = "layernorm" if cell == "layernorm" else problem.cell_mode
    worker = start_worker(framework, python=python or default_python(framework), threads=threads, device=device)
    try:
        ans = worker.request({"cmd": "build", "op": wop, "path": path, "precision": precision,
                              "inputs": worker.save("inputs.npz", arrays),
                              "outputs": worker.path("outputs.npz")})
        outputs = worker.load("outputs.npz")
    except BaseException:
        worker.close()
        raise
    winfo = ans["info"]

    def against_reference(outputs):
        if backward:
            return bwcases.check_grads(outputs, problem, seed, precision, cell)
        if cell == "layernorm":
            return check_custom(outputs, problem, seed, precision, cell)
        return compare(outputs, reference_outputs(problem, seed, precision), precision)

    sampler = CallSampler()
    measure = _measure_in(worker, sampler)

    runs = LAYERNORM_PATHS[framework][device][path] if cell == "layernorm" else \
        describe(framework, device, path, problem.op)
    info = {"framework": framework, "path": path, "runs": runs, "cell": cell,
            "pass": "forward+backward" if backward else "forward",
            "compile_s": winfo.get("compile_s", winfo.get("first_call_s")),
            "worker": worker.env, **winfo}
    nbytes = problem.bytes(dtypes.storage(precision).itemsize)
    if backward:
        info.update(flops_rule=bwcases.FLOPS_NOTE,
                    loss="sum(y * dY), dY the same fixed random array our training rows get")
    check = _gated(against_reference, worker, outputs, sampler, info)
    return Prepared(inputs={}, run=lambda: worker.request({"cmd": "run"}),
                    flops=problem.flops() * (3 if backward else 1), bytes=nbytes * (2 if backward else 1),
                    check=check, info=info, measure=measure, close=worker.close)


def _gated(against_reference, worker, first_outputs, sampler, info: dict):
    """A framework row's check: the build call's outputs first; after timing the worker's latest
    call's (its last timed call), and then the calls the worker read at random while timing
    compared with those (microbench.callsample); ``info["calls_sampled"]`` says how many."""
    first = [first_outputs]

    def check():
        after = not first
        outputs = first.pop() if first else latest_outputs(worker)
        result = against_reference(outputs)
        if after and result.passed and sampler.kept:
            info["calls_sampled"] = sampler.kept
            bad = sampler.check(list(outputs), result.tol)
            if bad is not None:
                return Check(bad[1], result.tol, False, bad[0])
        return result
    return check


def _measure_in(worker, sampler=None):
    """Time a case inside its worker; the Measurement carries the mode and timer the worker really
    used (a framework row never replays a CUDA graph, and cold mode needs a flush it can run).
    ``sampler``: gathers the reads of random timed calls the worker sends back."""
    def measure(settings) -> Measurement:
        got = worker.request({"cmd": "measure", "settings": dataclasses.asdict(settings)},
                             timeout=settings.max_time * 2 + 120)
        if sampler is not None and got.get("sampled") is not None:
            sampler.merge(got["sampled"], got.get("calls", 0))
        return Measurement(got["samples"], settings.max_noise, mode=got.get("mode", ""),
                           timer=got.get("timer", ""), cpu_s=got.get("cpu_s") or [],
                           readings=got.get("readings"))
    return measure


def _build_conv(problem, seed, *, framework, path, device, precision, threads, python,
                phase=None) -> Prepared:
    from ..checks import compare as compare_conv
    from ..frameworks.client import start as start_worker
    from . import conditioning as cond
    from .conv import backward_reference, make_inputs as conv_inputs, reference_output, upstream_grad

    x, w, b = conv_inputs(problem, seed, precision)
    arrays = {"x": x, "w": w, **({"b": b} if b is not None else {})}
    if phase:       # the same dy our backward rows get
        arrays["dy"] = upstream_grad(problem, seed, precision)
    geometry = {"stride": list(problem.stride), "pad": list(problem.pad), "dilation": list(problem.dilation),
                "groups": problem.groups, "layout": problem.layout}
    request = {"cmd": "build", "op": "conv", "path": path, "precision": precision, "geometry": geometry}
    if phase:
        request["phase"] = phase
    worker = start_worker(framework, python=python or default_python(framework), threads=threads, device=device)
    try:
        ans = worker.request({**request, "inputs": worker.save("inputs.npz", arrays),
                              "outputs": worker.path("outputs.npz")})
        outputs = worker.load("outputs.npz")
    except BaseException:
        worker.close()
        raise
    winfo = ans["info"]

    sampler = CallSampler()
    measure = _measure_in(worker, sampler)

    info = {"framework": framework, "path": path, "runs": describe(framework, device, path, "conv"),
            "compile_s": winfo.get("compile_s", winfo.get("first_call_s")), "worker": worker.env, **winfo}
    names = (("dx",) if phase == "bwd_data" else ("dw", "db") if problem.bias else ("dw",)) if phase else ("y",)
    if phase:
        info.update({"pass": phase, "outputs": list(names),
                     "loss": "sum(y * dy), dy the same fixed array our backward rows get"})

    def against_reference(got):   # as for the RNN rows
        if phase:   # against the float64 phase reference, tolerances as for our backward rows
            ref, tols = backward_reference(problem, seed, precision, phase)
            return cond.compare_each(list(got), ref, tols, names)
        return compare_conv(got, [reference_output(problem, seed, precision)], precision, names=names)
    check = _gated(against_reference, worker, outputs, sampler, info)

    return Prepared(inputs={}, run=lambda: worker.request({"cmd": "run"}), flops=problem.flops,
                    bytes=problem.bytes(precision), check=check,
                    info=info, measure=measure, close=worker.close)


def latest_outputs(worker) -> list:
    """The outputs of the worker's latest call (after a measurement: its last timed call)."""
    worker.request({"cmd": "outputs", "outputs": worker.path("outputs.npz")})
    return worker.load("outputs.npz")


def records(op: str, device: str, names: list) -> list:
    """Registered framework records of an op on a device, frameworks in ``names`` order."""
    out = [r for r in FRAMEWORK_RECORDS if r.op == op and r.device == device]
    return sorted((r for r in out if r.framework in names), key=lambda r: names.index(r.framework))


def _variant_records(op: str, device: str, chosen: list, cell: str, backward: bool) -> list:
    """Records of the layer-norm rows and of training rows (path ``+bwd``), built per run: they
    are not in the registry, whose framework records are the plain forward rows."""
    suffix = "+bwd" if backward else ""
    out = []
    if cell == "layernorm":
        for fw in chosen:
            for path, text in LAYERNORM_PATHS[fw][device].items():
                out.append(VariantRecord(
                    op, fw, path + suffix,
                    functools.partial(build_framework, framework=fw, path=path, device=device,
                                      cell=cell, backward=backward),
                    text, framework=fw, device_name=device))
        return out
    for rec in records(op, device, chosen):
        out.append(dataclasses.replace(rec, backend=rec.backend + suffix, build=functools.partial(
            build_framework, framework=rec.framework, path=rec.backend, device=device, backward=True)))
    return out


def framework_cases(op: str, problem, names, device: str, precisions: list, seed: int = 0,
                    threads: list | None = None, python: dict | None = None, *,
                    cell: str = "plain", backward: bool = False) -> list:
    """Cases for every path of every named framework (``names``: 'all', 'torch,jax' or a list).

    ``threads``: thread counts to sweep (None: library defaults); ``python``: {framework:
    interpreter}.  For the ``conv`` command too; an op without framework records raises BadInput.
    ``cell="layernorm"`` (lstm): the layer-norm rows (:data:`LAYERNORM_PATHS`); ``backward``:
    training-step rows, labelled ``framework/path+bwd``.
    """
    from ..runner import Case
    chosen = parse_frameworks(names)
    if cell != "plain" or backward:
        if cell not in ("plain", "layernorm") or (cell == "layernorm" and op != "lstm"):
            raise BadInput(f"--frameworks with --cell {cell}: framework rows exist for the plain "
                           "and the layernorm LSTM")
        recs = _variant_records(op, device, chosen, cell, backward)
    else:
        recs = records(op, device, chosen)
    if not recs:
        have = sorted({r.op for r in FRAMEWORK_RECORDS})
        raise BadInput(f"--frameworks: no framework case for {op} on {device}; ops with framework "
                       f"cases: {', '.join(have)}")
    python = python or {}
    cases = []
    for n in threads or [None]:
        for p in precisions:
            for rec in recs:
                bound = dataclasses.replace(rec, build=functools.partial(
                    rec.build, threads=n, python=python.get(rec.framework)))
                cases.append(Case(bound, problem, p, seed, None, n))
    return cases


def conv_backward_cases(problem, names, device: str, precisions: list, seed: int = 0,
                        threads: list | None = None, python: dict | None = None) -> list:
    """Backward-data and backward-weights rows (``framework/path+bwd_data``, ...) of every conv
    path of the named frameworks, each checked against the float64 phase reference."""
    from kernels.conv.backward import PHASES

    from ..runner import Case
    chosen = parse_frameworks(names)
    python = python or {}
    cases = []
    for n in threads or [None]:
        for p in precisions:
            for rec in records("conv", device, chosen):
                for phase in PHASES:
                    bound = dataclasses.replace(rec, backend=f"{rec.backend}+{phase}", build=functools.partial(
                        build_framework, framework=rec.framework, path=rec.backend, device=device, phase=phase,
                        threads=n, python=python.get(rec.framework)))
                    cases.append(Case(bound, problem, p, seed, None, n))
    return cases


# Every framework record, also in the registry (where registry.ours() leaves them out of our
# variant flags and backends; --frameworks selects them through framework_cases).
FRAMEWORK_RECORDS: list = []


def _probe(framework: str, device: str, path: str, op: str):
    """Why a framework row cannot run here (for ``microbench variants``), or None: the adapter's
    skip, no GPU for a cuda row, or the framework importable neither here nor in its own venv."""
    def probe():
        import importlib.util
        reason = skip_reason(framework, device, path, op)
        if reason:
            return reason
        if device == "cuda":
            from kernels import gpu
            ok, why = gpu.detect()
            if not ok:
                return f"{framework} {path} on cuda needs a GPU: {why}"
        if default_python(framework) is None and importlib.util.find_spec(framework) is None:
            return f"{framework} is not importable here (install it, or give --python {framework}=PATH)"
        return None
    return probe


for _op in ("lstm", "gru", "rnn", "conv"):
    for _fw in FRAMEWORKS:
        for _dev, _paths in PATHS[_fw].items():
            for _path in _paths:
                _rec = VariantRecord(
                    _op, _fw, _path,
                    functools.partial(build_framework, framework=_fw, path=_path, device=_dev),
                    describe(_fw, _dev, _path, _op), framework=_fw, device_name=_dev,
                    code=f"microbench.frameworks.{_fw}_adapter:" + ("build_conv" if _op == "conv" else "build"),
                    probe=_probe(_fw, _dev, _path, _op))
                FRAMEWORK_RECORDS.append(_rec)
                register(_rec)
