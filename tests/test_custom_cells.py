"""fusion.cellexpr and kernels.custom: generated kernels against the hand-written ones and the
float64 references, awkward sizes; generated CUDA C through nvcc (and NVRTC); generated numba.cuda
in the CUDA simulator (subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import toolchain
from fusion import cellexpr as ce
from fusion import pointwise as fp
from kernels import cudasrc
from kernels.custom import CUSTOM_PARAMS, CUSTOM_REFERENCES, custom_lstm
from kernels.errors import BadInput, Unsupported

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(1, 1), (1, 129), (3, 129), (2, 7)]

# The user-defined example (README): a coupled input-forget gate LSTM.
CIFG = ce.Cell("cifg_lstm", gates="fgo", states=("c",), body="""
    f = sigmoid(gx_f + gh_f + bx_f + bh_f)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    o = sigmoid(gx_o + gh_o + bx_o + bh_o)
    c = f * c_prev + (1 - f) * g
    h = o * tanh(c)
""")


def _gates(rng, B, G, H, dt, layout):
    if layout == "grouped":
        return rng.uniform(-4, 4, (B, G * H)).astype(dt).reshape(B, G, H)
    return rng.uniform(-4, 4, (G, B, H)).astype(dt).transpose(1, 0, 2)   # per-gate buffer


def _case(cell, rng, B, H, dt, layout="grouped"):
    G = cell.num_gates
    gx, gh = _gates(rng, B, G, H, dt, layout), _gates(rng, B, G, H, dt, layout)
    bx, bh = (rng.uniform(-1, 1, (G, H)).astype(dt) for _ in range(2))
    h_prev = rng.uniform(-1, 1, (B, H)).astype(dt)
    states = tuple(rng.uniform(-2, 2, (B, H)).astype(dt) for _ in cell.states)
    params = tuple(rng.uniform(0.5, 1.5, cell.param_shape(p, H)).astype(dt) for p, _ in cell.params)
    return gx, gh, bx, bh, h_prev, states, params


def _run_numba(cell, gx, gh, bx, bh, h_prev, states, params):
    h = np.full(h_prev.shape, np.nan, h_prev.dtype)
    outs = tuple(np.full(s.shape, np.nan, s.dtype) for s in states)
    return ce.NumbaCell(cell)(np, gx, gh, bx, bh, h_prev, states, params, h, outs)


def _f64(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


@pytest.mark.parametrize("B,H", SIZES)
def test_generated_lstm_gru_match_hand_written(B, H, layout="grouped"):
    rng = np.random.default_rng(B * 1000 + H)
    gx, gh, bx, _, _, (c0,), _ = _case(ce.LSTM, rng, B, H, "float32", layout)
    h_gen, c_gen = _run_numba(ce.LSTM, gx, gh, bx, None, c0, (c0,), ())
    h_hw, c_hw = np.empty_like(c0), c0.copy()
    fp.NumbaLSTM()(np, gx, gh, bx, None, c_hw, h_hw, c_hw)
    np.testing.assert_allclose(h_gen, h_hw, rtol=0, atol=2e-7)
    np.testing.assert_allclose(c_gen, c_hw, rtol=0, atol=2e-7)
    gx, gh, bx, bh, h_prev, _, _ = _case(ce.GRU, rng, B, H, "float32", layout)
    (h_gen,) = _run_numba(ce.GRU, gx, gh, bx, bh, h_prev, (), ())
    h_hw = np.empty_like(h_prev)
    fp.NumbaGRU()(np, gx, gh, bx, bh, h_prev, h_hw)
    np.testing.assert_allclose(h_gen, h_hw, rtol=0, atol=2e-7)


@pytest.mark.parametrize("cell", [ce.PEEPHOLE_LSTM, ce.LAYERNORM_LSTM, CIFG], ids=lambda c: c.name)
@pytest.mark.parametrize("dt,tol", [("float32", 2e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("B,H", SIZES)
def test_generated_numba_vs_op_by_op(cell, dt, tol, B, H):
    rng = np.random.default_rng(H)
    gx, gh, bx, bh, h_prev, states, params = _case(cell, rng, B, H, dt)
    got = _run_numba(cell, gx, gh, bx, bh, h_prev, states, params)
    want = ce.numpy_step(cell)(np, *_f64(gx, gh, bx, bh, h_prev), *_f64(*states), *_f64(*params))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=tol * max(1.0, np.abs(w).max()))


def test_numba_state_updated_in_place():
    rng = np.random.default_rng(5)
    gx, gh, bx, bh, h_prev, (c,), params = _case(ce.LAYERNORM_LSTM, rng, 3, 33, "float32")
    want = ce.numpy_step(ce.LAYERNORM_LSTM)(np, *_f64(gx, gh, bx, bh, h_prev, c), *_f64(*params))
    h = np.empty_like(c)
    ce.NumbaCell(ce.LAYERNORM_LSTM)(np, gx, gh, bx, bh, h_prev, (c,), params, h, (c,))
    np.testing.assert_allclose(c, want[1], atol=2e-6)


@pytest.mark.parametrize("cell", ["peephole", "layernorm"])
@pytest.mark.parametrize("variant,backend", [("naive", "numpy"), ("fused", "numpy"), ("fused", "numba")])
@pytest.mark.parametrize("T,B,I,H,L", [(1, 1, 1, 1, 1), (4, 1, 3, 129, 1), (3, 2, 5, 6, 2)])
def test_custom_lstm_vs_reference(cell, variant, backend, T, B, I, H, L):
    rng = np.random.default_rng(T + H)
    params = CUSTOM_PARAMS[cell].random(I, H, L, seed=4)
    x = rng.standard_normal((T, B, I))
    h0, c0 = (0.5 * rng.standard_normal((L, B, H)) for _ in range(2))
    yr, (hr, cr) = CUSTOM_REFERENCES[cell](x, params, h0, c0)
    for dt, tol in (("float32", 1e-5), ("float64", 1e-10)):
        p = params.astype(dt)
        y, (h, c) = custom_lstm(x.astype(dt), p, h0.astype(dt), c0.astype(dt), cell=cell,
                                variant=variant, backend=backend)
        # fp32 inputs: the reference on the same rounded values
        yr32, (hr32, cr32) = (CUSTOM_REFERENCES[cell](x.astype(dt), p, h0.astype(dt), c0.astype(dt))
                              if dt == "float32" else (yr, (hr, cr)))
        for got, want in ((y, yr32), (h, hr32), (c, cr32)):
            assert np.max(np.abs(got - want)) <= tol * max(1.0, np.abs(want).max()), (dt, cell)


def test_custom_lstm_rejects_mismatch():
    p = CUSTOM_PARAMS["peephole"].random(2, 3)
    with pytest.raises(BadInput):
        custom_lstm(np.zeros((1, 1, 2)), p, cell="layernorm")
    from kernels import lstm
    with pytest.raises(BadInput):
        lstm(np.zeros((1, 1, 2)), p)          # the plain LSTM refuses custom parameters


@pytest.mark.parametrize("body,msg", [
    ("h = tanh(gx_i + nope)\nc = h", "not defined"),
    ("h = gx_i\nh = gh_i\nc = h", "already defined"),
    ("h = gx_i ** 0.5\nc = h", "exponent"),
    ("h = foo(gx_i)\nc = h", "calls"),
    ("c = gx_i", "must assign 'h'"),
    ("x = rowsum(rowsum(gx_i))\nh = gx_i * x\nc = h", "rowsum inside rowsum"),
])
def test_dsl_errors(body, msg):
    with pytest.raises(BadInput, match=msg):
        ce.Cell("bad", gates="i", states=("c",), body=body)


def test_reduction_levels():
    assert ce.analyse(ce.LAYERNORM_LSTM).levels == 4      # means, variances of x/h; mean, variance of c
    assert not ce.LSTM.has_reductions


# -- CUDA C ----------------------------------------------------------------------------------------
def _all_cuda_source():
    return ce._CUDA_PRELUDE + "".join(ce.cuda_source(c, prelude=False) for c in (*ce.CELLS.values(), CIFG))


@toolchain.needs("nvcc")
def test_generated_cuda_compiles_with_nvcc(tmp_path):
    cu = tmp_path / "cells.cu"
    cu.write_text(_all_cuda_source())
    # -I: the generated text includes kernels/cuda/mb_device.cuh (the loader inlines it for NVRTC)
    cmd = [toolchain.nvcc(), "-arch=sm_90", "-c", "--resource-usage", "-Werror", "all-warnings",
           f"-I{cudasrc.CUDA_DIR}", "-o", str(tmp_path / "cells.o"), str(cu)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout + proc.stderr
    for c in (*ce.CELLS.values(), CIFG):
        for dt in ("float32", "float16", "bfloat16"):
            assert ce.cuda_symbol(c, dt) in report
    assert "bytes spill" not in report.replace("0 bytes spill", "")


def test_generated_cuda_compiles_with_nvrtc():
    from kernels.errors import MissingDependency
    try:
        cubin = cudasrc.nvrtc_compile(_all_cuda_source(), filename="cellexpr.cu")
    except MissingDependency as e:
        pytest.skip(str(e))
    assert len(cubin) > 1000


def test_cuda_launch_shape():
    assert ce.cuda_launch_shape(ce.LAYERNORM_LSTM, 70000, 129) == ((65535, 1, 1), (160, 1, 1))
    assert ce.cuda_launch_shape(ce.LAYERNORM_LSTM, 2, 1) == ((2, 1, 1), (32, 1, 1))


# -- numba.cuda in the simulator --------------------------------------------------------------------
_SIM = r"""
import json, sys
import numpy as np
from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
from fusion import cellexpr as ce
k = ce.numba_cuda_kernel(ce.LSTM)
if type(k).__name__ != "FakeCUDAKernel":
    print("simulator not active", file=sys.stderr); sys.exit(2)
rng = np.random.default_rng(0)
worst = {}
for cell in (ce.LSTM, ce.GRU, ce.PEEPHOLE_LSTM, ce.LAYERNORM_LSTM):
    for B, H, dt in ((1, 1, "float32"), (2, 37, "float32"), (2, 37, "float16")):
        G = cell.num_gates
        gx = rng.uniform(-3, 3, (G, B, H)).astype(dt).transpose(1, 0, 2)   # strided view
        gh = rng.uniform(-3, 3, (B, G * H)).astype(dt).reshape(B, G, H)
        bx, bh = (rng.uniform(-1, 1, (G, H)).astype(dt) for _ in range(2))
        hp = rng.uniform(-1, 1, (B, H)).astype(dt)
        sp = [rng.uniform(-2, 2, (B, H)).astype(dt) for _ in cell.states]
        ps = [rng.uniform(0.5, 1.5, cell.param_shape(p, H)).astype(dt) for p, _ in cell.params]
        ho = np.zeros((B, H), dt)
        so = [np.zeros((B, H), dt) for _ in cell.states]
        args = [gx, gh, bx, bh, hp] + [a for s, o in zip(sp, so) for a in (s, o)] + ps + [ho]
        grid, block = ce.numba_cuda_launch_shape(B, H, max_grid=1)    # grid-stride loop over B
        ce.numba_cuda_kernel(cell)[grid, block](*[FakeCUDAArray(a) for a in args])
        f = lambda a: np.asarray(a, np.float64)
        want = ce.numpy_step(cell)(np, f(gx), f(gh), f(bx), f(bh), f(hp), *map(f, sp), *map(f, ps))
        err = max(float(np.max(np.abs(f(g) - w) / np.maximum(1, np.abs(w)))) for g, w in zip([ho] + so, want))
        worst[f"{cell.name}/{B}x{H}/{dt}"] = err
print(json.dumps(worst))
"""


def test_generated_numba_cuda_in_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _SIM], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, err in worst.items():
        assert err <= (1e-5 if case.endswith("float32") else 2e-3), (case, err)


# -- a declared cell on the one runner (kernels.recurrent.RNN) -------------------------------------------
def _cifg_reference(x, params, h0=None, c0=None):
    """The CIFG LSTM in float64, written out by hand (not generated): gates f, g, o; i = 1 - f."""
    from kernels.reference import sigmoid
    T, B, _ = x.shape
    L, H = params.num_layers, params.hidden_size
    h_n, c_n = np.zeros((L, B, H)), np.zeros((L, B, H))
    seq = np.asarray(x, np.float64)
    for l, layer in enumerate(params.layers):
        w_ih, w_hh, b_ih, b_hh = (np.asarray(a, np.float64) for a in layer.arrays())
        h = np.zeros((B, H)) if h0 is None else np.asarray(h0[l], np.float64)
        c = np.zeros((B, H)) if c0 is None else np.asarray(c0[l], np.float64)
        out = np.empty((T, B, H))
        for t in range(T):
            a_f, a_g, a_o = np.split(seq[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 3, axis=1)
            f = sigmoid(a_f)
            c = f * c + (1 - f) * np.tanh(a_g)
            h = sigmoid(a_o) * np.tanh(c)
            out[t] = h
        h_n[l], c_n[l] = h, c
        seq = out
    return seq, (h_n, c_n)


def _readme_block(marker: str) -> str:
    import re
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    assert len(blocks) == 1, f"README has {len(blocks)} python blocks with {marker!r}"
    return blocks[0]


def test_readme_cifg_cell_runs():
    """The README's user-defined cell, executed as written, against the hand-written reference."""
    ns: dict = {}
    exec(compile(_readme_block("CIFG = Cell("), "README.md CIFG block", "exec"), ns)
    params, x = ns["params"], ns["x_cifg"]
    assert params.num_gates == 3 and ns["CIFG"].foldable_biases == ("bx", "bh")
    y_ref, (h_ref, c_ref) = _cifg_reference(x, params)
    for got, want in ((ns["y_cifg"], y_ref), (ns["h_n"], h_ref), (ns["c_n"], c_ref)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _ladder_plans():
    from fusion.steps import ladder
    return [(label, plan) for label, plan in ladder("cpu")]


@pytest.mark.parametrize("rung,plan", _ladder_plans(), ids=[r for r, _ in _ladder_plans()])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_declared_cell_every_rung(rung, plan, backend):
    """A declared cell gets every fusion step of the ladder on both CPU backends (h0, c0 given)."""
    from kernels import RNN, CellParams
    T, B, I, H, L = 4, 3, 5, 7, 2
    rng = np.random.default_rng(9)
    params = CellParams.random(I, H, L, cell=CIFG, seed=3)
    x = rng.standard_normal((T, B, I))
    h0, c0 = (0.5 * rng.standard_normal((L, B, H)) for _ in range(2))
    want = _cifg_reference(x, params, h0, c0)
    variant = "naive" if rung == "naive" else "fused"
    for dt, tol in (("fp64", 1e-12), ("fp32", 2e-5)):
        run = RNN(params, variant=variant, backend=backend, dtype=dt, opts=plan if variant == "fused" else None)
        y, (h, c) = run(x, h0, c0)
        for got, w in ((y, want[0]), (h, want[1][0]), (c, want[1][1])):
            np.testing.assert_allclose(got, w, rtol=0, atol=tol)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("opts", ["all", "group_gemm,fuse_pointwise", "fuse_pointwise"])
def test_plain_cells_generated_provider_matches_hand_written(cell, opts):
    """pointwise="generated" (the kernels fusion.cellexpr generates from LSTM/GRU/RNN_TANH) on the
    whole runner gives the hand-written kernels' results: the oracle of the production path."""
    from kernels import RNN
    from kernels.params import PARAMS
    params = PARAMS[cell].random(5, 33, 2, seed=1).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((6, 3, 5)).astype(np.float32)
    outs = [RNN(params, variant="fused", backend="numba", dtype="fp32", opts=opts, pointwise=p)(x)
            for p in ("handwritten", "generated")]
    flat = [(o[0], *o[1]) if cell == "lstm" else (o[0], o[1]) for o in outs]
    for a, b in zip(*flat):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_foldable_biases():
    """Folding follows the declaration: both biases, b_ih only (GRU) or none (layer norm)."""
    assert ce.foldable_biases(ce.LSTM) == ("bx", "bh") and ce.foldable_biases(CIFG) == ("bx", "bh")
    assert ce.foldable_biases(ce.GRU) == ("bx",)
    assert ce.foldable_biases(ce.LAYERNORM_LSTM) == ()
    from kernels.recurrent import PLAIN_FOLDS     # the hand-written path's rule says the same
    for name, folds in (("lstm", "lstm"), ("gru", "gru"), ("rnn_relu", "rnn"), ("rnn_tanh", "rnn")):
        assert ce.get(name).foldable_biases == PLAIN_FOLDS[folds], name
    sub = ce.Cell("sub", gates="h", states=(), body="h = tanh(gx_h - bx_h + gh_h + bh_h)")
    twice = ce.Cell("twice", gates="h", states=(), body="h = tanh(gx_h + bx_h + gh_h + bh_h) * bx_h")
    assert ce.foldable_biases(sub) == () and ce.foldable_biases(twice) == ()


def test_runner_refuses_what_it_cannot_run():
    from kernels import RNN, CellParams, LSTMParams
    p = CellParams.random(2, 3, cell=CIFG)
    with pytest.raises(Unsupported, match="backend 'pycuda'"):    # a valid pair it cannot serve
        RNN(p, backend="pycuda")
    with pytest.raises(BadInput, match="backend 'nope'"):          # a name that never works
        RNN(p, backend="nope")
    with pytest.raises(BadInput, match="pointwise 'handwritten'"):
        RNN(p, pointwise="handwritten")
    with pytest.raises(BadInput, match="fp32 or fp64"):
        RNN(p, dtype="bf16")
    two = ce.Cell("two_states", gates="ifgo", states=("c", "m"), body="c = gx_i * c_prev\nm = gx_f\nh = c + m")
    with pytest.raises(BadInput, match="states"):
        RNN(CellParams.random(2, 3, cell=two))
    with pytest.raises(BadInput, match="extras"):
        CellParams(2, 3, LSTMParams.random(2, 3).layers, (), ce.PEEPHOLE_LSTM)
    with pytest.raises(BadInput, match="not a fusion.cellexpr.Cell"):
        CellParams(2, 3, LSTMParams.random(2, 3).layers)


def test_shipped_params_draw_the_same_numbers():
    """The peephole container on CellParams draws what it drew before: LSTMParams' weights for
    the seed, the extras from the seed's second stream."""
    from kernels import LSTMParams
    p = CUSTOM_PARAMS["peephole"].random(3, 5, 2, seed=7)
    base = LSTMParams.random(3, 5, 2, seed=7)
    for a, b in zip(p.layers, base.layers):
        for u, v in zip(a.arrays(), b.arrays()):
            np.testing.assert_array_equal(u, v)
    k = 1.0 / np.sqrt(5)
    want = np.random.default_rng([7, 1]).uniform(-k, k, size=(3, 5))
    np.testing.assert_array_equal(p.extras[0]["peep"], want)


# -- the shipped cells' float64 references against a hand computation ----------------------------
# Written from the papers' equations, unit by unit, with the math module on Python floats: no NumPy
# array code and nothing shared with kernels.custom, so a wrong gate, a wrong peephole, a norm
# over the wrong axis or a bias added at the wrong place in a reference shows up here.
def _sig(v: float) -> float:
    import math
    return 1.0 / (1.0 + math.exp(-v))


def _dot(row, vec) -> float:
    return sum(float(a) * float(b) for a, b in zip(row, vec))


def _norm(values, gains, biases, eps=1e-5):
    """Layer norm over ``values`` (biased variance, as Ba et al. and torch.nn.LayerNorm)."""
    import math
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    return [(v - mean) / math.sqrt(var + eps) * float(g) + float(b) for v, g, b in zip(values, gains, biases)]


def _hand_layers(x, params, h0, c0, cell):
    """y (T x B x H nested lists) and the final (h, c) per layer, one scalar at a time."""
    import math
    T, B, H = len(x), len(x[0]), params.hidden_size
    seq = [[list(map(float, x[t][b])) for b in range(B)] for t in range(T)]
    finals = []
    for l in range(params.num_layers):
        lay, ex = params.layers[l], params.extras[l]
        h = [list(map(float, h0[l][b])) for b in range(B)]
        c = [list(map(float, c0[l][b])) for b in range(B)]
        out = []
        for t in range(T):
            row = []
            for b in range(B):
                # pre-activations of the 4H gate rows i, f, g, o (canonical order), input and recurrent apart
                px = [_dot(lay.w_ih[r], seq[t][b]) for r in range(4 * H)]
                ph = [_dot(lay.w_hh[r], h[b]) for r in range(4 * H)]
                if cell == "layernorm":
                    px = _norm(px, np.ravel(ex["lnx_g"]), np.ravel(ex["lnx_b"]))
                    ph = _norm(ph, np.ravel(ex["lnh_g"]), np.ravel(ex["lnh_b"]))
                a = [px[r] + ph[r] + float(lay.b_ih[r]) + float(lay.b_hh[r]) for r in range(4 * H)]
                new_c, new_h = [], []
                for j in range(H):
                    ai, af, ag, ao = a[j], a[H + j], a[2 * H + j], a[3 * H + j]
                    cp = c[b][j]
                    if cell == "peephole":      # Gers & Schmidhuber: i, f see c_{t-1}; o sees c_t
                        pi, pf, po = (float(ex["peep"][k][j]) for k in range(3))
                        i, f = _sig(ai + pi * cp), _sig(af + pf * cp)
                        cj = f * cp + i * math.tanh(ag)
                        new_c.append(cj)
                        new_h.append(_sig(ao + po * cj) * math.tanh(cj))
                    else:
                        new_c.append(_sig(af) * cp + _sig(ai) * math.tanh(ag))
                if cell == "layernorm":         # Ba et al.: h = o * tanh(LN(c_t)), LN over the H units
                    lc = _norm(new_c, ex["lnc_g"], ex["lnc_b"])
                    new_h = [_sig(a[3 * H + j]) * math.tanh(lc[j]) for j in range(H)]
                h[b], c[b] = new_h, new_c
                row.append(new_h)
            out.append(row)
        finals.append((h, c))
        seq = out
    return seq, finals


@pytest.mark.parametrize("cell", ["peephole", "layernorm"])
def test_shipped_cell_references_match_a_hand_computation(cell):
    """kernels.custom's float64 references (the oracle every peephole and layer-norm variant is
    checked against) agree with the cells computed by hand: 2 layers, 3 steps, 2 batch rows,
    3 units, non-zero states and every per-unit parameter random."""
    params = CUSTOM_PARAMS[cell].random(2, 3, 2, seed=11)
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (3, 2, 2))
    h0, c0 = rng.uniform(-1, 1, (2, 2, 3)), rng.uniform(-1.5, 1.5, (2, 2, 3))
    y, (h_n, c_n) = CUSTOM_REFERENCES[cell](x, params, h0, c0)
    y_hand, finals = _hand_layers(x.tolist(), params, h0.tolist(), c0.tolist(), cell)
    np.testing.assert_allclose(y, np.array(y_hand), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, np.array([f[0] for f in finals]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c_n, np.array([f[1] for f in finals]), rtol=1e-12, atol=1e-14)


def _sig_np(v):
    return 1.0 / (1.0 + np.exp(-v))


def test_layernorm_cell_over_one_unit_outputs_its_norm_bias():
    """With H = 1 the layer norm of c has nothing to normalise against: c - mean(c) = 0, so the
    reference must give h = o * tanh(lnc_b) exactly, whatever the weights."""
    params = CUSTOM_PARAMS["layernorm"].random(2, 1, 1, seed=3)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 3, 2))
    y, _ = CUSTOM_REFERENCES["layernorm"](x, params)
    ex, lay = params.extras[0], params.layers[0]
    h = np.zeros((3, 1))
    for t in range(4):        # o needs the same normalised pre-activations; compute it per step
        ax = x[t] @ lay.w_ih.T
        ah = h @ lay.w_hh.T
        norm = [(v - v.mean(axis=1, keepdims=True)) / np.sqrt(v.var(axis=1, keepdims=True) + 1e-5)
                for v in (ax, ah)]
        a_o = (norm[0] * ex["lnx_g"].ravel() + ex["lnx_b"].ravel() + norm[1] * ex["lnh_g"].ravel()
               + ex["lnh_b"].ravel() + lay.b_ih + lay.b_hh)[:, 3:4]
        h = _sig_np(a_o) * np.tanh(ex["lnc_b"])
        np.testing.assert_allclose(y[t], h, rtol=1e-13)

