"""compare: verdicts from a Mann-Whitney U test over the stored samples plus a minimum effect
size, with the p-value per row."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kernels.errors import BadInput
from microbench import cli
from microbench.commands import compare as mc
from microbench.stats import Measurement


def _rec(samples, variant="fused", H=64) -> dict:
    m = Measurement(list(samples))
    return {"schema": "microbench.result/1", "op": "lstm", "variant": variant, "backend": "numpy",
            "device": "cpu", "dtype": "fp32", "shape": {"T": 10, "B": 8, "I": H, "H": H, "L": 1},
            "options": {"plan": None, "threads": 1, "seed": 0, "rung": None}, "label": f"{variant}/numpy",
            "status": "ok", "error": None, "env_id": "x", "env": {}, "samples_s": list(samples),
            "check": {"max_rel_err": 0.0, "tol": 1e-5, "passed": True}, "stats": m.to_dict()}


def _timings(rng, n, median, spread=0.04):
    """Timing-like samples: log-normal around the median with a few slow outliers."""
    s = median * np.exp(rng.normal(0, spread, n))
    s[rng.random(n) < 0.05] *= 3
    return s.tolist()


def test_identical_code_is_not_called_different():
    rng = np.random.default_rng(0)
    verdicts = []
    for k in range(40):
        med = 1e-4 * (1 + k)
        drift = 1 + rng.uniform(-0.02, 0.02)            # runs minutes apart drift a little
        a, b = _rec(_timings(rng, 200, med)), _rec(_timings(rng, 200, med * drift))
        verdicts.append(mc.verdict(a["stats"], b["stats"], a["samples_s"], b["samples_s"]))
    assert not {"B faster", "B slower"} & set(verdicts)
    assert "below 5%" in verdicts                        # some drift is real, and said to be small


def test_real_changes_are_found_with_their_confidence():
    rng = np.random.default_rng(1)
    a = _rec(_timings(rng, 30, 1e-3))
    b = _rec(_timings(rng, 30, 1.2e-3))
    v, p = mc.judge(a["stats"], b["stats"], a["samples_s"], b["samples_s"])
    assert v == "B slower" and p < 1e-6
    v, p = mc.judge(b["stats"], a["stats"], b["samples_s"], a["samples_s"])
    assert v == "B faster"
    # 5 samples a side, fully apart: p = 2/252, significant at 0.01 but not at 0.005
    a, b = _rec([1.0, 1.01, 1.02, 1.03, 1.04]), _rec([2.0, 2.01, 2.02, 2.03, 2.04])
    assert mc.judge(a["stats"], b["stats"], a["samples_s"], b["samples_s"]) == ("B slower", pytest.approx(2 / 252))
    assert mc.verdict(a["stats"], b["stats"], a["samples_s"], b["samples_s"], alpha=0.005) == "within noise"


def test_without_samples_the_iqr_rule_and_min_effect_decide():
    a, b = _rec([1.0]), _rec([1.03])
    a["stats"].update(q1_s=0.99, q3_s=1.005)
    b["stats"].update(q1_s=1.02, q3_s=1.04)
    assert mc.judge(a["stats"], b["stats"]) == ("below 5%", None)
    assert mc.verdict(a["stats"], b["stats"], min_effect=0.01) == "B slower"


def test_cli_prints_p_per_row_and_checks_its_options(tmp_path, capsys):
    rng = np.random.default_rng(2)
    fa, fb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    fa.write_text("".join(json.dumps(_rec(_timings(rng, 50, 1e-3 * k), f"v{k}")) + "\n" for k in (1, 2, 3)))
    fb.write_text("".join(json.dumps(_rec(_timings(rng, 50, 1e-3 * k * f), f"v{k}")) + "\n"
                          for k, f in ((1, 1.0), (2, 1.3), (3, 1.01))))
    assert cli.main(["compare", str(fa), str(fb)]) == 0
    out = capsys.readouterr().out
    assert "B slower" in out and "Mann-Whitney" in out
    assert "1 differ (p < 0.01 and at least 5%)" in out
    for bad in (["--alpha", "0"], ["--alpha", "1.5"], ["--min-effect", "-0.1"]):
        with pytest.raises(BadInput, match="outside"):
            _run(fa, fb, bad)


def _run(fa, fb, extra):
    from microbench.cli import build_parser
    args = build_parser().parse_args(["compare", str(fa), str(fb), *extra])
    return args.func(args)


def test_smoke_records_are_never_judged_as_measurements(tmp_path, capsys):
    """Two smoke runs (MICROBENCH_SMOKE) pair with each other, but their capped timings are not
    measurements: no faster/slower verdict, and the summary says why.  A smoke record never pairs
    with a measured one (its mark is part of its identity)."""
    rng = np.random.default_rng(3)
    smoke = lambda r: {**r, "options": {**r["options"], "smoke": True}}      # noqa: E731
    fa, fb, fm = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "m.jsonl"
    fa.write_text(json.dumps(smoke(_rec(_timings(rng, 50, 1e-3)))) + "\n")
    fb.write_text(json.dumps(smoke(_rec(_timings(rng, 50, 2e-3)))) + "\n")
    fm.write_text(json.dumps(_rec(_timings(rng, 50, 2e-3))) + "\n")
    assert cli.main(["compare", str(fa), str(fb)]) == 0
    out = capsys.readouterr().out
    assert mc.SMOKE_VERDICT in out and "B slower" not in out and "1 from smoke runs" in out
    with pytest.raises(BadInput, match="no case with a measurement appears in both"):
        _run(fa, fm, [])
