"""The shipped cells: LSTM, GRU (the hand-written kernels' cells), peephole and layer-norm LSTM,
the vanilla RNN's two; :func:`get` by name."""
from __future__ import annotations

from kernels.errors import BadInput

from .language import Cell

# -- the shipped cells -----------------------------------------------------------------------------
LSTM = Cell("lstm", gates="ifgo", states=("c",), body="""
    i = sigmoid(gx_i + gh_i + bx_i + bh_i)
    f = sigmoid(gx_f + gh_f + bx_f + bh_f)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    o = sigmoid(gx_o + gh_o + bx_o + bh_o)
    c = f * c_prev + i * g
    h = o * tanh(c)
""")

# Reset gate after the recurrent GEMM (cuDNN, PyTorch): b_hn stays inside the product.
GRU = Cell("gru", gates="rzn", states=(), body="""
    r = sigmoid(gx_r + bx_r + gh_r + bh_r)
    z = sigmoid(gx_z + bx_z + gh_z + bh_z)
    n = tanh(gx_n + bx_n + r * (gh_n + bh_n))
    h = (1 - z) * n + z * h_prev
""")

# Gers & Schmidhuber peepholes, diagonal: i and f see c_{t-1}, o sees c_t.
PEEPHOLE_LSTM = Cell("peephole_lstm", gates="ifgo", states=("c",), params=(("peep", "ifo"),), body="""
    i = sigmoid(gx_i + gh_i + bx_i + bh_i + peep_i * c_prev)
    f = sigmoid(gx_f + gh_f + bx_f + bh_f + peep_f * c_prev)
    g = tanh(gx_g + gh_g + bx_g + bh_g)
    c = f * c_prev + i * g
    o = sigmoid(gx_o + gh_o + bx_o + bh_o + peep_o * c)
    h = o * tanh(c)
""")

LN_EPS = 1e-5

# Ba, Kiros & Hinton 2016: LN over the 4H input pre-activations and over the 4H recurrent ones,
# each with its gain and bias, then the canonical biases, and LN over c (H) before the output tanh.
# The biases are added after normalisation, so a builder must not fold them into gx.
LAYERNORM_LSTM = Cell("layernorm_lstm", gates="ifgo", states=("c",), params=(
    ("lnx_g", "ifgo"), ("lnx_b", "ifgo"), ("lnh_g", "ifgo"), ("lnh_b", "ifgo"), ("lnc_g", None), ("lnc_b", None)),
    body=f"""
    mx = rowsum(gx_i + gx_f + gx_g + gx_o) / (4 * H)
    mh = rowsum(gh_i + gh_f + gh_g + gh_o) / (4 * H)
    vx = rowsum((gx_i - mx) ** 2 + (gx_f - mx) ** 2 + (gx_g - mx) ** 2 + (gx_o - mx) ** 2) / (4 * H)
    vh = rowsum((gh_i - mh) ** 2 + (gh_f - mh) ** 2 + (gh_g - mh) ** 2 + (gh_o - mh) ** 2) / (4 * H)
    sx = 1 / sqrt(vx + {LN_EPS!r})
    sh = 1 / sqrt(vh + {LN_EPS!r})
    i = sigmoid((gx_i - mx) * sx * lnx_g_i + lnx_b_i + (gh_i - mh) * sh * lnh_g_i + lnh_b_i + bx_i + bh_i)
    f = sigmoid((gx_f - mx) * sx * lnx_g_f + lnx_b_f + (gh_f - mh) * sh * lnh_g_f + lnh_b_f + bx_f + bh_f)
    g = tanh((gx_g - mx) * sx * lnx_g_g + lnx_b_g + (gh_g - mh) * sh * lnh_g_g + lnh_b_g + bx_g + bh_g)
    o = sigmoid((gx_o - mx) * sx * lnx_g_o + lnx_b_o + (gh_o - mh) * sh * lnh_g_o + lnh_b_o + bx_o + bh_o)
    c = f * c_prev + i * g
    mc = rowsum(c) / H
    vc = rowsum((c - mc) ** 2) / H
    h = o * tanh((c - mc) / sqrt(vc + {LN_EPS!r}) * lnc_g + lnc_b)
""")

# The vanilla (Elman) RNN: one gate block, biases summed (cuDNN's CUDNN_RNN_RELU / _TANH).
RNN_RELU = Cell("rnn_relu", gates="h", states=(), body="""
    h = relu(gx_h + gh_h + bx_h + bh_h)
""")
RNN_TANH = Cell("rnn_tanh", gates="h", states=(), body="""
    h = tanh(gx_h + gh_h + bx_h + bh_h)
""")

CELLS = {c.name: c for c in (LSTM, GRU, PEEPHOLE_LSTM, LAYERNORM_LSTM, RNN_RELU, RNN_TANH)}


def get(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise BadInput(f"cell {name!r} is unknown; have: {', '.join(CELLS)}") from None
