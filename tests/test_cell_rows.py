"""A custom cell is one row (kernels.custom.CustomCell): the throwaway cells of tests/cellrows.py
(a GRU-family minimal gated unit, a vanilla-family leaky RNN), declared as docs/design.md's
recipe says and nothing else edited, run through kernels.RNN and through `gru --cell mgu` /
`rnn --cell leaky`, with records of their family's op, FLOPs, bytes and memory from their own
gate count, help text and choices following the registry; removed, they leave nothing behind."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kernels import RNN
from kernels.custom import CUSTOM_CELLS, CustomCell
from kernels.errors import BadInput
from microbench import cli, registry
from microbench.problems import RNNProblem
from tests.cellrows import LEAKY, MGU, THROWAWAY, registered

MGU_ROW, LEAKY_ROW = THROWAWAY
TIMING = ["--warmup", "0", "--min-time", "0", "--min-samples", "2", "--device", "cpu"]


def test_families_follow_the_states():
    assert (MGU_ROW.family, MGU_ROW.num_gates, MGU_ROW.state_names) == ("gru", 2, ("h0",))
    assert (LEAKY_ROW.family, LEAKY_ROW.num_gates) == ("rnn", 1)
    assert {r.family for r in CUSTOM_CELLS.values()} == {"lstm"}     # peephole, layernorm


@pytest.mark.parametrize("row", THROWAWAY, ids=lambda r: r.name)
def test_throwaway_cell_runs_on_kernels_rnn_unregistered(row):
    """kernels.RNN needs no registry: the row's container and its float64 reference suffice."""
    assert row.name not in CUSTOM_CELLS
    T, B, I, H, L = 4, 3, 5, 7, 2
    params = row.params.random(I, H, L, seed=2)
    rng = np.random.default_rng(1)
    x, h0 = rng.standard_normal((T, B, I)), 0.5 * rng.standard_normal((L, B, H))
    y_ref, h_ref = row.reference(x, params, h0)
    for backend in ("numpy", "numba"):
        y, h = RNN(params, variant="fused", backend=backend, dtype="fp64")(x, h0)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-12)
    with pytest.raises(BadInput, match="no cell state"):
        RNN(params, variant="fused", backend="numpy", dtype="fp64")(x, h0, h0)


@pytest.mark.parametrize("row,op", [(MGU_ROW, "gru"), (LEAKY_ROW, "rnn")], ids=["mgu", "leaky"])
def test_throwaway_cell_runs_through_its_family_command(row, op, tmp_path, capsys):
    T, B, I, H = 3, 2, 4, 5
    with registered(row):
        out = tmp_path / "r.jsonl"
        argv = [op, "--cell", row.name, "-T", str(T), "-B", str(B), "-I", str(I), "-H", str(H),
                "--json", str(out), *TIMING]
        assert cli.main(argv) == 0, capsys.readouterr()
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["variant"] for r in recs} == {f"{row.name}-naive", f"{row.name}-fused"}
        assert all(r["op"] == op and r["status"] == "ok" and r["check"]["passed"] for r in recs)
        G = row.num_gates
        assert all(r["flops"] == 2 * T * B * G * H * (I + H) for r in recs)      # its own G
        assert all(r["info"]["gates"] == G and r["info"]["cell"] == row.name for r in recs)
        extras = row.extra_weights(H)
        weights = G * H * (I + H + 2) + extras
        fp32 = 4 * (weights + T * B * I + T * B * H + 2 * B * H)     # states: h0 in, h_n out
        assert {r["bytes"] for r in recs if r["dtype"] == "fp32"} == {fp32}
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main([op, "--help"])
        assert f"{row.name} ({row.about})" in " ".join(capsys.readouterr().out.split())
        other = "lstm" if op != "lstm" else "gru"
        assert cli.main([other, "--cell", row.name, *TIMING]) == 2
        assert f"run it as `{op} --cell {row.name}`" in capsys.readouterr().err
    # removed: no record, no choice, no container lookup
    assert not [r for r in registry.REGISTRY.values() if r.cell == row.name]
    assert row.name not in CUSTOM_CELLS
    assert cli.main([op, "--cell", row.name, *TIMING]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_problem_sizes_follow_the_cell():
    with registered(MGU_ROW):
        mgu = RNNProblem("gru", 10, 4, 16, 32, 2, cell="mgu")
        gru = RNNProblem("gru", 10, 4, 16, 32, 2)
        assert (mgu.G, gru.G) == (2, 3) and 3 * mgu.flops() == 2 * gru.flops()
        assert mgu.memory_estimate(4) < gru.memory_estimate(4)
        assert mgu.shape() == gru.shape() and mgu.options() == gru.options()
        with pytest.raises(BadInput, match="is a GRU-family cell"):
            RNNProblem("lstm", 1, 1, 1, 1, cell="mgu")
        with pytest.raises(BadInput, match="--nonlinearity applies to the plain vanilla cell"):
            RNNProblem("gru", 1, 1, 1, 1, nonlinearity="relu", cell="mgu")
    with registered(LEAKY_ROW):
        leaky = RNNProblem("rnn", 10, 4, 16, 32, 2, cell="leaky")
        plain = RNNProblem("rnn", 10, 4, 16, 32, 2)
        assert leaky.num_weights() == plain.num_weights() + 2 * 32      # one leak per unit and layer
        assert leaky.nonlinearity == "" and plain.nonlinearity == "tanh"
    with pytest.raises(BadInput, match="cell 'mgu' is unknown"):
        RNNProblem("gru", 1, 1, 1, 1, cell="mgu")


def test_a_row_refuses_what_the_runner_cannot_run():
    from fusion import cellexpr as ce
    two = ce.Cell("two", gates="ifgo", states=("c", "m"), body="c = gx_i * c_prev\nm = gx_f\nh = c + m")
    with pytest.raises(BadInput, match="states"):
        CustomCell("two", two, lambda *a: None, "two states")
    with pytest.raises(BadInput, match="'plain'"):
        CustomCell("plain", MGU, lambda *a: None, "a name the CLI keeps")
    with pytest.raises(BadInput, match="already registered"):
        with registered(MGU_ROW):
            from microbench.cases.custom import add_cell
            add_cell(CustomCell("mgu", MGU, lambda *a: None, "again"))
    assert "mgu" not in CUSTOM_CELLS and LEAKY.name == "leaky"
