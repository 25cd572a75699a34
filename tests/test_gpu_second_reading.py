"""The second reading of the GPU code against the libraries' sources (issue: framework GPU training
and conv backward branches, cuDNN backward algorithms, ``scale`` on NCCL, the set-up script's GPU
branch).  Each defect has a test that runs without a GPU: the real torch flags, jaxlib's own option
parser and the installed jaxlib source where they exist here, stand-ins (a driver, a CuPy that
counts host-to-device copies, a TensorFlow) where a GPU would be needed."""
from __future__ import annotations

import ctypes
import importlib.util
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from kernels.errors import Unsupported

ROOT = Path(__file__).resolve().parent.parent


# -- 1. scale's DDP rows run cuDNN in the precision they are labelled with -------------------------
@pytest.fixture
def torch_flags():
    """The real torch, its TF32 switches at torch's defaults (cuDNN TF32 allowed) for the test and
    as they were afterwards."""
    torch = pytest.importorskip("torch")
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True           # torch 2.13's default
    yield torch
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.allow_tf32 = saved[1]
    torch.backends.cudnn.allow_tf32 = saved[2]


@pytest.mark.parametrize("cell", ["lstm", "conv"])
def test_ddp_rows_turn_tf32_off_for_fp32(torch_flags, monkeypatch, cell):
    """torch allows TF32 in cuDNN by default, and ATen's RNN and conv descriptors then permit it
    (CUDNN_DEFAULT_MATH): an fp32 DDP row would carry ~1e-3 gradient error and fail its check.
    Building the row must set the switches its label says, as the framework adapter does."""
    torch = torch_flags
    from microbench import scaling
    monkeypatch.setattr(scaling.DDPStep, "_wrap", lambda self, g, group, module, bucket_mb: None)
    g = types.SimpleNamespace(device="cpu", torch_device=lambda: torch.device("cpu"))
    if cell == "conv":
        problem = scaling.conv_problem(dict(C=2, H=5, W=5, K=3, R=3, S=3, pad=1), 2)
        step_class = scaling.DDPConvStep
    else:
        problem = scaling.global_problem("lstm", 3, 4, 5, 1, 2)
        step_class = scaling.DDPStep
    cfg = scaling.Config("ddp", "weak", 1, 2, cell)
    inp = scaling.rank_inputs(problem, 0, "fp32", 0, 2)
    step = step_class(g, None, cfg, problem, inp, "fp32", 25.0)
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    for op in (torch.backends.cudnn.rnn, torch.backends.cudnn.conv):
        assert op.fp32_precision != "tf32"
    assert step.switches["cudnn.allow_tf32"] is False


def test_the_torch_adapter_sets_the_same_switches(torch_flags):
    from microbench.frameworks import torch_adapter
    torch = torch_flags
    on = torch_adapter.set_precision(torch, "tf32")
    assert on["cudnn.allow_tf32"] and on["cudnn.rnn.fp32_precision"] == "tf32"
    off = torch_adapter.set_precision(torch, "fp32")
    assert off == {"float32_matmul_precision": "highest", "cuda.matmul.allow_tf32": False,
                   "cudnn.allow_tf32": False, "cudnn.conv.fp32_precision": "none",
                   "cudnn.rnn.fp32_precision": "none"}
    with torch.backends.cudnn.flags(enabled=False):   # the nocudnn rows: legacy reads must work
        pass


# -- 2. scale's own GPU step keeps the weights on the device ----------------------------------------
def test_ours_gpu_step_copies_no_weights_to_the_device_per_step(monkeypatch):
    """kernels.backward converts the weights with xp.asarray in every forward and backward: with
    NumPy weights on a GPU rank each timed step made blocking host-to-device copies."""
    torch = pytest.importorskip("torch")
    from microbench import scaling
    from tests import fakecuda
    cp = fakecuda.install(monkeypatch)
    problem = scaling.global_problem("lstm", 3, 4, 5, 2, 2)
    inp = scaling.rank_inputs(problem, 0, "fp32", 0, 2)
    host = {id(a) for layer in inp["params"].layers for a in layer.arrays()}
    copies = []

    class Device(np.ndarray):
        """An array in device memory: converting one of these again is no copy, as in CuPy."""

    def asarray(a, dtype=None):
        if isinstance(a, Device) and (dtype is None or a.dtype == np.dtype(dtype)):
            return a
        if id(a) in host:
            copies.append(np.shape(a))
        return np.array(a, dtype=dtype).view(Device)
    cp.asarray = asarray

    class Done:
        def wait(self):
            pass
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: Done())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    g = types.SimpleNamespace(device="cuda", torch_device=lambda: torch.device("cpu"))
    step = scaling.OursStep(g, None, scaling.Config("ours", "weak", 1, 2, "lstm"), problem, inp, "fp32", 25.0)
    built = len(copies)
    assert built == 8                    # once each, when the step is built (2 layers x 4 arrays)
    for _ in range(2):
        step.step()
    assert len(copies) == built, f"{len(copies) - built} weight copies inside two timed steps"


# -- 4. JAX's cuDNN LSTM is float32 only -----------------------------------------------------------
def _lstm_arrays():
    from kernels.params import LSTMParams
    from microbench.frameworks.convert import pack_layers
    p = LSTMParams.random(3, 4, 1, seed=0, dtype=np.float32)
    return {"x": np.zeros((2, 2, 3), np.float32), "h0": np.zeros((1, 2, 4), np.float32),
            "c0": np.zeros((1, 2, 4), np.float32), **pack_layers([l.arrays() for l in p.layers])}


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp64"])
def test_jax_cudnn_rows_other_than_fp32_skip_with_the_reason(monkeypatch, precision):
    from microbench.cases import frameworks as fcases
    from microbench.frameworks import client
    from microbench.problems import RNNProblem

    def no_worker(*a, **k):
        raise AssertionError("a worker was started for a row that cannot run")
    monkeypatch.setattr(client, "Worker", no_worker)
    problem = RNNProblem("lstm", 2, 2, 3, 4, 1)
    with pytest.raises(Unsupported, match=r"jax/cudnn runs fp32 only.*gpu_rnn\.py"):
        fcases.build_framework(problem, 0, framework="jax", path="cudnn", device="cuda", precision=precision)


def test_the_jax_adapter_refuses_them_before_touching_a_device():
    pytest.importorskip("jax")
    from microbench.frameworks import common, jax_adapter
    import jax
    jax_adapter._jax = jax
    with pytest.raises(common.Unsupported, match="float32 only"):
        jax_adapter.build("lstm", "cudnn", "cuda", "fp16", _lstm_arrays())


def test_the_installed_jaxlib_lowers_float32_and_float64_only():
    """What the skip reason says, read off the installed jaxlib (0.10.2): gpu_rnn.py maps f32 and
    f64 outputs and raises for anything else."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None:
        pytest.skip("jaxlib is not installed (the frameworks extra installs it)")
    text = (Path(spec.origin).parent / "gpu_rnn.py").read_text()
    lowering = text[text.index("def _rnn_fwd_lowering"):text.index("output_type = ")]
    assert "np.float32" in lowering and "np.float64" in lowering
    assert "float16" not in lowering and "bfloat16" not in lowering
    assert "Unknown output type" in lowering


# -- 5. the GPU in the header and the environment record ------------------------------------------
class StandInDriver:
    """libcuda for one GPU: name, total memory, compute capability, the CUDA version it supports."""

    def __init__(self, name: bytes, mem_gib: float, cc=(9, 0), cuda=13000):
        self.name, self.mem, self.cc, self.cuda = name, int(mem_gib * 2**30), cc, cuda

    def cuInit(self, flags):
        return 0

    def cuDeviceGetCount(self, n):
        n._obj.value = 1
        return 0

    def cuDeviceGet(self, dev, k):
        if k != 0:
            return 101
        dev._obj.value = 0
        return 0

    def cuDeviceGetName(self, buf, size, dev):
        ctypes.memmove(buf, self.name + b"\0", len(self.name) + 1)
        return 0

    def cuDeviceTotalMem_v2(self, total, dev):
        total._obj.value = self.mem
        return 0

    def cuDeviceGetAttribute(self, out, attr, dev):
        out._obj.value = {75: self.cc[0], 76: self.cc[1]}[attr]
        return 0

    def cuDriverGetVersion(self, v):
        v._obj.value = self.cuda
        return 0


def _stand_in_gpu(monkeypatch, name: bytes, mem_gib: float):
    from kernels import cudnn, devices, gpu
    drv = StandInDriver(name, mem_gib)
    monkeypatch.setattr(gpu, "_load_driver", lambda: drv)
    monkeypatch.setattr(gpu, "detect", lambda: (True, f"1 GPU: {name.decode()}"))
    monkeypatch.setattr(gpu, "_SELECTED", 0)
    nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlSystemGetDriverVersion=lambda: "580.82.07")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(cudnn, "describe", lambda: {"available": True, "version": "9.28.1",
                                                    "path": "/stand-in/nvidia/cudnn/lib"})


def test_the_header_and_record_name_the_gpu(monkeypatch):
    from rich.console import Console

    from microbench import env as menv
    from microbench import report
    _stand_in_gpu(monkeypatch, b"NVIDIA H100 80GB HBM3", 79.2)
    env = menv.collect(cheap=True)
    gpu = env["gpu"]
    assert gpu["available"] and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert (gpu["memory_gib"], gpu["compute_capability"], gpu["cuda"], gpu["driver"]) == (
        79.2, "9.0", "13.0", "580.82.07")
    out = io.StringIO()
    report.header(env, Console(file=out, width=200))
    line = next(x for x in out.getvalue().splitlines() if x.startswith("GPU"))
    for want in ("NVIDIA H100 80GB HBM3", "79.2 GiB", "sm_90", "driver 580.82.07", "CUDA 13.0", "cuDNN 9.28.1"):
        assert want in line, (want, line)
    h100 = env["env_id"]
    _stand_in_gpu(monkeypatch, b"NVIDIA H200", 139.8)
    assert menv.collect(cheap=True)["env_id"] != h100     # same host software, another GPU


# -- 6. JAX and TensorFlow take GPU memory as they need it -----------------------------------------
_WORKER_PROBE = """
import json, os, sys, types
from microbench.frameworks import worker
keys = sys.argv[3:]
mod = types.ModuleType("stand-in adapter")
mod.setup = lambda threads, device: {"seen": {k: os.environ.get(k) for k in keys}}
sys.modules["microbench.frameworks." + worker.ADAPTERS[sys.argv[1]]] = mod
sys.exit(worker.main([sys.argv[1], "--device", sys.argv[2]]))
"""
_MEMORY_KEYS = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_CLIENT_MEM_FRACTION",
                "TF_FORCE_GPU_ALLOW_GROWTH")


def _environment_at_setup(framework: str, device: str) -> dict:
    """The environment a real worker process gives its adapter's setup (a stand-in adapter)."""
    env = {k: v for k, v in os.environ.items() if k not in _MEMORY_KEYS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _WORKER_PROBE, framework, device, *_MEMORY_KEYS], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    first = json.loads(r.stdout.splitlines()[0])
    assert first["ok"], first
    return first["env"]["seen"]


def _startup_claim(framework: str, seen: dict, total: float, monkeypatch) -> float:
    """GPU memory a framework takes when it starts, under the environment its worker gave it.
    JAX: jaxlib's own parser of those variables (generate_pjrt_gpu_plugin_options), with XLA's
    defaults where an option is absent (preallocate, 75%: JAX's "GPU memory allocation" notes).
    TensorFlow: nearly all of it unless memory growth is on (TensorFlow's GPU guide)."""
    if framework == "jax":
        xla_client = pytest.importorskip("jaxlib.xla_client")
        with monkeypatch.context() as m:
            for k in _MEMORY_KEYS:
                m.delenv(k, raising=False)
            for k, v in seen.items():
                if v is not None:
                    m.setenv(k, v)
            opts = xla_client.generate_pjrt_gpu_plugin_options()
        return total * opts.get("memory_fraction", 0.75) if opts.get("preallocate", True) else 0.0
    if framework == "tensorflow":
        return 0.0 if seen.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true" else 0.95 * total
    return 0.0


def test_framework_workers_under_rounds_fit_a_gpu_beside_our_cases(monkeypatch):
    """With --rounds every framework's worker is open at once: their start-up claims and one of
    our CuPy cases must fit an 80 GiB budget (the default settings claim 75% + ~95%)."""
    budget, ours = 80.0, 4.0
    claims = {fw: _startup_claim(fw, _environment_at_setup(fw, "cuda"), budget, monkeypatch)
              for fw in ("jax", "tensorflow", "torch")}
    assert sum(claims.values()) + ours <= budget, claims
    assert _environment_at_setup("jax", "cpu")["XLA_PYTHON_CLIENT_PREALLOCATE"] is None   # CPU: untouched


def test_tensorflow_setup_turns_memory_growth_on(monkeypatch):
    grown = {}
    gpu0 = types.SimpleNamespace(name="/physical_device:GPU:0")
    experimental = types.SimpleNamespace(
        enable_tensor_float_32_execution=lambda on: None, tensor_float_32_execution_enabled=lambda: False,
        set_memory_growth=lambda dev, on: grown.__setitem__(dev.name, on),
        get_memory_growth=lambda dev: grown.get(dev.name, False))
    threading = types.SimpleNamespace(set_intra_op_parallelism_threads=lambda n: None,
                                      set_inter_op_parallelism_threads=lambda n: None,
                                      get_intra_op_parallelism_threads=lambda: 0,
                                      get_inter_op_parallelism_threads=lambda: 0)
    tf = types.ModuleType("tensorflow")
    tf.__version__ = "2.21.0 (stand-in)"
    tf.config = types.SimpleNamespace(threading=threading, experimental=experimental,
                                      list_physical_devices=lambda kind: [gpu0] if kind == "GPU" else [])
    tf.sysconfig = types.SimpleNamespace(get_build_info=lambda: {"cuda_version": "12.5.1"})
    keras = types.ModuleType("keras")
    keras.__version__ = "3 (stand-in)"
    keras.backend = types.SimpleNamespace(backend=lambda: "tensorflow")
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    monkeypatch.setitem(sys.modules, "keras", keras)
    from microbench.frameworks import tensorflow_adapter
    env = tensorflow_adapter.setup(None, "cuda")
    assert grown == {"/physical_device:GPU:0": True} and env["memory_growth"] == [True]


# -- 3. benchmarks/gpu/all.sh: every GPU test file runs, one summary line each ----------------------
def test_gpu_script_runs_every_test_file_after_a_failure(tmp_path):
    """A stand-in python: one test file fails, the others pass; every file still runs and gets
    its line, the failure sets the exit code, and the bench steps run after the tests."""
    import re
    fake = tmp_path / "python"
    fake.write_text("#!/bin/bash\n"
                    'if [ "$1" = -c ]; then exit 0; fi\n'
                    'if [ "$2" = pytest ]; then f="${@: -1}"; echo "ran $f" >> "$LOG";\n'
                    '  case "$f" in *test_cudnn.py) echo "1 failed, 4 passed in 0.1s"; exit 1;; esac\n'
                    '  echo "3 passed in 0.1s"; exit 0; fi\n'
                    'echo "bench $*" >> "$LOG"\n')
    fake.chmod(0o755)
    log, out = tmp_path / "calls.log", tmp_path / "out"
    env = dict(os.environ, PY=str(fake), OUT=str(out), LOG=str(log),
               PATH=f"{tmp_path}:{os.environ['PATH']}")
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho stand-in\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/all.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    text = (ROOT / "benchmarks/gpu/all.sh").read_text()
    files = re.findall(r"^gpu_test \d+ +(\S+)$", text, re.M)
    lines = (out / "gpu-tests.txt").read_text().splitlines()
    assert [x.split(":")[0] for x in lines] == files
    assert "tests/test_cudnn.py: exit 1: 1 failed, 4 passed in 0.1s" in lines
    assert sum(x.endswith("3 passed in 0.1s") for x in lines) == len(files) - 1
    calls = log.read_text().splitlines()
    assert [c for c in calls if c.startswith("ran ")] == [f"ran {f}" for f in files]
    assert calls[-1].startswith("bench -m microbench conv")
