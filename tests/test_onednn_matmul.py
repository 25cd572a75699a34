"""kernels.onednn.matmul.PackedMatmul and PackedInnerProduct: oneDNN matmul / inner product with
the weights in the primitive's own layout (packed once), the source and destination the caller's
own buffers."""

import numpy as np
import pytest

from kernels.errors import BadInput


@pytest.fixture(scope="module", params=["PackedMatmul", "PackedInnerProduct"])
def mm_cls(request, onednn_lib):
    from kernels.onednn import matmul
    return getattr(matmul, request.param)


@pytest.mark.parametrize("m,k,n", [(1, 3, 5), (8, 32, 64), (64, 96, 128)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_matches_float64(mm_cls, m, k, n, bias, accumulate):
    rng = np.random.default_rng(m * k + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    with mm_cls(w, m=m, bias=b, accumulate=accumulate) as mm:
        for _ in range(2):          # buffers change between calls: the handles must follow
            x = rng.standard_normal((m, k)).astype(np.float32)
            out = rng.standard_normal((m, n)).astype(np.float32)
            before = out.astype(np.float64)
            got = mm(x, out)
            assert got is out
            ref = x.astype(np.float64) @ w + (b if bias else 0) + (before if accumulate else 0)
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
        assert mm.info()["impl"]


def test_refuses_wrong_buffers(mm_cls):
    with mm_cls(np.ones((4, 6), np.float32), m=2) as mm:
        with pytest.raises(BadInput, match="x must be"):
            mm(np.ones((3, 4), np.float32), np.zeros((2, 6), np.float32))
        with pytest.raises(BadInput, match="out must be"):
            mm(np.ones((2, 4), np.float32), np.zeros((2, 6), np.float64))
        with pytest.raises(BadInput, match="not contiguous"):
            mm(np.ones((2, 8), np.float32)[:, ::2], np.zeros((2, 6), np.float32))
    with pytest.raises(BadInput, match="matrix"):
        mm_cls(np.ones(3, np.float32), m=2)


@pytest.mark.parametrize("cls", ["PackedInnerProduct", "PackedMatmul"])
def test_packed_gemm_refuses_a_bias_of_the_wrong_length_and_a_call_after_close(onednn_lib, cls):
    """A bias shorter than N was read past its end (garbage results), and a call after close()
    executed released handles (a segmentation fault)."""
    from kernels.onednn import matmul as M
    from kernels.errors import BadInput
    w = np.ones((8, 33), np.float32)
    with pytest.raises(BadInput, match=r"bias has shape \(5,\); expected \(33,\) or \(1, 33\)"):
        getattr(M, cls)(w, m=4, bias=np.ones(5, np.float32))
    p = getattr(M, cls)(w, m=4, bias=np.zeros(33, np.float32))
    x, out = np.ones((4, 8), np.float32), np.empty((4, 33), np.float32)
    assert np.allclose(p(x, out), 8.0)
    p.close()
    with pytest.raises(BadInput, match="was closed"):
        p(x, out)


def test_packed_gemm_follows_the_buffers_it_is_given(onednn_lib):
    """The output address is set only when it changes: a call on another buffer (or the same
    address reused) must still land where it is asked to."""
    from kernels.onednn.matmul import PackedInnerProduct
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 12)).astype(np.float32)
    p = PackedInnerProduct(w, m=3)
    big = np.zeros((9, 12), np.float32)
    for i in range(3):
        x = rng.standard_normal((3, 16)).astype(np.float32)
        p(x, big[3 * i:3 * i + 3])
        np.testing.assert_allclose(big[3 * i:3 * i + 3], x @ w, rtol=1e-5, atol=1e-5)
        p(x, big[3 * i:3 * i + 3])          # the same addresses again
        np.testing.assert_allclose(big[3 * i:3 * i + 3], x @ w, rtol=1e-5, atol=1e-5)
    p.close()
