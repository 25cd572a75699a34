"""Our direct cuDNN RNN calls next to PyTorch ``nn.LSTM``/``nn.GRU`` (cuDNN underneath), same
process, same weights, same GPU.  Not run in CI; needs a GPU, CuPy, torch and cuDNN 9.

    python benchmarks/gpu/cudnn_vs_torch.py [--ops lstm,gru] [--dtypes fp32,fp16] [--json out.jsonl]

For each shape (H512 B64, H1024 B1, H256 B16; T=100, one layer, I=H) and precision it prints the
median forward time of every cuDNN RNN algorithm through kernels.cudnn.rnn (skipped ones with
cuDNN's reason), PyTorch's time, which algorithm PyTorch used (read from the names of the kernels
its forward launched: persistent kernels vs the per-step GEMM + elementwise kernels), the ratio
ours/torch for the algorithm PyTorch picked (target: within 5%), and the outputs' error against
the float64 reference.  fp32 runs with TF32 off on both sides.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

SHAPES = ((512, 64), (1024, 1), (256, 16))
T = 100


def torch_module(op, params, precision):
    import torch
    H, I = params.hidden_size, params.input_size
    cls = torch.nn.LSTM if op == "lstm" else torch.nn.GRU
    m = cls(I, H, num_layers=params.num_layers).cuda()
    dt = torch.float16 if precision == "fp16" else torch.float32
    with torch.no_grad():
        for l, layer in enumerate(params.layers):  # same canonical order as PyTorch's
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                t = getattr(m, f"{name.replace('w_', 'weight_').replace('b_', 'bias_')}_l{l}")
                t.copy_(torch.from_numpy(np.asarray(getattr(layer, name), dtype=np.float32)))
    m = m.to(dt)
    m.flatten_parameters()
    return m


def time_torch(fn, settings):
    import torch
    from microbench.harness import measure

    class TorchTimer:
        name = "torch-cuda-events"

        def sample(self, f):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            f()
            e.record()
            e.synchronize()
            return s.elapsed_time(e) / 1e3

        def overhead(self):
            return 0.0

    return measure(fn, settings, TorchTimer())


def torch_kernels(fn):
    """Names of the GPU kernels one call launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        import torch
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})


def guess_algo(kernels):
    low = " ".join(kernels).lower()
    if "persist" in low or "tile16" in low or "lstm_tile" in low:
        return "persist_static"
    return "standard"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default="lstm,gru")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--json", default="")
    ap.add_argument("--min-time", type=float, default=0.5)
    args = ap.parse_args(argv)

    import cupy as cp
    import torch
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    # One cuDNN build in the process: PyTorch loads its own first, and our binding is pointed at
    # that same directory (two builds under one soname could mix their sub-libraries).
    torch.backends.cudnn.version()
    from kernels.cudnn import lib as cudnn_lib
    torch_dir = cudnn_lib.loaded_directory()
    if torch_dir is None:
        sys.exit("PyTorch did not load libcudnn.so.9 into this process; cannot share its cuDNN")
    os.environ[cudnn_lib.ENV_VAR] = torch_dir
    from kernels.cudnn.rnn import CUDNN_RNN_ALGO, CudnnRNN
    from kernels.errors import Unsupported
    from microbench.cases.rnn import compare, make_inputs, reference_outputs
    from microbench.harness import CudaEventTimer, Settings, measure
    from microbench.problems import RNNProblem

    settings = Settings(warmup=0.2, min_time=args.min_time, max_time=10.0)
    out = open(args.json, "w") if args.json else None
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__} "
          f"(cuDNN {torch.backends.cudnn.version()}), ours: cuDNN "
          f"{__import__('kernels.cudnn', fromlist=['version']).version()}")
    for op in args.ops.split(","):
        for precision in args.dtypes.split(","):
            for H, B in SHAPES:
                problem = RNNProblem(op, T=T, B=B, I=H, H=H)
                inp = make_inputs(problem, 0, precision)
                ref = reference_outputs(problem, 0, precision)
                m = torch_module(op, inp["params"], precision)
                dt = m.weight_ih_l0.dtype
                tx = torch.from_numpy(inp["x"].astype(np.float32)).cuda().to(dt)
                th = torch.from_numpy(inp["h0"].astype(np.float32)).cuda().to(dt)
                tc = torch.from_numpy(inp["c0"].astype(np.float32)).cuda().to(dt) if op == "lstm" else None

                def tfn():
                    with torch.no_grad():
                        return m(tx, (th, tc) if op == "lstm" else th)
                tm = time_torch(tfn, settings)
                picked = guess_algo(torch_kernels(tfn))
                row = {"op": op, "precision": precision, "H": H, "B": B, "T": T,
                       "torch_ms": tm.median * 1e3, "torch_algo": picked, "ours": {}}
                for algo in CUDNN_RNN_ALGO:
                    try:
                        rnn = CudnnRNN(inp["params"], batch=B, seq_len=T, algo=algo,
                                       precision=precision)
                    except Unsupported as e:
                        row["ours"][algo] = {"skipped": str(e)}
                        continue
                    with rnn:
                        x, h0 = cp.asarray(inp["x"]), cp.asarray(inp["h0"])
                        c0 = cp.asarray(inp["c0"]) if op == "lstm" else None
                        outs = rnn(x, h0, c0)
                        host = [a.get() for a in (outs if op == "lstm" else outs[:2])]
                        chk = compare(host, ref, precision)
                        ms = measure(lambda: rnn(x, h0, c0), settings, CudaEventTimer()).median * 1e3
                    row["ours"][algo] = {"ms": ms, "max_rel_err": chk.max_rel_err,
                                         "passed": chk.passed}
                same = row["ours"].get(picked, {})
                row["ratio_same_algo"] = same.get("ms", float("nan")) / row["torch_ms"]
                cells = "  ".join(f"{a}={v['ms']:.3f}ms" if "ms" in v else f"{a}=skip"
                                  for a, v in row["ours"].items())
                print(f"{op} {precision} H{H} B{B}: torch {row['torch_ms']:.3f} ms ({picked}); "
                      f"{cells}; ours/torch same algo {row['ratio_same_algo']:.3f}")
                for a, v in row["ours"].items():
                    if "skipped" in v:
                        print(f"    {a}: {v['skipped']}")
                if out:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
    if out:
        out.close()


if __name__ == "__main__":
    main()
