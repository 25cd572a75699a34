import numpy as np
import pytest

from kernels import BadInput, GRUParams, Layer, LSTMParams, reorder_gates


def test_random_is_deterministic_by_seed_and_bounded():
    a = LSTMParams.random(5, 7, 2, seed=3)
    b = LSTMParams.random(5, 7, 2, seed=3)
    c = LSTMParams.random(5, 7, 2, seed=4)
    for la, lb, lc in zip(a.layers, b.layers, c.layers):
        for x, y, z in zip(la.arrays(), lb.arrays(), lc.arrays()):
            np.testing.assert_array_equal(x, y)
            assert not np.array_equal(x, z)
            assert np.all(np.abs(x) <= 1 / np.sqrt(7))
    assert a.layers[0].w_ih.shape == (28, 5) and a.layers[1].w_ih.shape == (28, 7)
    assert GRUParams.random(5, 7).layers[0].w_hh.shape == (21, 7)


def test_gate_views_follow_canonical_order():
    p = LSTMParams.random(3, 2, seed=0)
    assert p.gates == ("i", "f", "g", "o")
    np.testing.assert_array_equal(p.gate(0, "g", "w_ih"), p.layers[0].w_ih[4:6])
    assert GRUParams.random(3, 2).gates == ("r", "z", "n")
    with pytest.raises(BadInput, match="gate 'c' is unknown for lstm; allowed: i, f, g, o"):
        p.gate(0, "c")


@pytest.mark.parametrize("src,dst", [("ifgo", "ifog"), ("ifgo", "ogfi"), ("rzn", "zrn")])
def test_reorder_round_trip(src, dst):
    a = np.arange(len(src) * 3 * 2).reshape(len(src) * 3, 2)
    b = reorder_gates(a, src, dst)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(reorder_gates(b, dst, src), a)
    # the block named by a letter moves with it
    k = src.index(dst[0])
    np.testing.assert_array_equal(b[:3], a[3 * k:3 * k + 3])


def test_reorder_along_columns_keras_layout():
    w = LSTMParams.random(3, 4, seed=1).layers[0].w_ih     # (4H, I), canonical i f g o
    keras = reorder_gates(w.T, "ifgo", "ifgo", axis=1)      # Keras kernels are (I, 4H)
    np.testing.assert_array_equal(keras, w.T)
    with pytest.raises(BadInput, match="permutations"):
        reorder_gates(w, "ifgo", "ifxo")


@pytest.mark.parametrize("kwargs,match", [
    (dict(w_ih=np.zeros((8, 3))), r"w_ih has shape \(8, 3\); expected \(16, 3\)"),
    (dict(b_hh=np.zeros(15)), r"b_hh has shape \(15,\); expected \(16,\)"),
    (dict(w_hh=np.zeros((16, 4), dtype=np.float32)), "mix dtypes"),
])
def test_shape_validation_names_the_array(kwargs, match):
    good = dict(w_ih=np.zeros((16, 3)), w_hh=np.zeros((16, 4)), b_ih=np.zeros(16), b_hh=np.zeros(16))
    good.update(kwargs)
    with pytest.raises(BadInput, match=match):
        LSTMParams(3, 4, (Layer(**good),))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, 1 << 30])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises(BadInput, match="input_size"):
        LSTMParams.random(bad, 4)


def test_astype_converts_every_array():
    p = GRUParams.random(3, 4, 2).astype(np.float32)
    assert p.dtype == np.float32
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for L in p.layers for a in L.arrays())


def test_params_accept_device_arrays_that_refuse_numpy_conversion():
    """kernels.torch builds parameter containers from CuPy views on a GPU; CuPy refuses
    np.asarray, so validation must read .shape and .dtype only."""
    from kernels.custom import LayerNormLSTMParams
    from kernels.params import Layer

    class DeviceArray:
        def __init__(self, a):
            self.shape, self.dtype = a.shape, a.dtype

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    p = LayerNormLSTMParams.random(3, 4, 2, seed=1)
    layers = tuple(Layer(*(DeviceArray(a) for a in l.arrays())) for l in p.layers)
    extras = tuple({k: DeviceArray(np.asarray(v)) for k, v in e.items()} for e in p.extras)
    q = LayerNormLSTMParams(3, 4, layers, extras)
    assert q.num_layers == 2 and q.hidden_size == 4
