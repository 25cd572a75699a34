"""Help texts say what the commands take: dtypes from the backend table, GPU-only variants
marked, explain's sizes named, and profile's own flags taken wherever they are written."""
from __future__ import annotations

import pytest

from kernels.backends import BACKENDS
from microbench import cli
from microbench.cli import build_parser


def _help(*cmd) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.choices[cmd[0]]
    return " ".join(p.format_help().split())


def test_rnn_dtype_help_lists_every_precision_a_backend_takes():
    text = _help("lstm")
    for b in BACKENDS.values():
        for d in b.dtypes:
            assert d in text.split("--dtype LIST comma list:")[1].split("(default fp32)")[0]
    assert "--cudnn run the cudnn variant (GPU only)" in text and "--persistent run the persistent variant (GPU only)" in text
    assert "--fused run the fused variant (" not in text          # both devices: no mark


def test_explain_sizes_are_named():
    text = _help("explain")
    assert "sequence length of the CPU profile" in text and "batch of the CPU profile" in text
    assert "hidden size of the CPU profile" in text


@pytest.mark.parametrize("argv", [["profile", "ncu", "lstm", "--fused", "--run"],
                                  ["profile", "ncu", "--run", "lstm", "--fused"]])
def test_profile_run_is_profiles_own_flag_wherever_it_is_written(argv, monkeypatch, capsys):
    import shutil
    import subprocess
    calls = []
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "call", lambda a: calls.append(a) or 0)
    assert cli.main(argv + ["--output", "rep"]) == 0
    [cmd] = calls
    tail = cmd[cmd.index("-m") + 1:]
    assert tail == ["microbench", "lstm", "--fused", "--nvtx", "on"] and "rep" in cmd


def test_variants_help_says_what_each_row_holds():
    text = _help("variants")
    assert "module:function" in text and "--frameworks" in text and "--json" in text
    assert "OP one op (lstm, gru, rnn, conv)" in text
