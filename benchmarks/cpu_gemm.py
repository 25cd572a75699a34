"""The two GEMMs of a fused LSTM layer through each CPU provider, in one process.

    python3 benchmarks/cpu_gemm.py [--threads 1,2] [-H 512] [-B 64] [-T 100] [--reps 50]

Rows: NumPy/OpenBLAS (``x @ W`` on a transposed contiguous copy, what BLAS pretranspose runs),
oneDNN ``matmul`` and oneDNN ``inner_product``, each with its weights packed once
(:mod:`kernels.onednn.matmul`), writing into a buffer made once.  Per provider: the median and
minimum of one step GEMM (B x H @ H x 4H) and of the hoisted input GEMM (T*B x H @ H x 4H), the
implementation oneDNN picked and whether it packed the weights.  Every result is checked against
float64 before it is timed.  It shows why :mod:`fusion.gemm` times both oneDNN kinds per shape
when a case is built (``find_fastest``) rather than fixing one: the winner changes with M.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kernels.onednn.matmul import PackedInnerProduct, PackedMatmul  # noqa: E402
from microbench import threads as mthreads  # noqa: E402


def _time(f, reps: int) -> tuple:
    f()
    f()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return float(np.median(t)), float(np.min(t))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-H", type=int, default=512)
    ap.add_argument("-B", type=int, default=64)
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("--reps", type=int, default=50, help="timed calls of the step GEMM "
                    "(the hoisted one gets a tenth, at least 5)")
    args = ap.parse_args(argv)
    counts = mthreads.parse_threads(args.threads)
    mthreads.prepare_numba_pool(counts)
    rng = np.random.default_rng(0)
    K, N = args.H, 4 * args.H
    w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)     # cast last: fp32 stays fp32
    print(f"fp32, K={K} N={N}; times in ms (median / min); err: max |got - float64| / max |float64|")
    for n in counts:
        with mthreads.limit(n):
            for what, m, reps in (("step", args.B, args.reps),
                                  ("hoisted", args.T * args.B, max(5, args.reps // 10))):
                x = rng.standard_normal((m, K)).astype(np.float32)
                out = np.empty((m, N), np.float32)
                assert x.dtype == w.dtype == np.float32      # a float64 operand would time DGEMM
                ref = x.astype(np.float64) @ w
                provs = [("numpy/openblas", lambda x=x, out=out: np.matmul(x, w, out=out), "-")]
                for cls in (PackedMatmul, PackedInnerProduct):
                    p = cls(w, m=m)
                    provs.append((f"onednn {p.kind}", lambda p=p, x=x, out=out: p(x, out),
                                  f"{p.impl}, weights {'packed' if p.packed else 'plain'}"))
                for name, f, impl in provs:
                    f()
                    err = float(np.abs(out - ref).max() / np.abs(ref).max())
                    if err > 1e-5:
                        raise SystemExit(f"{name} {what}: relative error {err:.1e} > 1e-5")
                    med, lo = _time(f, reps)
                    print(f"threads={n} {what:7s} M={m:5d}  {name:22s} {1e3 * med:9.3f} / {1e3 * lo:9.3f}"
                          f"  err {err:.1e}  {impl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
