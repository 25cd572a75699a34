"""The case planner the lstm/gru/rnn, conv and suite commands share (microbench/planner.py)."""
import pytest

from fusion.steps import ladder
from kernels.errors import BadInput
from microbench import cases, planner  # noqa: F401  (cases fills the registry)
from microbench.harness import Settings


def test_ladder_rungs_per_backend_and_a_missing_fused_record_left_out():
    rungs = planner.ladder_rungs("rnn", ["numpy", "pycuda"], "cpu")
    labels = [label for label, _ in ladder("cpu") if label != "+graph"]     # numpy has no graph step
    numpy = [(r.variant, label) for r, _, label in rungs if r.backend == "numpy"]
    assert [label for _, label in numpy] == labels and numpy[0][0] == "naive"
    assert all(v == "fused" for v, _ in numpy[1:])
    # the vanilla cell has no fused record on pycuda: its naive rung only
    assert [(r.variant, label) for r, _, label in rungs if r.backend == "pycuda"] == [("naive", "naive")]
    assert all((plan is None) == (r.variant == "naive") for r, plan, _ in rungs)


def test_parse_precisions_canonical_once_each_and_empty_refused():
    assert planner.parse_precisions("fp32, float64,fp32") == ["fp32", "fp64"]
    with pytest.raises(BadInput, match="--dtype .,. names no precision; allowed: fp64, fp32, tf32, fp16, bf16"):
        planner.parse_precisions(",")


def test_timing_defaults_are_the_harness_settings():
    d, s = planner.timing_defaults(), Settings()
    assert d == {k: getattr(s, k) for k in planner.TIMING_FIELDS}
