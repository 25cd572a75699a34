"""The custom cells the tests run: every row kernels.custom ships, plus throwaway cells declared
here by docs/design.md's custom-cell recipe (a row: expression, float64 reference step, about;
nothing else edited), registered only while a test uses them.

- MGU, the minimal gated unit (Zhou et al. 2016) in the reset-after form cuDNN's GRU has: one
  gate f, ``h = (1 - f) h_prev + f tanh(W_n x + b_n + f (U_n h + c_n))``; no cell state, two
  gate blocks: GRU family (``gru --cell mgu``), G = 2.
- A leaky-integrator RNN: one gate block and a per-unit leak ``a`` (H,), ``h = (1 - a) h_prev +
  a tanh(W x + U h + b)``: vanilla-RNN family (``rnn --cell leaky``), G = 1, one extra parameter.

The ``custom_cell`` fixture parametrizes a test over all of them, each registered (kernels.custom
and microbench's records) for that test and removed after it, so no other test sees a throwaway.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from fusion import cellexpr as ce
from kernels import custom
from kernels.reference import sigmoid

MGU = ce.Cell("mgu", gates="fn", states=(), body="""
    f = sigmoid(gx_f + bx_f + gh_f + bh_f)
    n = tanh(gx_n + bx_n + f * (gh_n + bh_n))
    h = (1 - f) * h_prev + f * n
""")

LEAKY = ce.Cell("leaky", gates="h", states=(), params=(("leak", None),), body="""
    h = (1 - leak) * h_prev + leak * tanh(gx_h + bx_h + gh_h + bh_h)
""")


def _mgu_step(x_t, h, states, w_ih, w_hh, b_ih, b_hh, extras):
    """Written from the equations, not from the declaration above."""
    fx, nx = np.split(x_t @ w_ih.T + b_ih, 2, axis=1)
    fh, nh = np.split(h @ w_hh.T + b_hh, 2, axis=1)
    f = sigmoid(fx + fh)
    return (1 - f) * h + f * np.tanh(nx + f * nh), ()


def _leaky_step(x_t, h, states, w_ih, w_hh, b_ih, b_hh, extras):
    a = extras["leak"]
    return (1 - a) * h + a * np.tanh(x_t @ w_ih.T + b_ih + h @ w_hh.T + b_hh), ()


def _draw_leak(rng, name, shape):
    return rng.uniform(0.2, 0.9, size=shape)      # a leak in (0, 1): h stays a blend


THROWAWAY = (
    custom.CustomCell("mgu", MGU, _mgu_step, "minimal gated unit (Zhou et al. 2016), reset-after form"),
    custom.CustomCell("leaky", LEAKY, _leaky_step, "leaky-integrator RNN, a per-unit leak",
                      draw_extra=_draw_leak),
)
ROWS = tuple(custom.CUSTOM_CELLS.values()) + THROWAWAY


@contextlib.contextmanager
def registered(row):
    """``row`` registered (kernels.custom and microbench's records) inside the block; a shipped
    row is left as it is."""
    from microbench.cases import custom as cases_custom
    if custom.CUSTOM_CELLS.get(row.name) is row:
        yield row
        return
    cases_custom.add_cell(row)
    try:
        yield row
    finally:
        cases_custom.remove_cell(row.name)


@pytest.fixture(params=ROWS, ids=lambda r: r.name)
def custom_cell(request):
    """Each custom cell in turn (shipped and throwaway), registered for the test."""
    with registered(request.param) as row:
        yield row
