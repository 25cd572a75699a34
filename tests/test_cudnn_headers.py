"""Every cuDNN call of the RNN and conv bindings against the cuDNN 9 headers: each function our code
calls is declared there, with our ctypes prototype (argument count, and per argument the exact
ctypes type its C type needs), and every enum value we pass is the header's.  The headers come
with the nvidia-cudnn wheel (the test-cuda13 extra; gpu-cu12's wheel on a CUDA 12 machine), so
this runs without a GPU; in CI a missing header is a failure, elsewhere a skip saying why."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from kernels.cudnn import conv as C
from kernels.cudnn import handles as Hd
from kernels.cudnn import rnn as R
from tests import cudnn_headers as ch

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "kernels" / "cudnn").glob("*.py"))
# Bound by hand in kernels/cudnn/lib.py (return types other than cudnnStatus_t)
LIB_OWN = {"cudnnGetVersion": [], "cudnnGetErrorString": [ctypes.c_int], "cudnnGetCudartVersion": [],
           "cudnnGetLastErrorString": [ctypes.c_char_p, ctypes.c_size_t]}


@pytest.fixture(scope="module")
def header():
    text = ch.text_or_skip()
    enum_types, opaque = ch.type_names(text)
    return text, ch.enums(text), enum_types, opaque


def _descriptor_kinds() -> set:
    """Every ``Descriptor(lib, "Kind")`` the bindings create (cudnnCreateKind/cudnnDestroyKind)."""
    kinds = set()
    for path in SOURCES:
        kinds |= set(re.findall(r"Descriptor\(\s*(?:self\.)?lib\s*,\s*\"(\w+)\"", path.read_text()))
    return kinds


def _bound() -> dict:
    """{cuDNN function: our argtypes} for every function the bindings can call."""
    out = {**Hd.PROTOTYPES, **R.PROTOTYPES, **C.PROTOTYPES}
    for kind in _descriptor_kinds():
        out[f"cudnnCreate{kind}"] = [Hd.PP]          # as kernels.cudnn.handles.Descriptor binds them
        out[f"cudnnDestroy{kind}"] = [Hd.P]
    return out


def test_every_function_the_code_calls_has_a_prototype():
    called = set()
    for path in SOURCES:
        src = path.read_text()
        called |= set(re.findall(r"\.(?:call|fn)\(\s*\"(cudnn\w+)\"", src))
        called |= set(re.findall(r"\"(cudnn[A-Z]\w+)\"", src)) - {"cudnnGraphNotSupportedError"}
    missing = sorted(n for n in called if n not in _bound() and n not in LIB_OWN)
    assert not missing, f"called without a prototype table entry: {missing}"
    assert {"TensorDescriptor", "FilterDescriptor", "ConvolutionDescriptor", "DropoutDescriptor",
            "RNNDescriptor", "RNNDataDescriptor"} <= _descriptor_kinds()


@pytest.mark.parametrize("name", sorted(_bound()))
def test_prototype_matches_the_header(header, name):
    text, _, enum_types, opaque = header
    params = ch.prototype(text, name)
    assert params is not None, f"{name} is not declared in the cuDNN 9 headers"
    ours = _bound()[name]
    assert len(ours) == len(params), (name, params)
    structs = {f"cudnnConvolution{k}AlgoPerf_t": C._Perf for k in ("Fwd", "BwdData", "BwdFilter")}
    for i, (got, p) in enumerate(zip(ours, params)):
        want = ch.ctype_of(p, enum_types, opaque, structs)
        if p.split()[-1].startswith("dev") and want.__name__.startswith("LP_"):
            # device memory (cuDNN names those parameters dev...): an address, passed as c_void_p
            want = ctypes.c_void_p
        assert got is want, f"{name} argument {i} ({p}): ours {got.__name__}, the header's {want.__name__}"


@pytest.mark.parametrize("name", sorted(LIB_OWN))
def test_library_calls_bound_by_hand_match_the_header(header, name):
    """kernels/cudnn/lib.py binds four calls itself (their return types are not cudnnStatus_t):
    the argtypes it writes, read from its source, against the header."""
    text, _, enum_types, opaque = header
    params = ch.prototype(text, name)
    assert params is not None, name
    lib_src = (ROOT / "kernels" / "cudnn" / "lib.py").read_text()
    m = re.search(rf"\.{name}\.argtypes = (\[.*?\])", lib_src)
    assert m, f"kernels/cudnn/lib.py does not set {name}.argtypes"
    ours = eval(m.group(1), {"ctypes": ctypes})         # noqa: S307 (our own source text)
    want = [ch.ctype_of(p, enum_types, opaque, {}) for p in params]
    assert ours == want, (name, params)
    assert LIB_OWN[name] == ours


def _our_enums() -> dict:
    """{header enumerator: the value our code passes}."""
    out = {"CUDNN_DATA_FLOAT": Hd.CUDNN_DATA_FLOAT, "CUDNN_DATA_HALF": Hd.CUDNN_DATA_HALF,
           "CUDNN_DATA_BFLOAT16": Hd.CUDNN_DATA_BFLOAT16, "CUDNN_DATA_INT32": Hd.CUDNN_DATA_INT32,
           "CUDNN_RNN_DOUBLE_BIAS": R.CUDNN_RNN_DOUBLE_BIAS, "CUDNN_UNIDIRECTIONAL": R.CUDNN_UNIDIRECTIONAL,
           "CUDNN_LINEAR_INPUT": R.CUDNN_LINEAR_INPUT,
           "CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED": R.CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED,
           "CUDNN_RNN_PADDED_IO_DISABLED": R.CUDNN_RNN_PADDED_IO_DISABLED,
           "CUDNN_CROSS_CORRELATION": C.CUDNN_CROSS_CORRELATION,
           "CUDNN_TENSOR_NCHW": C.CUDNN_TENSOR_NCHW, "CUDNN_TENSOR_NHWC": C.CUDNN_TENSOR_NHWC}
    out.update({name: value for value, name in Hd.MATH_NAMES.items()})
    out.update({name: value for value, name in R.ALGO_NAMES.items()})
    assert set(R.ALGO_NAMES) == set(R.CUDNN_RNN_ALGO.values())
    out.update({f"CUDNN_{c.upper()}": v for c, v in R.CUDNN_CELL.items()})   # CUDNN_RNN_RELU, ..., CUDNN_GRU
    out.update({f"CUDNN_FWD_MODE_{m.upper()}": v for m, v in R.CUDNN_FWD_MODE.items()})
    return out


@pytest.mark.parametrize("name", sorted(_our_enums()))
def test_enum_values_match_the_header(header, name):
    _, values, _, _ = header
    assert name in values, f"{name} is not an enumerator of the cuDNN 9 headers"
    assert values[name] == _our_enums()[name], (name, values[name], _our_enums()[name])


def test_precision_tables_use_header_values(header):
    """Each precision's data and math types, by name, as the header numbers them."""
    _, values, _, _ = header
    data = {values[n]: n for n in ("CUDNN_DATA_FLOAT", "CUDNN_DATA_HALF")}
    for table in (R.PRECISION, C.PRECISION):
        for precision, row in table.items():
            assert row[1] in data, (precision, row)
    assert C.PRECISION["fp32"][2] == values["CUDNN_FMA_MATH"]
    assert R.PRECISION["fp32"][3] == values["CUDNN_FMA_MATH"]
    assert R.PRECISION["tf32"][3] == C.PRECISION["tf32"][2] == values["CUDNN_DEFAULT_MATH"]
