"""scripts/setup's branches, resolved without installing anything: a stand-in ``nvidia-smi`` says
which driver (none, CUDA 13, CUDA 12), a scratch virtual environment of CPython 3.11 or 3.12 is the
target, and ``MICROBENCH_SETUP_DRY_RUN`` makes every pip call of the scripts ``pip install
--dry-run --report`` (metadata only).  Checked per configuration: pip resolves without a conflict,
one CUDA major per library family (a cu12 wheel and its cu13 twin write the same files), the
framework builds the branch promises (CUDA torch and JAX, TensorFlow's CUDA build in its own
interpreter, MXNet's NumPy-1 one), NumPy below 2.5.

Needs the package registry: skipped with the reason where pip cannot reach it.  The resolutions
are slow (each configuration fetches the metadata of about a hundred packages, 4-7 minutes on a
busy 2-core machine, bounded by RESOLVE_TIMEOUT_S each), so they run when asked for:
``MICROBENCH_TEST_SETUP_RESOLUTION=1 python3 -m pytest tests/test_setup_script.py`` after a change
to setup.cfg or scripts/setup*; the suite's default run skips them saying so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESOLVE_TIMEOUT_S = 600

def _python(minor: int) -> str | None:
    """A CPython 3.<minor> that runs here: this one, on the PATH, or under ~/.pyenv (a pyenv shim
    on the PATH may name a version it will not run)."""
    if sys.version_info[:2] == (3, minor):
        return sys.executable
    cands = [shutil.which(f"python3.{minor}")]
    cands += [str(c) for c in sorted(Path.home().glob(f".pyenv/versions/3.{minor}.*/bin/python3.{minor}"))]
    for cand in filter(None, cands):
        try:
            r = subprocess.run([cand, "-c", "import sys, venv; print(sys.version_info[1])"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip() == str(minor):
            return cand
    return None


def _pip_env(**extra) -> dict:
    """This process's environment without the machine's pip settings (local wheel folders,
    constraints): the resolution a fresh GPU machine would get from the registry."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("MICROBENCH_SETUP_DRY_RUN", "PYTHONPATH")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_DEFAULT_TIMEOUT="60")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def registry():
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip"], env=_pip_env(),
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("the package registry did not answer within 60 s")
    if r.returncode != 0:
        pytest.skip(f"the package registry cannot be reached: {(r.stderr or r.stdout).strip()[-300:]}")


def _venv(tmp: Path, python: str) -> str:
    subprocess.run([python, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    return str(tmp / "venv" / "bin" / "python")


def _stand_in_smi(bindir: Path, cuda: str) -> None:
    """An nvidia-smi that lists one H100 and the CUDA version its driver supports."""
    bindir.mkdir(parents=True, exist_ok=True)
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   'if [ "$1" = -L ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-stand-in)"; exit 0; fi\n'
                   f'echo "| NVIDIA-SMI 580.82.07   Driver Version: 580.82.07   CUDA Version: {cuda}     |"\n')
    smi.chmod(0o755)


def _resolve(tmp: Path, minor: int, cuda: str | None) -> tuple:
    """Run ``scripts/setup test`` in a dry run; (reports {step: {name: version}}, stderr)."""
    python = _python(minor)
    if python is None:
        pytest.skip(f"no CPython 3.{minor} on this machine (PATH, ~/.pyenv)")
    py = _venv(tmp, python)
    bindir = tmp / "bin"
    bindir.mkdir()
    if cuda:
        _stand_in_smi(bindir, cuda)
    path = os.pathsep.join([str(bindir), str(Path(py).parent)] +
                           [p for p in os.environ["PATH"].split(os.pathsep) if p and not _has_smi(p)])
    reports = tmp / "reports"
    env = _pip_env(PATH=path, PYTHON=py, MICROBENCH_SETUP_DRY_RUN=str(reports),
                   MICROBENCH_MXNET_VENV=str(tmp / "mx"), MICROBENCH_TF_VENV=str(tmp / "tf"))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "setup"), "test"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    if r.returncode != 0 and any(w in r.stderr for w in ("NewConnectionError", "Could not fetch URL",
                                                         "Temporary failure in name resolution")):
        pytest.skip(f"the package registry cannot be reached: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-4000:]
    out = {}
    for report in sorted(reports.glob("*.json")):
        data = json.loads(report.read_text())
        out[report.stem] = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                            for i in data["install"]}
    return out, r.stderr


def _has_smi(d: str) -> bool:
    return (Path(d) / "nvidia-smi").exists()


# Distributions that install the same files, so one environment must hold at most one of each pair:
# the two CuPy wheels (package cupy), the two cuDNN wheels (nvidia/cudnn/lib/libcudnn.so.9, as
# kernels/cudnn/lib.py finds either), TensorFlow's two builds (package tensorflow).  Not every
# cu12/cu13 pair: NVIDIA's cutlass DSL wheels, for one, are meant to be installed together.
TWINS = (("cupy-cuda12x", "cupy-cuda13x"), ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13"),
         ("tensorflow", "tensorflow-cpu"))


def _no_twins(pkgs: dict, step: str) -> None:
    for a, b in TWINS:
        assert not (a in pkgs and b in pkgs), f"{step}: {a} and {b} install the same files"


def _numpy_ok(version: str) -> bool:
    return tuple(int(x) for x in version.split(".")[:2]) < (2, 5)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MICROBENCH_TEST_SETUP_RESOLUTION") != "1",
                    reason="the install resolution runs when asked (MICROBENCH_TEST_SETUP_RESOLUTION=1): "
                           "4-7 minutes per configuration")
@pytest.mark.parametrize("minor", [11, 12])
@pytest.mark.parametrize("cuda", ["13.0", "12.8", None], ids=["cuda13", "cuda12", "cpu"])
def test_setup_test_resolves(registry, tmp_path, minor, cuda):
    got, stderr = _resolve(tmp_path, minor, cuda)
    main = got["main"]
    for step, pkgs in got.items():
        _no_twins(pkgs, step)
    assert _numpy_ok(main["numpy"]), main["numpy"]
    assert "microbench-kernels" in main
    if cuda is None:
        assert set(got) == {"main", "mxnet"}
        assert "tensorflow-cpu" in main and "cupy-cuda13x" in main and "nvidia-cudnn-cu13" in main
        assert "jax-cuda13-plugin" not in main
    elif cuda.startswith("13"):
        assert set(got) == {"main", "tensorflow", "mxnet"}
        assert main["torch"] == "2.13.0" and main["jax-cuda13-plugin"] == "0.10.2"
        assert "cupy-cuda13x" in main and "nvidia-cudnn-cu13" in main and "nvidia-cuda-nvcc" in main
        assert not {"tensorflow", "tensorflow-cpu"} & set(main)
    else:
        assert set(got) == {"main", "tensorflow", "mxnet"}
        assert "torch" not in main and "PyPI's torch 2.13.0 is a CUDA 13 build" in stderr
        assert main["jax-cuda12-plugin"] == "0.10.2" and "cupy-cuda12x" in main
        assert not {"cupy-cuda13x", "nvidia-cudnn-cu13", "tensorflow", "tensorflow-cpu"} & set(main)
    if "tensorflow" in got:
        tf = got["tensorflow"]
        assert tf["tensorflow"] == "2.21.0" and "nvidia-cudnn-cu12" in tf and _numpy_ok(tf["numpy"])
    assert got["mxnet"]["mxnet"] == "1.9.1" and got["mxnet"]["numpy"] == "1.23.5"


def test_setup_mxnet_without_an_old_enough_python_skips_loudly(tmp_path):
    """On a CPython 3.12 image with no 3.11 or 3.10, MXNet's interpreter cannot be made (NumPy
    1.23.5 has no wheel there): a line saying so, exit 0, so scripts/setup goes on."""
    python = _python(12)
    if python is None:
        pytest.skip("no CPython 3.12 on this machine (PATH, ~/.pyenv)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dirname", "env"):
        (bindir / tool).symlink_to(shutil.which(tool))
    (bindir / "python3").symlink_to(python)
    env = {"PATH": str(bindir), "HOME": os.environ.get("HOME", "/tmp"),
           "MICROBENCH_MXNET_VENV": str(tmp_path / "mx")}
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "setup-mxnet")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SKIPPED" in r.stderr and "CPython 3.12" in r.stderr and "MXNet and Chainer rows will skip" in r.stderr
    assert not (tmp_path / "mx").exists()
