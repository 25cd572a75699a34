"""cuDNN convolution backward (kernels.cudnn.conv: CudnnConvBackwardData, CudnnConvBackwardFilter)
without a GPU: every conv prototype and algorithm enum against the cuDNN 9 headers where they are
on this machine, the call sequence and argument order through a stand-in library that records
every call, and ``conv --backward --device cuda`` rows that skip with the reason."""
from __future__ import annotations

import ctypes
import json
import re
import sys
import types

import numpy as np
import pytest

from kernels.conv import ConvProblem
from kernels.cudnn import conv as C
from kernels.cudnn import errors as cerr
from kernels.errors import BadInput, Unsupported


# -- against the real headers (tests/cudnn_headers.py finds them) ---------------------------------
@pytest.fixture(scope="module")
def header_text():
    from tests import cudnn_headers
    return cudnn_headers.text_or_skip()


@pytest.mark.parametrize("table,prefix", [(C.FWD_ALGOS, "CUDNN_CONVOLUTION_FWD_ALGO_"),
                                          (C.BWD_DATA_ALGOS, "CUDNN_CONVOLUTION_BWD_DATA_ALGO_"),
                                          (C.BWD_FILTER_ALGOS, "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_")])
def test_algorithm_values_match_the_header(header_text, table, prefix):
    for algo, value in table.items():
        name = prefix + algo.upper().removeprefix("ALGO_")
        m = re.search(rf"\b{name}\s*=\s*(\d+)", header_text)
        assert m, f"{name} is not in the header"
        assert int(m.group(1)) == value, (name, int(m.group(1)), value)
    count = re.search(rf"\b{prefix}COUNT\s*=\s*(\d+)", header_text)
    cls = {"FWD": C.CudnnConv, "BWD_DATA": C.CudnnConvBackwardData,
           "BWD_FILTER": C.CudnnConvBackwardFilter}[prefix.split("CONVOLUTION_")[1][:-len("_ALGO_")]]
    assert count and int(count.group(1)) == cls.ALGO_COUNT
    assert cls.ALGOS is table


def _ctype_of(param: str):
    """The ctypes type our prototypes use for one C parameter declaration."""
    decl = re.sub(r"\bconst\b", "", param).strip()
    if "*" in decl:
        base = decl.split("*")[0].strip()
        if decl.count("*") == 1 and base == "int":
            return C.PI
        if decl.count("*") == 1 and base == "size_t":
            return C.PSZ
        if base.endswith("AlgoPerf_t"):
            return ctypes.POINTER(C._Perf)
        return C.P
    base = decl.rsplit(None, 1)[0] if len(decl.split()) > 1 else decl
    if base == "size_t":
        return ctypes.c_size_t
    if base.endswith("Descriptor_t") or base == "cudnnHandle_t":
        return C.P                                   # opaque struct pointers
    if base == "int" or base.endswith("_t"):          # int and the enums
        return C.I
    raise AssertionError(f"no ctypes rule for C parameter {param!r}")


def test_prototypes_match_the_header(header_text):
    """Argument count and kind, in order, of every function the conv bindings declare."""
    for name, argtypes in C.PROTOTYPES.items():
        m = re.search(rf"\b{name}\s*\(([^;]*?)\)\s*;", header_text)
        assert m, f"{name} is not declared in the headers"
        params = [p for p in (s.strip() for s in m.group(1).split(",")) if p and p != "void"]
        want = [_ctype_of(p) for p in params]
        assert len(want) == len(argtypes), (name, params)
        for i, (got, exp, p) in enumerate(zip(argtypes, want, params)):
            same = got is exp or (getattr(got, "_type_", None) is not None
                                   and getattr(got, "_type_", None) is getattr(exp, "_type_", None))
            assert same, f"{name} argument {i} ({p}): ours {got}, header {exp}"


def test_perf_struct_matches_the_header(header_text):
    fields = [f[0] for f in C._Perf._fields_]
    for typ, algo_t in (("Fwd", "Fwd"), ("BwdData", "BwdData"), ("BwdFilter", "BwdFilter")):
        m = re.search(r"typedef\s+struct\s+cudnnConvolution%sAlgoPerfStruct\s*\{(.*?)\}" % typ, header_text, re.S)
        assert m, f"cudnnConvolution{typ}AlgoPerf_t is not in the headers"
        names = re.findall(r"(\w+)\s*(?:\[\s*\d+\s*\])?\s*;", m.group(1))
        assert names == fields, (typ, names)
        assert f"cudnnConvolution{algo_t}Algo_t algo" in re.sub(r"\s+", " ", m.group(1))


# -- a stand-in library: the calls, their order and arguments ------------------------------------
class _Dev(np.ndarray):
    """A host array posing as a CuPy device array (``.data.ptr``, ``.get()``)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def get(self):
        return np.asarray(self)


def _fake_cupy():
    dev = lambda a: np.ascontiguousarray(a).view(_Dev)  # noqa: E731
    return types.SimpleNamespace(
        empty=lambda shape, dtype=np.float32: np.zeros(shape, dtype).view(_Dev),
        asarray=dev, ascontiguousarray=dev, uint8=np.uint8,
        cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0)))


def _val(a):
    """The value behind a ctypes argument (byref, c_void_p, int)."""
    a = getattr(a, "_obj", a)
    return getattr(a, "value", a)


class _RecordingCudnn:
    """Every call recorded as (name, args); descriptors get distinct handles; cuDNN's answers:
    the problem's output size, a 64-byte workspace, heuristic rows ``heur``, NOT_SUPPORTED for the
    algorithm ids in ``refuse``."""
    version = 90000

    def __init__(self, problem, heur=(), refuse=()):
        self.p, self.heur, self.refuse = problem, list(heur), set(refuse)
        self.calls, self.next, self.kind = [], 100, {}

    def fn(self, name, argtypes, restype=None):
        return lambda *a: 0

    def call(self, name, *args):
        self.calls.append((name, args))
        if name.startswith("cudnnCreate"):
            args[0]._obj.value = self.next
            self.kind[self.next] = [name[len("cudnnCreate"):]]
            self.next += 1
        elif name in ("cudnnSetTensor4dDescriptor", "cudnnSetFilter4dDescriptor"):
            self.kind[_val(args[0])].append(tuple(args[3:]))
        elif name == "cudnnGetConvolution2dForwardOutputDim":
            for a, v in zip(args[3:], (self.p.N, self.p.K, self.p.P, self.p.Q)):
                a._obj.value = v
        elif name.endswith("WorkspaceSize"):
            if args[5] in self.refuse:
                raise cerr.error_for(3000, name)
            args[6]._obj.value = 64
        elif name.endswith("Algorithm_v7"):
            perf = args[7]
            for i, (algo, status, math) in enumerate(self.heur):
                perf[i].algo, perf[i].status, perf[i].mathType = algo, status, math
            args[6]._obj.value = len(self.heur)

    def desc(self, v):
        """'handle', 'x', 'y', 'b', 'w' or 'conv' for a descriptor handle, from the dims it was set to."""
        k = self.kind[v]
        if k[0] == "":                      # cudnnCreate
            return "handle"
        if k[0] == "ConvolutionDescriptor":
            return "conv"
        if k[0] == "FilterDescriptor":
            return "w"
        p = self.p
        return {(p.N, p.C, p.H, p.W): "x", (p.N, p.K, p.P, p.Q): "y", (1, p.K, 1, 1): "b"}[k[1]]


@pytest.fixture
def gpu_stand_in(monkeypatch):
    """A GPU that is 'there': gpu.detect says yes, cupy is the host stand-in above."""
    import kernels.gpu
    monkeypatch.setattr(kernels.gpu, "detect", lambda *a, **k: (True, ""))
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())


P1 = ConvProblem(N=2, C=4, H=7, W=6, K=6, R=3, S=3, pad=1, stride=2)


def _roles(lib, args):
    """Each argument of a call as the test knows it: descriptor role, 'alpha=1.0', or the value."""
    out = []
    for a in args:
        v = _val(a)
        out.append(lib.desc(v) if isinstance(v, int) and v in lib.kind else v)
    return out


def test_backward_data_call_order_and_arguments(gpu_stand_in):
    lib = _RecordingCudnn(P1)
    with C.CudnnConvBackwardData(P1, algo="algo_1", lib=lib) as op:
        w = _fake_cupy().asarray(np.ones(P1.w_shape, np.float32))
        dy = _fake_cupy().asarray(np.ones(P1.y_shape, np.float32))
        dx = op(w, dy)
        assert dx.shape == P1.x_shape and op.algo == "algo_1" and op.workspace_bytes == 64
        ws = op.workspace.data.ptr
    names = [n for n, _ in lib.calls]
    # the workspace is sized for the algorithm (w, dy, conv, dx, algo), then the call runs
    size = next(a for n, a in lib.calls if n == "cudnnGetConvolutionBackwardDataWorkspaceSize")
    assert _roles(lib, size)[1:6] == ["w", "y", "conv", "x", 1]
    name, args = next((n, a) for n, a in lib.calls if n == "cudnnConvolutionBackwardData")
    assert names.index("cudnnGetConvolutionBackwardDataWorkspaceSize") < names.index(name)
    r = _roles(lib, args)
    # handle, alpha, w desc, w, dy desc, dy, conv desc, algo, workspace, size, beta, dx desc, dx
    assert r[0] == "handle" and r[1] == 1.0 and r[10] == 0.0
    assert (r[2], r[4], r[6], r[7], r[9], r[11]) == ("w", "y", "conv", 1, 64, "x")
    assert (r[3], r[5], r[8], r[12]) == (w.data.ptr, dy.data.ptr, ws, dx.data.ptr)
    assert "cudnnConvolutionForward" not in names


@pytest.mark.parametrize("layout,bias", [("NCHW", True), ("NHWC", False)])
def test_backward_filter_and_bias_call_order_and_arguments(gpu_stand_in, layout, bias):
    import dataclasses
    p = dataclasses.replace(P1, layout=layout, bias=bias)
    lib = _RecordingCudnn(p)
    with C.CudnnConvBackwardFilter(p, algo="fft_tiling", lib=lib) as op:
        cp = _fake_cupy()
        x, dy = cp.asarray(np.ones(p.x_shape, np.float32)), cp.asarray(np.ones(p.y_shape, np.float32))
        dw, db = op(x, dy)
        assert dw.shape == p.w_shape          # KCRS to the caller; cuDNN's KRSC buffer for NHWC
        assert op.dw.shape == (p.w_shape if layout == "NCHW" else (p.K, p.R, p.S, p.Cg))
        ws = op.workspace.data.ptr
        name, args = next((n, a) for n, a in lib.calls if n == "cudnnConvolutionBackwardFilter")
        r = _roles(lib, args)
        # handle, alpha, x desc, x, dy desc, dy, conv desc, algo, workspace, size, beta, dw desc, dw
        assert r[0] == "handle" and r[1] == 1.0 and r[10] == 0.0
        assert (r[2], r[4], r[6], r[7], r[9], r[11]) == ("x", "y", "conv", 6, 64, "w")
        assert (r[3], r[5], r[8], r[12]) == (x.data.ptr, dy.data.ptr, ws, op.dw.data.ptr)
        size = next(a for n, a in lib.calls if n == "cudnnGetConvolutionBackwardFilterWorkspaceSize")
        assert _roles(lib, size)[1:6] == ["x", "y", "conv", "w", 6]
        bias_calls = [a for n, a in lib.calls if n == "cudnnConvolutionBackwardBias"]
        if bias:
            # handle, alpha, dy desc, dy, beta, db desc, db
            (b,) = bias_calls
            rb = _roles(lib, b)
            assert (rb[1], rb[2], rb[3], rb[4], rb[5], rb[6]) == (1.0, "y", dy.data.ptr, 0.0, "b", db.data.ptr)
            assert db.shape == (p.K,)
        else:
            assert not bias_calls and db is None


def test_auto_takes_the_first_usable_heuristic_row(gpu_stand_in):
    """fp32 skips Tensor Core rows; the filter's unimplemented WINOGRAD (4) has no name and is
    passed over; the chosen row's math type goes on the convolution descriptor."""
    ok, bad = 0, 3000
    heur = [(4, ok, C.CUDNN_FMA_MATH), (0, ok, C.CUDNN_TENSOR_OP_MATH), (2, bad, C.CUDNN_FMA_MATH),
            (3, ok, C.CUDNN_FMA_MATH)]
    lib = _RecordingCudnn(P1, heur=heur)
    with C.CudnnConvBackwardFilter(P1, algo="auto", lib=lib) as op:
        assert op.algo == "algo_3" and op.math_type == C.CUDNN_FMA_MATH
    h = next(a for n, a in lib.calls if n == "cudnnGetConvolutionBackwardFilterAlgorithm_v7")
    assert _roles(lib, h)[1:6] == ["x", "y", "conv", "w", 7]      # requested: ALGO_COUNT
    lib = _RecordingCudnn(P1, heur=[(0, ok, C.CUDNN_TENSOR_OP_MATH), (5, ok, C.CUDNN_FMA_MATH)])
    with C.CudnnConvBackwardData(P1, algo="auto", lib=lib) as op:
        assert op.algo == "winograd_nonfused"
    h = next(a for n, a in lib.calls if n == "cudnnGetConvolutionBackwardDataAlgorithm_v7")
    assert _roles(lib, h)[1:6] == ["w", "y", "conv", "x", 6]
    with pytest.raises(Unsupported, match="heuristics offer no algorithm"):
        C.CudnnConvBackwardData(P1, lib=_RecordingCudnn(P1, heur=[(1, bad, C.CUDNN_FMA_MATH)]))


def test_refused_algorithm_is_a_skipped_row_with_cudnns_status(gpu_stand_in, monkeypatch):
    import kernels.cudnn.lib as L
    from microbench.cases.conv import backward_records
    monkeypatch.setattr(L, "load", lambda *a, **k: _RecordingCudnn(P1, refuse={2}))
    rec = {r.variant: r for r in backward_records(device="cuda")}
    for variant in ("cudnn_fft+bwd_data", "cudnn_fft+bwd_weights"):
        with pytest.raises(Unsupported, match=r"ALGO_FFT does not serve.*CUDNN_STATUS_NOT_SUPPORTED"):
            rec[variant].build(P1, 0, precision="fp32")


def test_request_checks():
    with pytest.raises(BadInput, match="allowed: auto, algo_0, algo_1, fft, algo_3"):
        C.check_request(P1, "fp32", "winograd", C.BWD_FILTER_ALGOS)
    assert C.check_request(P1, "fp32", "winograd", C.BWD_DATA_ALGOS) == "fp32"


# -- the rows ------------------------------------------------------------------------------------
def test_rows_per_phase_and_algorithm_skip_without_a_gpu(monkeypatch):
    import kernels.gpu
    from microbench.cases.conv import backward_records
    recs = backward_records(device="cuda")
    names = [r.variant for r in recs]
    assert names == (["cudnn+bwd_data"] + [f"cudnn_{a}+bwd_data" for a in C.BWD_DATA_ALGOS]
                     + ["cudnn+bwd_weights"] + [f"cudnn_{a}+bwd_weights" for a in C.BWD_FILTER_ALGOS])
    assert all(r.backend == "cupy" and r.device == "cuda" for r in recs)
    monkeypatch.setattr(kernels.gpu, "detect", lambda *a, **k: (False, "no CUDA driver"))
    for r in recs:
        with pytest.raises(Unsupported, match="need a GPU: no CUDA driver"):
            r.build(P1, 0, precision="fp32")


def test_conv_backward_on_cuda_lists_skipped_cudnn_rows(monkeypatch, tmp_path):
    """``conv --backward --device cuda`` where the device check passes but the GPU cannot be used:
    the legacy forward rows and every backward row, each skipped with the reason, none failed."""
    import kernels.gpu
    from microbench import cli
    from microbench import planner
    monkeypatch.setattr(planner, "resolve_device", lambda requested, op: "cuda")
    monkeypatch.setattr(kernels.gpu, "detect", lambda *a, **k: (False, "no CUDA driver"))
    out = tmp_path / "c.jsonl"
    assert cli.main(["conv", "--backward", "--device", "cuda", "-N", "1", "-C", "4", "-H", "9", "-W", "7",
                     "-K", "6", "--warmup", "0", "--min-time", "0", "--min-samples", "2", "--quiet",
                     "--json", str(out)]) == 0
    recs = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {"cudnn", "cudnn_implicit_gemm", "cudnn_algo_1+bwd_data", "cudnn+bwd_weights",
            "cudnn_fft_tiling+bwd_weights"} <= set(recs)
    assert "cudnn_frontend" not in recs and "im2col+bwd_data" not in recs
    for name, r in recs.items():
        assert r["status"] == "skipped" and "no CUDA driver" in r["error"], (name, r)
    assert cli.main(["conv", "--backward", "--device", "cuda", "--implicit_gemm", "--quiet"]) == 2



# -- on a GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_backward_row_matches_the_reference_on_a_gpu(layout, precision):
    """Each row's own check (float64 phase reference); an algorithm cuDNN refuses is skipped, but
    each phase must run at least its heuristic pick and one named algorithm."""
    import dataclasses

    from microbench.cases.conv import backward_records
    p = dataclasses.replace(ConvProblem(N=2, C=8, H=9, W=9, K=16, R=3, S=3, pad=1), layout=layout)
    ran = {"bwd_data": 0, "bwd_weights": 0}
    for rec in backward_records(device="cuda"):
        try:
            prep = rec.build(p, 0, precision=precision)
        except Unsupported:
            assert not rec.variant.startswith("cudnn+"), rec.variant     # auto must find one
            continue
        try:
            check = prep.check()
        except Unsupported:
            continue
        finally:
            prep.close()
        assert check.passed, (rec.variant, check.detail)
        ran[rec.variant.partition("+")[2]] += 1
    assert all(n >= 2 for n in ran.values()), ran
