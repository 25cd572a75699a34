"""One framework in its own process: ``python -m microbench.frameworks.worker FRAMEWORK``.

Protocol: one JSON object per line.  The worker answers each request on its stdout (the
framework's own prints are sent to stderr, so they can not corrupt the channel) with
``{"ok": true, ...}`` or ``{"ok": false, "kind": "missing"|"unsupported"|"error", "message": ...}``.

  (on start)                                   -> {"ok", "env": versions, threads, switches}
  {"cmd": "build", "op", "path", "precision",
   "inputs": in.npz, "outputs": out.npz}       -> {"ok", "info"}; out.npz holds y, h_n[, c_n]
  (op "conv" adds "geometry": stride, pad, dilation, groups, layout; out.npz holds y; with
   "phase" bwd_data or bwd_weights and dy among the inputs, one backward phase: out.npz holds
   dx, or dw[, db])
  {"cmd": "run"}                               -> {"ok"}   (one untimed call)
  {"cmd": "measure", "settings": {...}}        -> {"ok", "samples": [seconds, ...], "sampled":
                                                  reads of random calls' outputs, "calls"}
  {"cmd": "trace", "calls": n}                 -> {"ok"}   (n untimed calls between marker
                                                  lines on fd 1: profiles.onednn_trace)
  {"cmd": "quit"}                              -> {"ok"}, then exit

Thread counts and device are fixed at start (``--threads``, ``--device``): frameworks size their
pools once.  Timing uses :func:`microbench.harness.measure` when our package imports here, and
the standard-library copy of its rule (:mod:`.looptime`) under a foreign interpreter.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

from .common import Unsupported

ADAPTERS = {"torch": "torch_adapter", "tensorflow": "tensorflow_adapter", "jax": "jax_adapter",
            "mxnet": "mxnet_adapter", "chainer": "chainer_adapter"}


def thread_env(threads: int | None) -> dict:
    """Environment variables that size OpenMP/BLAS/TF pools, set before the framework loads."""
    if not threads:
        return {}
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n}


# Device memory on demand, set before the framework loads: by default JAX (XLA's client)
# preallocates 75% of the GPU's memory when it starts and TensorFlow maps nearly all of it, so
# with --rounds, where every framework's worker is open at once, the next worker or our own CuPy
# cases would run out of memory.  XLA_PYTHON_CLIENT_PREALLOCATE=false: jaxlib's
# generate_pjrt_gpu_plugin_options passes preallocate=False (the pool then grows as needed);
# TF_FORCE_GPU_ALLOW_GROWTH=true: TensorFlow's GPU allocator grows (the adapter also calls
# tf.config.experimental.set_memory_growth).  PyTorch's, CuPy's and MXNet's pools grow by
# themselves.  A value already in the environment is kept.
GPU_MEMORY_ENV = {"jax": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
                  "tensorflow": {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}}


def gpu_memory_env(framework: str, device: str) -> dict:
    """The variables that make ``framework`` take GPU memory as it needs it (none on a CPU)."""
    return dict(GPU_MEMORY_ENV.get(framework, {})) if device == "cuda" else {}


def _timing():
    """(name, measure(run, settings_dict, timer, flush) -> samples)."""
    try:
        from microbench.harness import CpuTimer, Settings, measure

        def run_measure(run, settings, timer=None, flush=None):
            return list(measure(run, Settings(**settings), timer or CpuTimer(),
                                before_sample=flush).samples)
        return "microbench.harness.measure", run_measure
    except ImportError:
        from .looptime import measure

        def run_measure(run, settings, timer=None, flush=None):
            return measure(run, settings, before_sample=flush,
                           sample=timer.sample if timer is not None else None)
        return "microbench.frameworks.looptime.measure", run_measure


def cpu_flusher():
    """Cold mode on the CPU: write twice the last-level cache before each sample (untimed)."""
    import numpy as np
    try:
        from microbench.caches import cpu_llc_bytes
        llc = cpu_llc_bytes()
    except ImportError:          # a foreign interpreter without our package: the common default
        llc = 32 << 20
    buf = np.ones(2 * llc // 8, dtype=np.float64)

    def flush():
        np.add(buf, 1.0, out=buf)
    return flush


def sampled_calls(timer, built):
    """(sampler, timer): ``timer`` (None: perf_counter around the call) wrapped so that a random
    sample of the calls' outputs is read after each call, untimed (microbench.callsample; the
    runner compares them with the last call's outputs)."""
    import numpy as np

    from ..callsample import CallSampler
    sampler = CallSampler()

    class Sampling:
        name = getattr(timer, "name", "perf_counter")

        def sample(self, fn):
            if timer is not None:
                seconds = timer.sample(fn)
            else:
                t0 = time.perf_counter()
                fn()
                seconds = time.perf_counter() - t0
            # converted as the "outputs" command does (a framework's tensors index differently)
            sampler.offer_lazy(lambda: [np.asarray(a) for a in built.outputs()])
            return seconds
    return sampler, Sampling()


def timing_mode(adapter, device: str, settings: dict):
    """(timer or None, flush or None, mode, timer name): what this worker really runs for the
    requested settings.  Graph replay is ours only: a framework row never runs in graph mode,
    and says so in its mode rather than being labelled with a mode it did not run."""
    make_timer = getattr(adapter, "timer", None)
    timer = make_timer(device) if make_timer is not None else None
    flush = None
    if settings.get("cold"):
        make_flush = getattr(adapter, "flusher", None)
        flush = make_flush(device) if make_flush is not None else None
        if flush is None and device == "cpu":
            flush = cpu_flusher()
    mode = "cold" if flush is not None else "warm"
    name = timer.name if timer is not None else (
        "perf_counter" if device == "cpu" else "perf_counter around a synchronizing call")
    return timer, flush, mode, name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="microbench.frameworks.worker")
    ap.add_argument("framework", choices=sorted(ADAPTERS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = ap.parse_args(argv)

    # The protocol gets a private copy of stdout; fd 1 (and print) go to stderr from here on.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    os.environ.update(thread_env(args.threads))
    for k, v in gpu_memory_env(args.framework, args.device).items():
        os.environ.setdefault(k, v)
    try:
        adapter = importlib.import_module(f"{__package__}.{ADAPTERS[args.framework]}")
        env = adapter.setup(args.threads, args.device)
    except ImportError as e:
        send({"ok": False, "kind": "missing", "message": f"{type(e).__name__}: {e}"})
        return 0
    except Unsupported as e:
        send({"ok": False, "kind": "unsupported", "message": str(e)})
        return 0
    except Exception as e:  # noqa: BLE001  (reported to the parent, which records it)
        send({"ok": False, "kind": "error", "message": _describe(e)})
        return 0
    import numpy as np
    env.update({"python": sys.version.split()[0], "executable": sys.executable,
                "numpy": np.__version__, "pid": os.getpid(),
                "threads_requested": args.threads, "device": args.device,
                "env": {k: os.environ[k] for k in sorted(set(thread_env(1)) | {
                    "OMP_WAIT_POLICY", "TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "MXNET_ENGINE_TYPE"}
                    | {k for d in GPU_MEMORY_ENV.values() for k in d})
                        if k in os.environ}})
    # Imported after the framework loaded its OpenMP (and after the environment was recorded):
    # our package's import-time defaults (kernels sets OMP_WAIT_POLICY) can not reach it.
    timing_name, run_measure = _timing()
    env["timing"] = timing_name
    send({"ok": True, "env": env})

    built = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            cmd = req.get("cmd")
            if cmd == "build":
                with np.load(req["inputs"]) as f:
                    arrays = {k: f[k] for k in f.files}
                t0 = time.perf_counter()
                if req["op"] == "conv" and req.get("phase"):
                    backward = getattr(adapter, "build_conv_backward", None)
                    if backward is None:
                        raise Unsupported(f"the {args.framework} adapter has no conv backward phases")
                    built = backward(req["path"], args.device, req["precision"], arrays, req["geometry"],
                                     req["phase"])
                elif req["op"] == "conv":
                    built = adapter.build_conv(req["path"], args.device, req["precision"], arrays, req["geometry"])
                else:
                    built = adapter.build(req["op"], req["path"], args.device, req["precision"], arrays)
                t1 = time.perf_counter()
                built.run()      # first call: traces/compiles where the framework does it lazily
                t2 = time.perf_counter()
                outs = [np.asarray(a) for a in built.outputs()]
                np.savez(req["outputs"], *outs)
                info = dict(built.info)
                info.update({"build_s": t1 - t0, "first_call_s": t2 - t1})
                send({"ok": True, "info": info})
            elif cmd == "run":
                built.run()
                send({"ok": True})
            elif cmd == "outputs":   # of the latest call: after "measure", the last timed one
                np.savez(req["outputs"], *[np.asarray(a) for a in built.outputs()])
                send({"ok": True})
            elif cmd == "trace":
                # oneDNN's verbose lines (switched on by the parent's environment) go to fd 1,
                # which is stderr.log here: the markers cut out this command's calls.
                _trace_marker("microbench-trace-begin")
                for _ in range(int(req.get("calls", 1))):
                    built.run()
                _trace_marker("microbench-trace-end")
                send({"ok": True})
            elif cmd == "measure":
                timer, flush, mode, tname = timing_mode(adapter, args.device, req["settings"])
                sampler, timer = sampled_calls(timer, built)
                samples = run_measure(built.run, req["settings"], timer, flush)
                send({"ok": True, "samples": samples, "mode": mode, "timer": tname,
                      "sampled": sampler.export(), "calls": sampler.calls})
            elif cmd == "quit":
                send({"ok": True})
                return 0
            else:
                send({"ok": False, "kind": "error", "message": f"unknown command {cmd!r}"})
        except Unsupported as e:
            send({"ok": False, "kind": "unsupported", "message": str(e)})
        except MemoryError:
            send({"ok": False, "kind": "error", "message": "out of memory in the worker"})
        except Exception as e:  # noqa: BLE001
            send({"ok": False, "kind": "error", "message": _describe(e)})
    return 0


def _trace_marker(text: str) -> None:
    """A line on fd 1 after everything C stdio buffered there (oneDNN's verbose printf)."""
    import ctypes
    sys.stdout.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
    os.write(1, f"\n{text}\n".encode())


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}{where}"


if __name__ == "__main__":
    sys.exit(main())
