"""Defects found by reading the GPU code against CuPy's, cuDNN's and cudnn-frontend's sources, each
with a test that runs without a GPU: the real CuPy is imported and introspected where it is
installed (it imports without a driver), and stand-ins model the semantics that matter."""
import importlib.util
import sys
import types

import numpy as np
import pytest

HAVE_CUPY = importlib.util.find_spec("cupy") is not None


# -- tf32 on the CuPy GEMMs ------------------------------------------------------------------------
def _fake_linalg(monkeypatch):
    """A stand-in for cupy._core._routines_linalg with CuPy 14's names and values."""
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    linalg.state = {np.dtype(np.float32): 1}
    linalg.get_compute_type = lambda dt: linalg.state[np.dtype(dt)]
    linalg.set_compute_type = lambda dt, ct: linalg.state.__setitem__(np.dtype(dt), ct)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cupy = types.ModuleType("cupy")
    cupy._core = core
    for name, mod in (("cupy", cupy), ("cupy._core", core), ("cupy._core._routines_linalg", linalg)):
        monkeypatch.setitem(sys.modules, name, mod)
    return cupy, linalg


def test_tf32_sets_cupys_float32_compute_type_and_restores_it(monkeypatch):
    from kernels.gpu import cublas_math
    cupy, linalg = _fake_linalg(monkeypatch)
    with cublas_math(cupy, "tf32"):
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    with cublas_math(cupy, "fp32"):
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    with pytest.raises(ZeroDivisionError):      # restored on an exception too
        with cublas_math(cupy, "tf32"):
            1 / 0
    assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT


@pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed (the test extra installs it)")
def test_the_installed_cupy_has_what_tf32_uses():
    """Every tf32 case once raised AttributeError: CuPy 14's cublas module has no
    CUBLAS_TF32_TENSOR_OP_MATH.  The names used now must exist in the real CuPy."""
    import cupy
    from kernels.gpu import tf32_switch
    linalg = tf32_switch(cupy)
    assert linalg.COMPUTE_TYPE_TF32 != linalg.COMPUTE_TYPE_DEFAULT
    assert callable(linalg.get_compute_type) and callable(linalg.set_compute_type)
