"""Data-parallel training steps on n ranks, for ``microbench scale``: ours and PyTorch DDP.

Each configuration is (implementation, weak|strong, n).  The ranks 0..n-1 of the torchrun group
form a process group; the others wait.  Every rank builds the *global* batch from the seed
(:func:`microbench.cases.backward.train_inputs` of the global problem: weights, x, h0, c0 and
the upstream gradient dY) and takes its slice ``[r*b, (r+1)*b)`` of the batch axis, so the n
ranks together hold exactly the concatenated batch, and every rank starts from the same weights.

The loss is ``sum(y * dY)`` over the rank's slice; gradients are averaged over the ranks, as DDP
does.  So n times a rank's averaged weight gradient is the gradient of the same loss over the
concatenated batch, and a rank's x, h0, c0 gradients are that slice of it: both are checked
against one single-process float64 step (:func:`microbench.cases.backward.reference_grads`:
kernels.backward in float64, itself checked against finite differences and torch autograd),
each array with its conditioning-aware tolerance; the verdict is the worst over all ranks.

ours   the fused forward and kernels.backward (NumPy on the CPU, CuPy on a GPU).  Gradients go
       into buckets in the order backward finishes them (last layer first), at most
       ``bucket_mb`` MiB each as DDP's ``bucket_cap_mb``; a bucket's all-reduce starts
       (``async_op``) as soon as its last gradient is in, so it overlaps the backward of the
       layers below.  What is left to wait for after backward is the *exposed* all-reduce.
ddp    ``nn.LSTM``/``nn.GRU`` loaded with the same weights under ``DistributedDataParallel``
       (same ``bucket_cap_mb``); its backward includes the all-reduce, so the exposed part is
       backward minus the same backward under ``no_sync()`` (no communication).

Phases per step, each an NVTX range (domain ``microbench``, so Nsight Systems shows the
overlap): ``forward``, ``backward``, ``allreduce`` (ours: from a bucket's launch to its
completion) and ``exposed`` (waiting for the all-reduce after backward).  Per phase the median over
the timed steps of the slowest rank's time; ``allreduce`` alone is the same buckets reduced with
no compute around them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from kernels.errors import BadInput

IMPLS = ("ours", "ddp")
MODES = ("weak", "strong")


@dataclass(frozen=True)
class Config:
    impl: str
    mode: str
    n: int              # ranks
    batch: int          # per rank
    cell: str           # lstm | gru

    @property
    def global_batch(self) -> int:
        return self.batch * self.n


@dataclass
class Result:
    config: Config
    status: str = "ok"                 # ok | failed | skipped
    error: str = ""
    check: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)    # name -> {"median_s", "q1_s", "q3_s"}
    samples: dict = field(default_factory=dict)   # name -> [seconds per step, slowest rank]
    switches: dict = field(default_factory=dict)  # torch's TF32 switches as the DDP row ran


# -- NVTX ------------------------------------------------------------------------------------------

def _phase(name: str):
    from kernels import nvtx
    return nvtx.phase(name)


class _AsyncRange:
    """An NVTX start/end range (not push/pop: it opens in one place and closes in another)."""

    def __init__(self, name: str):
        self.handle = None
        from kernels import nvtx as pnvtx
        if pnvtx.level() != "on":
            return
        with contextlib.suppress(Exception):
            import nvtx
            self.handle = nvtx.start_range(message=name, domain=pnvtx.DOMAIN)

    def end(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(Exception):
                import nvtx
                nvtx.end_range(self.handle)
            self.handle = None


# -- inputs and the reference ----------------------------------------------------------------------

def global_problem(cell: str, T: int, I: int, H: int, L: int, batch: int):
    from .problems import RNNProblem
    return RNNProblem(cell, T, batch, I, H, L)


def conv_problem(geometry: dict, batch: int):
    """A ConvProblem of the given geometry (everything but N) at this global batch."""
    from kernels.conv import ConvProblem
    return ConvProblem(N=batch, **geometry)


def conv_inputs(problem, seed: int, precision: str) -> dict:
    """x, w, b of the global problem from the seed; dY standard normal from its own stream."""
    from kernels import dtypes
    x, w, b = problem.random_inputs(np.random.default_rng(seed), precision)
    dy = np.random.default_rng([seed, 2]).standard_normal(problem.y_shape).astype(dtypes.storage(precision))
    return {"x": x, "w": w, "b": b, "dy": dy}


def rank_inputs(problem, seed: int, precision: str, rank: int, b: int) -> dict:
    """This rank's slice of the global batch, and the weights (the same on every rank)."""
    from .cases.backward import train_inputs
    sl = slice(rank * b, (rank + 1) * b)
    if problem.op == "conv":
        inp = conv_inputs(problem, seed, precision)
        return {**inp, "x": np.ascontiguousarray(inp["x"][sl]), "dy": np.ascontiguousarray(inp["dy"][sl])}
    inp = train_inputs(problem, seed, precision, "plain")
    out = {"params": inp["params"], "x": np.ascontiguousarray(inp["x"][:, sl]),
           "h0": np.ascontiguousarray(inp["h0"][:, sl]), "dy": np.ascontiguousarray(inp["dy"][:, sl])}
    out["c0"] = np.ascontiguousarray(inp["c0"][:, sl]) if inp.get("c0") is not None else None
    return out


def check_outputs(outputs: list, problem, seed: int, precision: str, rank: int, b: int, n: int):
    """A rank's [y, dx, dh0, (dc0), weight grads averaged over n] against the float64 step."""
    from .cases import conditioning as cond
    from .cases.backward import reference_grads
    sl = slice(rank * b, (rank + 1) * b)
    if problem.op == "conv":
        names, ref, tols = conv_reference(problem, seed, precision)
        n_batch = 2                                       # y, dx carry the batch (axis 0)
        refs = [r[sl] if i < n_batch else r for i, r in enumerate(ref)]
    else:
        names, ref, tols = reference_grads(problem, seed, precision, "plain")
        n_batch = 4 if problem.op == "lstm" else 3       # y, dx, dh0 (, dc0) carry the batch (axis 1)
        refs = [r[:, sl] if i < n_batch else r for i, r in enumerate(ref)]
    got = [np.asarray(o, dtype=np.float64) * (n if i >= n_batch else 1) for i, o in enumerate(outputs)]
    return cond.compare_each(got, refs, tols, names)


def _torch_conv_step(problem, x, w, b, dy) -> list:
    """y, dx, dw, db of sum(y * dy) by torch autograd in float64 (NCHW or NHWC arrays)."""
    import torch
    import torch.nn.functional as F
    nhwc = problem.layout == "NHWC"
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    xt = t(x.transpose(0, 3, 1, 2) if nhwc else x).requires_grad_(True)
    wt = t(w).requires_grad_(True)
    bt = t(b).requires_grad_(True) if b is not None else None
    y = F.conv2d(xt, wt, bt, stride=problem.stride, padding=problem.pad, dilation=problem.dilation,
                 groups=problem.groups)
    dyt = t(dy.transpose(0, 3, 1, 2) if nhwc else dy)
    (y * dyt).sum().backward()
    back = (lambda a: a.permute(0, 2, 3, 1)) if nhwc else (lambda a: a)
    out = [back(y.detach()).numpy(), back(xt.grad).numpy(), wt.grad.numpy()]
    return out + ([bt.grad.numpy()] if bt is not None else [])


_CONV_REF: dict = {}


def conv_reference(problem, seed: int, precision: str) -> tuple:
    """(names, float64 y and gradients on the whole batch by torch autograd, tolerances): each
    tolerance follows the measured conditioning, as the RNN training checks do."""
    from .cases import conditioning as cond
    key = (problem, seed, precision)
    if key not in _CONV_REF:
        inp = conv_inputs(problem, seed, precision)
        base = _torch_conv_step(problem, inp["x"], inp["w"], inp["b"], inp["dy"])
        u, rng = cond.unit_roundoff(precision), np.random.default_rng([seed, 3])
        moved = _torch_conv_step(problem, cond.perturb(inp["x"], rng, u), cond.perturb(inp["w"], rng, u),
                                 cond.perturb(inp["b"], rng, u), inp["dy"])
        names = ["y", "dx", "dw"] + (["db"] if problem.bias else [])
        _CONV_REF.clear()
        _CONV_REF[key] = (names, base, cond.tolerances(base, moved, precision))
    return _CONV_REF[key]


# -- buckets ---------------------------------------------------------------------------------------

class Buckets:
    """Flat gradient buffers filled in the order backward produces the gradients, each reduced
    (async, averaged) as soon as it is complete; DDP's bucketing, for our NumPy/CuPy gradients."""

    NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")

    def __init__(self, params, cap_bytes: int, group, n: int, xp, dtype, torch_device):
        """``params``: RNN parameters (gradients per layer, last layer first) or a list of
        ``(name, shape)`` in the order backward finishes them (a convolution: w, b)."""
        import torch
        items = []                                   # (layer, name, shape), in backward's order
        if isinstance(params, list):
            items = [(0, name, tuple(shape)) for name, shape in params]
        else:
            for l in reversed(range(params.num_layers)):
                for name, a in zip(self.NAMES, params.layers[l].arrays()):
                    items.append((l, name, tuple(a.shape)))
        self.names = {}
        for l, name, _ in items:
            self.names.setdefault(l, []).append(name)
        self.buckets, cur, size = [], [], 0
        item = np.dtype(dtype).itemsize
        for it in items:
            nbytes = int(np.prod(it[2])) * item
            if cur and size + nbytes > cap_bytes:
                self.buckets.append(cur)
                cur, size = [], 0
            cur.append(it)
            size += nbytes
        if cur:
            self.buckets.append(cur)
        self.xp, self.n, self.group = xp, n, group
        self.flat, self.tensors, self.where = [], [], {}
        for k, bucket in enumerate(self.buckets):
            total = sum(int(np.prod(s)) for _, _, s in bucket)
            flat = xp.empty(total, dtype=dtype)
            off = 0
            for l, name, shape in bucket:
                cnt = int(np.prod(shape))
                self.where[(l, name)] = (k, off, cnt, shape)
                off += cnt
            self.flat.append(flat)
            self.tensors.append(torch.from_numpy(flat) if xp is np else torch.as_tensor(flat, device=torch_device))
        self.need = [len(b) for b in self.buckets]
        self.reset()

    @property
    def nbytes(self) -> int:
        return sum(int(f.nbytes) for f in self.flat)

    def reset(self) -> None:
        self.left = list(self.need)
        self.works, self.ranges = [], []

    def add(self, layer: int, grads: dict) -> None:
        """Backward's on_layer hook: copy the layer's gradients in; launch every bucket completed."""
        for name in self.names[layer]:
            k, off, cnt, _ = self.where[(layer, name)]
            self.flat[k][off:off + cnt] = grads[name].reshape(-1)
            self.left[k] -= 1
            if self.left[k] == 0:
                self._launch(k)

    def _launch(self, k: int) -> None:
        import torch.distributed as dist
        if self.xp is not np:      # CuPy's stream must have written the bucket before NCCL reads it
            self.xp.cuda.get_current_stream().synchronize()
        self.ranges.append(_AsyncRange("allreduce"))
        self.works.append(dist.all_reduce(self.tensors[k], group=self.group, async_op=True))

    def _wait_launched(self) -> None:
        """Wait for every launched all-reduce; NCCL's wait() only orders torch's stream, so the
        host then waits for the device too."""
        for w, r in zip(self.works, self.ranges):
            w.wait()
            r.end()
        if self.xp is not np:
            import torch
            torch.cuda.synchronize()

    def wait(self) -> None:
        """Wait for every launched all-reduce, then average (divide by n)."""
        self._wait_launched()
        for f in self.flat:
            f *= 1.0 / self.n
        self.reset()

    def reduce_only(self) -> None:
        """The all-reduce alone: every bucket launched back to back, no compute around it."""
        for k in range(len(self.buckets)):
            self._launch(k)
        self._wait_launched()
        self.reset()

    def layer_grads(self, layer: int) -> dict:
        out = {}
        for name in self.names[layer]:
            k, off, cnt, shape = self.where[(layer, name)]
            out[name] = self.flat[k][off:off + cnt].reshape(shape)
        return out


# -- the two implementations -----------------------------------------------------------------------

def _array_module(g):
    """NumPy on a CPU rank, CuPy on a GPU rank."""
    if g.device == "cuda":
        import cupy
        return cupy
    return np


def _torch_dtype(torch, precision: str):
    return {"fp32": torch.float32, "fp64": torch.float64}[precision]


class OursStep:
    """Fused forward + kernels.backward; gradients all-reduced in buckets during backward."""

    def __init__(self, g, group, cfg: Config, problem, inp: dict, precision: str, bucket_mb: float):
        xp = self._setup(g, precision)
        # The weights go to the device once: kernels.backward converts them with xp.asarray in
        # every forward and backward, which for NumPy weights on a GPU rank is a blocking
        # host-to-device copy inside each timed step (DDP's weights live on the device).
        self.params = on_device(inp["params"], xp, self.dt)
        self.x, self.h0, self.dy = (xp.asarray(inp[k], dtype=self.dt) for k in ("x", "h0", "dy"))
        self.c0 = xp.asarray(inp["c0"], dtype=self.dt) if inp["c0"] is not None else None
        self.op = cfg.cell
        self.buckets = Buckets(self.params, int(bucket_mb * 2 ** 20), group, cfg.n, xp, self.dt, g.torch_device())

    def _setup(self, g, precision: str):
        """The array module, storage dtype and device sync of this rank; returns the module."""
        from kernels import dtypes
        xp = self.xp = _array_module(g)
        self.dt = dtypes.storage(precision)
        self.sync = (lambda: xp.cuda.get_current_stream().synchronize()) if xp is not np else (lambda: None)
        return xp

    def _forward(self) -> tuple:
        """(y, tape)."""
        from kernels import backward as bw
        y, _, tape = bw.forward_train(self.x, self.params, self.h0, self.c0, xp=self.xp, dtype=self.dt)
        return y, tape

    def _backward(self, tape):
        from kernels import backward as bw
        return bw.backward(tape, self.dy, xp=self.xp, on_layer=self.buckets.add)

    def step(self) -> tuple:
        """(outputs for the check, {phase: seconds})."""
        t0 = time.perf_counter()
        with _phase("forward"):
            y, tape = self._forward()
            self.sync()
        t1 = time.perf_counter()
        with _phase("backward"):
            g = self._backward(tape)
            self.sync()
        t2 = time.perf_counter()
        with _phase("exposed"):
            self.buckets.wait()
        t3 = time.perf_counter()
        return (y, g), {"forward": t1 - t0, "backward": t2 - t1, "exposed": t3 - t2, "step": t3 - t0}

    def outputs(self, result) -> list:
        from .cases.backward import flatten_grads
        y, g = result
        g.layers = [dict(self.buckets.layer_grads(l)) for l in range(len(g.layers))]
        return [self._host(a) for a in flatten_grads(self.op, y, g)]

    def _host(self, a):
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def allreduce_alone(self) -> float:
        t0 = time.perf_counter()
        with _phase("allreduce_alone"):
            self.buckets.reduce_only()
        return time.perf_counter() - t0


def on_device(params, xp, dtype):
    """The RNN parameters with every array in ``xp`` (CuPy on a GPU rank) and ``dtype``, copied once."""
    if xp is np:
        return params
    import dataclasses

    from kernels.params import Layer
    return dataclasses.replace(params, layers=tuple(
        Layer(*(xp.asarray(a, dtype=dtype) for a in layer.arrays())) for layer in params.layers))


def _torch_precision(torch, precision: str) -> dict:
    """The TF32 switches for the row's label, set where the framework adapter sets them: torch
    allows TF32 in cuDNN by default, which would run an fp32 DDP row as TF32 (~1e-3 error)."""
    from .frameworks.torch_adapter import set_precision
    return set_precision(torch, precision)


class DDPStep:
    """nn.LSTM / nn.GRU with the same weights under DistributedDataParallel."""

    def __init__(self, g, group, cfg: Config, problem, inp: dict, precision: str, bucket_mb: float):
        import torch

        from kernels.torch import load_canonical
        self.switches = _torch_precision(torch, precision)
        dt, dev = _torch_dtype(torch, precision), g.torch_device()
        mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cfg.cell]
        p = inp["params"]
        model = mod(p.input_size, p.hidden_size, p.num_layers).to(dtype=dt)
        load_canonical(model, p)
        self._wrap(g, group, model.to(dev), bucket_mb)
        self.L, self.op = p.num_layers, cfg.cell
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dt, device=dev)  # noqa: E731
        self.x, self.h0, self.dy = t(inp["x"]), t(inp["h0"]), t(inp["dy"])
        self.c0 = t(inp["c0"]) if inp["c0"] is not None else None

    def _wrap(self, g, group, module, bucket_mb: float) -> None:
        """The module under DDP (same bucket cap as ours), and the device sync."""
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP
        kw = {"device_ids": [g.device_index]} if g.device == "cuda" else {}
        self.model = DDP(module, process_group=group, bucket_cap_mb=bucket_mb, **kw)
        self.torch = torch
        self.sync = torch.cuda.synchronize if g.device == "cuda" else (lambda: None)
        self.no_sync = False

    def _inputs(self) -> tuple:
        """(the model's arguments, what the outputs need of them): fresh leaves every step."""
        leaves = [a.detach().requires_grad_(True) for a in (self.x, self.h0, self.c0) if a is not None]
        state = (leaves[1], leaves[2]) if self.c0 is not None else leaves[1]
        return (leaves[0], state), leaves

    def _y(self, out):
        return out[0]                    # nn.LSTM / nn.GRU: (y, states)

    def step(self) -> tuple:
        self.model.zero_grad(set_to_none=True)
        args, keep = self._inputs()
        ctx = self.model.no_sync() if self.no_sync else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            with _phase("forward"):
                y = self._y(self.model(*args))
                loss = (y * self.dy).sum()
                self.sync()
            t1 = time.perf_counter()
            with _phase("backward"):
                loss.backward()          # DDP all-reduces its buckets here and waits for them
                self.sync()
        t2 = time.perf_counter()
        return (y, keep), {"forward": t1 - t0, "backward": t2 - t1, "step": t2 - t0}

    def outputs(self, result) -> list:
        y, leaves = result
        m = self.model.module
        out = [y.detach()] + [a.grad for a in leaves]
        for l in range(self.L):
            out += [getattr(m, f"{w}_l{l}").grad for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return [o.detach().cpu().numpy() for o in out]


class OursConvStep(OursStep):
    """im2col forward and backward (kernels.conv.train); dW and db all-reduced while dX is computed."""

    def __init__(self, g, group, cfg: Config, problem, inp: dict, precision: str, bucket_mb: float):
        xp = self._setup(g, precision)
        self.problem = _rank_conv(problem, cfg.batch)
        self.x, self.w, self.dy = (xp.asarray(inp[k], dtype=self.dt) for k in ("x", "w", "dy"))
        self.b = xp.asarray(inp["b"], dtype=self.dt) if inp["b"] is not None else None
        items = [("w", self.w.shape)] + ([("b", self.b.shape)] if self.b is not None else [])
        self.buckets = Buckets(items, int(bucket_mb * 2 ** 20), group, cfg.n, xp, self.dt, g.torch_device())

    def _forward(self) -> tuple:
        from kernels.conv import train as cbw
        return cbw.forward_train(self.x, self.w, self.b, self.problem, xp=self.xp)

    def _backward(self, tape):
        from kernels.conv import train as cbw
        return cbw.backward(tape, self.dy, xp=self.xp, on_params=lambda gr: self.buckets.add(0, gr))

    def outputs(self, result) -> list:
        y, g = result
        avg = self.buckets.layer_grads(0)
        out = [y, g["x"], avg["w"]] + ([avg["b"]] if self.b is not None else [])
        return [self._host(a) for a in out]


class DDPConvStep(DDPStep):
    """nn.Conv2d with the same weights under DistributedDataParallel."""

    def __init__(self, g, group, cfg: Config, problem, inp: dict, precision: str, bucket_mb: float):
        import torch
        self.switches = _torch_precision(torch, precision)
        dt, dev = _torch_dtype(torch, precision), g.torch_device()
        p = problem
        conv = torch.nn.Conv2d(p.C, p.K, (p.R, p.S), stride=p.stride, padding=p.pad, dilation=p.dilation,
                               groups=p.groups, bias=p.bias).to(dtype=dt)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.asarray(inp["w"])))
            if p.bias:
                conv.bias.copy_(torch.from_numpy(np.asarray(inp["b"])))
        conv = conv.to(dev)
        if p.layout == "NHWC":
            conv = conv.to(memory_format=torch.channels_last)
        self._wrap(g, group, conv, bucket_mb)
        self.nhwc, self.bias = p.layout == "NHWC", p.bias
        perm = (lambda a: a.permute(0, 3, 1, 2)) if self.nhwc else (lambda a: a)
        self.x = perm(torch.as_tensor(np.asarray(inp["x"]), dtype=dt, device=dev))
        self.dy = perm(torch.as_tensor(np.asarray(inp["dy"]), dtype=dt, device=dev))

    def _inputs(self) -> tuple:
        x = self.x.detach().requires_grad_(True)
        return (x,), x

    def _y(self, out):
        return out

    def outputs(self, result) -> list:
        y, x = result
        m = self.model.module
        back = (lambda a: a.permute(0, 2, 3, 1)) if self.nhwc else (lambda a: a)
        out = [back(y.detach()), back(x.grad), m.weight.grad] + ([m.bias.grad] if self.bias else [])
        return [o.detach().cpu().contiguous().numpy() for o in out]


def _rank_conv(problem, batch: int):
    import dataclasses
    return dataclasses.replace(problem, N=batch)


STEPS = {"ours": OursStep, "ddp": DDPStep}
CONV_STEPS = {"ours": OursConvStep, "ddp": DDPConvStep}


# -- running one configuration ---------------------------------------------------------------------

def _slowest(g, group, rows: list, keys: list) -> dict:
    """Per step the slowest rank's time of each phase: {phase: [seconds per step]}."""
    import torch
    import torch.distributed as dist
    t = torch.tensor([[r.get(k, 0.0) for k in keys] for r in rows], dtype=torch.float64,
                     device=g.torch_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    arr = t.cpu().numpy()
    return {k: arr[:, i].tolist() for i, k in enumerate(keys)}


def _q(samples) -> dict:
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3)}


def run_config(g, group, cfg: Config, *, make_problem, seed, precision, steps, warmup, bucket_mb) -> Result:
    """Check, then time one configuration on ranks 0..n-1 (only they call this);
    ``make_problem(global_batch)`` gives the whole batch's problem."""
    import torch
    import torch.distributed as dist

    from . import distributed as mdist
    res = Result(cfg)
    problem = make_problem(cfg.global_batch)
    inp = rank_inputs(problem, seed, precision, g.rank, cfg.batch)
    with mdist.failures(g, f"{cfg.impl} {cfg.mode} n={cfg.n}"):
        impl = (CONV_STEPS if cfg.cell == "conv" else STEPS)[cfg.impl](g, group, cfg, problem, inp, precision,
                                                                        bucket_mb)
        res.switches = dict(getattr(impl, "switches", {}))
        result, _ = impl.step()
        chk = check_outputs(impl.outputs(result), problem, seed, precision, g.rank, cfg.batch, cfg.n)
        err = chk.max_rel_err if np.isfinite(chk.max_rel_err) else 1e300
        tol = chk.tol if np.isfinite(chk.tol) else 0.0
        verdict = torch.tensor([0.0 if chk.passed else 1.0, err, tol], dtype=torch.float64, device=g.torch_device())
        dist.all_reduce(verdict, op=dist.ReduceOp.MAX, group=group)
        # the largest tolerance of any rank's outputs: a passed worst error is within it
        passed, worst, tol = float(verdict[0]) == 0.0, float(verdict[1]), float(verdict[2])
        res.check = {"passed": passed, "max_rel_err": worst, "tol": tol, "detail": chk.detail if not chk.passed else
                     ("" if passed else "another rank's gradients differ from the float64 step")}
        if not passed:
            res.status, res.error = "failed", res.check["detail"] or f"gradients off by {worst:.2e}"
            return res
        for _ in range(max(0, warmup)):
            impl.step()
        mdist.check_fault(g, "step")
        rows = []
        for _ in range(steps):
            dist.barrier(group=group)
            rows.append(impl.step()[1])
        keys = list(rows[0])
        if cfg.impl == "ddp":                   # backward without communication: what is exposed
            impl.no_sync = True
            for _ in range(max(1, warmup)):
                impl.step()
            local = []
            for _ in range(steps):
                dist.barrier(group=group)
                local.append(impl.step()[1]["backward"])
            impl.no_sync = False
            for r, b in zip(rows, local):
                r["backward_local"] = b
            keys.append("backward_local")
        alone = []
        for _ in range(steps):
            dist.barrier(group=group)
            alone.append(_allreduce_alone(impl, group, cfg))
        for r, a in zip(rows, alone):
            r["allreduce"] = a
        keys.append("allreduce")
        res.samples = _slowest(g, group, rows, keys)
    res.phases = {k: _q(v) for k, v in res.samples.items()}
    if cfg.impl == "ddp":
        exp = max(0.0, res.phases["backward"]["median_s"] - res.phases["backward_local"]["median_s"])
        res.phases["exposed"] = {"median_s": exp, "q1_s": exp, "q3_s": exp}
    return res


def _allreduce_alone(impl, group, cfg) -> float:
    if isinstance(impl, OursStep):   # ours, RNN or conv
        return impl.allreduce_alone()
    # DDP: its gradient bytes in one flat all-reduce per bucket cap, as ours (same sizes, same order)
    import torch
    import torch.distributed as dist
    params = [p for p in impl.model.parameters()]
    if not hasattr(impl, "_flat"):
        cap = int(impl.model.bucket_bytes_cap) if hasattr(impl.model, "bucket_bytes_cap") else 25 * 2 ** 20
        impl._flat, cur, size = [], 0, 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if cur and size + nbytes > cap:
                impl._flat.append(torch.zeros(cur, dtype=p.dtype, device=p.device))
                cur, size = 0, 0
            cur += p.numel()
            size += nbytes
        if cur:
            impl._flat.append(torch.zeros(cur, dtype=params[0].dtype, device=params[0].device))
    t0 = time.perf_counter()
    with _phase("allreduce_alone"):
        works = [dist.all_reduce(f, group=group, async_op=True) for f in impl._flat]
        for w in works:
            w.wait()
        impl.sync()
    return time.perf_counter() - t0


def plan(world: int, ranks: list | None, modes: list, impls: list, cell: str, batch: int) -> list:
    """The configurations, or (config, reason) for those that cannot run (strong scaling needs B
    divisible by n)."""
    if batch < 1:
        raise BadInput(f"-B {batch} must be at least 1")
    sizes = ranks if ranks else sorted({n for n in (2 ** k for k in range(world.bit_length())) if n <= world} | {world})
    for n in sizes:
        if not 1 <= n <= world:
            raise BadInput(f"--ranks {n}: this group has {world} rank(s); allowed: 1..{world}")
    out = []
    for impl in impls:
        for mode in modes:
            for n in sizes:
                if mode == "strong":
                    if batch % n:
                        out.append((Config(impl, mode, n, max(1, batch // n), cell),
                                    f"strong scaling splits B={batch} over {n} ranks: not divisible"))
                        continue
                    out.append((Config(impl, mode, n, batch // n, cell), None))
                else:
                    out.append((Config(impl, mode, n, batch, cell), None))
    return out


def efficiency(results: list) -> dict:
    """Scaling efficiency per configuration against the same implementation and mode at n=1:
    weak t1/tn (the same work per rank should take the same time), strong t1/(n tn)."""
    base = {(r.config.impl, r.config.mode): r.phases["step"]["median_s"]
            for r in results if r.status == "ok" and r.config.n == 1}
    out = {}
    for r in results:
        b = base.get((r.config.impl, r.config.mode))
        if r.status != "ok" or not b:
            continue
        t = r.phases["step"]["median_s"]
        out[r.config] = b / t if r.config.mode == "weak" else b / (r.config.n * t)
    return out
