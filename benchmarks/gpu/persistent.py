"""Device run of the persistent LSTM/GRU (issue 8): correctness, a small case for
compute-sanitizer, and timings against PyTorch nn.LSTM/nn.GRU (cuDNN) in the same process.

    python benchmarks/gpu/persistent.py check   --out DIR     # awkward shapes vs float64 reference
    python benchmarks/gpu/persistent.py small                 # one tiny launch (for the sanitizer)
    python benchmarks/gpu/persistent.py time    --out DIR     # T=100 table, JSON lines + text

Timings: CUDA events around each call, median of --reps after --warmup calls; ours and cuDNN
side by side, same weights, same shape; the ratio is what to report (DESIGN.md: absolute cuDNN
times move between machines).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

SHAPES = [(256, 1), (512, 1), (1024, 1), (256, 16), (512, 64)]


def _median_ms(fn, warmup, reps):
    import cupy
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    s, e = cupy.cuda.Event(), cupy.cuda.Event()
    out = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        e.synchronize()
        out.append(cupy.cuda.get_elapsed_time(s, e))
    return float(np.median(out)), float(np.percentile(out, 25)), float(np.percentile(out, 75))


def cmd_check(args):
    from kernels.errors import Unsupported
    from microbench.cases.persistent import build_persistent
    from microbench.problems import RNNProblem
    rows, bad = [], 0
    for cell in ("lstm", "gru"):
        for prec in ("fp32", "fp16"):
            for T, B, H in [(1, 1, 1), (5, 3, 33), (7, 3, 129), (4, 5, 151), (3, 17, 1024),
                            (100, 64, 512), (100, 1, 1024), (2, 2, 1320)]:
                rec = dict(cell=cell, precision=prec, T=T, B=B, H=H)
                try:
                    prep = build_persistent(RNNProblem(cell, T, B, H, H), 0, precision=prec)
                    c = prep.check()
                    rec.update(passed=c.passed, max_rel_err=c.max_rel_err, tol=c.tol,
                               geometry=prep.info["geometry"])
                    bad += not c.passed
                except Unsupported as e:
                    rec.update(skipped=str(e))
                except Exception as e:  # record, never drop (STYLE avoid 4)
                    rec.update(passed=False, error=f"{type(e).__name__}: {e}")
                    bad += 1
                print(json.dumps(rec), flush=True)
                rows.append(rec)
    Path(args.out, "persistent-check.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 1 if bad else 0


def cmd_small(args):
    from microbench.cases.persistent import build_persistent
    from microbench.problems import RNNProblem
    ok = True
    for cell in ("lstm", "gru"):
        # H=40: 40 blocks of 1 unit; B=5: batch tile 4 plus padding rows; T=3: two grid barriers
        prep = build_persistent(RNNProblem(cell, 3, 5, 40, 40), 0, precision="fp32")
        c = prep.check()
        print(cell, prep.info["geometry"], c)
        ok &= c.passed
    return 0 if ok else 1


def _torch_rnn(cell, H, B, prec, params, x_np, h0_np, c0_np):
    import torch
    dt = torch.float16 if prec == "fp16" else torch.float32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H, 1).cuda().to(dt)
    lay = params.layers[0]
    with torch.no_grad():
        for name, a in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), lay.arrays()):
            getattr(mod, name).copy_(torch.as_tensor(np.asarray(a, np.float32)))
    x = torch.as_tensor(x_np).cuda().to(dt)
    h0 = torch.as_tensor(h0_np).cuda().to(dt)[None]
    st = (h0, torch.as_tensor(c0_np).cuda().to(dt)[None]) if cell == "lstm" else h0

    def run():
        with torch.no_grad():
            return mod(x, st)
    return run


def cmd_time(args):
    import cupy
    import torch
    from kernels import persistent as kp
    from kernels.errors import Unsupported
    from microbench.cases.rnn import make_inputs
    from microbench.problems import RNNProblem
    T = args.T
    rows = []
    props = cupy.cuda.runtime.getDeviceProperties(0)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    for cell in ("lstm", "gru"):
        for prec in ("fp32", "fp16"):
            for H, B in SHAPES:
                rec = dict(cell=cell, precision=prec, T=T, H=H, B=B, gpu=gpu)
                prob = RNNProblem(cell, T, B, H, H)
                inp = make_inputs(prob, 0, prec)
                try:
                    impl = kp.PersistentRNN(inp["params"], prec)
                    rec["geometry"] = impl.geometry(B).describe()
                    x, h0 = cupy.asarray(inp["x"]), cupy.asarray(inp["h0"][0])
                    c0 = cupy.asarray(inp["c0"][0]) if cell == "lstm" else None
                    ours = (lambda: impl(x, h0, c0)) if cell == "lstm" else (lambda: impl(x, h0))
                    rec["persistent_ms"], rec["persistent_q1"], rec["persistent_q3"] = \
                        _median_ms(ours, args.warmup, args.reps)
                except Unsupported as e:
                    rec["persistent_skipped"] = str(e)
                tr = _torch_rnn(cell, H, B, prec, inp["params"], inp["x"], inp["h0"][0],
                                inp["c0"][0] if cell == "lstm" else None)
                torch.cuda.synchronize()
                rec["cudnn_ms"], rec["cudnn_q1"], rec["cudnn_q3"] = _median_ms(tr, args.warmup, args.reps)
                if "persistent_ms" in rec:
                    rec["speedup"] = rec["cudnn_ms"] / rec["persistent_ms"]
                print(json.dumps(rec), flush=True)
                rows.append(rec)
    out = Path(args.out)
    (out / "persistent-time.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"{gpu}, T={T}, median ms (ours vs PyTorch cuDNN, same process)",
             f"{'cell':5} {'dtype':5} {'H':>5} {'B':>3} {'persistent':>11} {'cuDNN':>8} {'speedup':>8}"]
    for r in rows:
        lines.append(f"{r['cell']:5} {r['precision']:5} {r['H']:>5} {r['B']:>3} "
                     f"{r.get('persistent_ms', float('nan')):>11.3f} {r['cudnn_ms']:>8.3f} "
                     f"{r.get('speedup', float('nan')):>8.2f}")
    (out / "persistent-time.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("check", "small", "time"))
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args(argv)
    t0 = time.time()
    rc = {"check": cmd_check, "small": cmd_small, "time": cmd_time}[args.what](args)
    print(f"[{args.what}] {time.time() - t0:.1f} s, rc={rc}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
