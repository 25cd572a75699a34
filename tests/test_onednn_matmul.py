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
