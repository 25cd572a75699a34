"""The CPU explanation: PyTorch's fused and generic RNN paths under torch.profiler."""
import re

import pytest

from kernels.errors import BadInput
from profiles import cpu_profile


@pytest.mark.parametrize("name,cls", [
    ("aten::mkldnn_rnn_layer", "fused_rnn"), ("aten::lstm_cell", "fused_rnn"),
    ("aten::addmm", "gemm"), ("aten::mm", "gemm"), ("aten::sigmoid_", "pointwise"),
    ("aten::tanh", "pointwise"), ("aten::copy_", "copy"), ("aten::stack", "copy"),
    ("aten::lstm", "other"),
])
def test_cpu_classes(name, cls):
    assert cpu_profile.cpu_class(name) == cls


@pytest.mark.parametrize("op", ["lstm", "gru"])
def test_profile_torch_paths(op, capfd):
    pytest.importorskip("torch")
    fused, generic = cpu_profile.profile_torch(op, T=6, B=2, H=8)
    # Kineto's profiler_start/stop lines (12 of them on a GPU-less `explain`) stay out of stderr
    assert "USDT:" not in capfd.readouterr().err
    assert fused.label == "torch/fused" and generic.label == "torch/generic"
    if op == "lstm":  # one oneDNN primitive vs ops every step (torch's CPU GRU loops either way)
        assert generic.ops_per_step > 3 * fused.ops_per_step
        assert fused.share("fused_rnn") > 0.5
    assert generic.share("gemm") > 0 and fused.wall_s > 0 and generic.wall_s > 0
    text = " ".join(cpu_profile.sentences([fused, generic], op))
    assert f"{generic.ops_per_step:.1f} operator calls per step" in text
    assert re.search(r"\(\d+\.\dx\)", text)


def test_only_kinetos_start_and_stop_lines_are_held_back(capfd):
    import os
    with cpu_profile._without_kineto_markers():
        os.write(2, b"USDT:2026-12-07 20:52:03 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
                    b"ERROR: something the profiler wants said\n"
                    b"USDT:2026-12-07 20:52:03 1:1 SyncActivityProfilerHandler.cpp:59] profiler_stop\n")
    err = capfd.readouterr().err
    assert "something the profiler wants said" in err and "USDT" not in err


def test_profile_rejects_conv():
    with pytest.raises(BadInput, match="covers lstm and gru"):
        cpu_profile.profile_torch("conv", 2, 2, 2)
