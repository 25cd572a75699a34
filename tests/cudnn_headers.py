"""The cuDNN 9 headers as the binding tests read them: where they are, their text without comments,
the enumerators with their values, and each function's parameters as the ctypes types a binding
must declare for them."""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import pytest

HEADERS = ("cudnn_graph.h", "cudnn_ops.h", "cudnn_cnn.h", "cudnn_adv.h")


def include_dir():
    """A directory holding the cuDNN 9 headers: MICROBENCH_CUDNN_INCLUDE, the nvidia-cudnn wheel's
    nvidia/cudnn/include next to this interpreter's packages (the test extras install it), or the
    usual system places."""
    import site
    places = [os.environ.get("MICROBENCH_CUDNN_INCLUDE", "")]
    places += [str(Path(d) / "nvidia" / "cudnn" / "include") for d in site.getsitepackages()]
    places += ["/usr/include", "/usr/local/cuda/include", "/usr/include/x86_64-linux-gnu"]
    for d in places:
        if d and all((Path(d) / h).is_file() for h in HEADERS):
            return Path(d)
    return None


def text_or_skip() -> str:
    """Every header's text, comments removed.  Without the headers: a skip saying how to get
    them, and in CI (where the test extras install the wheel) a failure."""
    d = include_dir()
    if d is None:
        why = ("no cuDNN 9 headers here (" + ", ".join(HEADERS) + "): pip install nvidia-cudnn-cu13 "
               "(the test-cuda13 extra), or set MICROBENCH_CUDNN_INCLUDE to its include/")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    text = "\n".join((d / h).read_text(errors="replace") for h in HEADERS)
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def _value(expr: str, known: dict) -> int:
    """An enumerator's or macro's value: a number, another name, or ``(1U << k)``."""
    expr = expr.strip().strip("()").strip()
    if expr in known:
        return known[expr]
    if "<<" in expr:
        a, b = expr.split("<<")
        return _value(a, known) << _value(b, known)
    return int(expr.rstrip("uUlL"), 0)


def enums(text: str) -> dict:
    """{name: value} of every enumerator of a ``typedef enum {...} name;`` (implicit values
    counted on; an attribute macro after a name, such as CUDNN_DEPRECATED_ENUM, dropped) and of
    every integer ``#define CUDNN_...`` (cudnn_adv.h defines the RNN aux flags that way)."""
    out = {}
    for body in re.findall(r"typedef\s+enum\s*\w*\s*\{(.*?)\}", text, re.S):
        nxt = 0
        for item in (i.strip() for i in body.split(",")):
            if not item:
                continue
            name, _, expr = (p.strip() for p in item.partition("="))
            name = name.split()[0]
            value = _value(expr, out) if expr else nxt
            out[name] = value
            nxt = value + 1
    for name, expr in re.findall(r"^\s*#\s*define\s+(CUDNN_\w+)\s+(\(?[0-9][0-9xXuUlL <()]*\)?)\s*$", text, re.M):
        out.setdefault(name, _value(expr, out))
    return out


def type_names(text: str) -> tuple:
    """(enum type names, opaque handle type names) the headers define."""
    # a trailing attribute macro (CUDNN_DEPRECATED) may stand between the name and the ';'
    enum_types = set(re.findall(r"typedef\s+enum\s*\w*\s*\{.*?\}\s*(\w+)\s*(?:\w+\s*)?;", text, re.S))
    opaque = set(re.findall(r"typedef\s+struct\s+\w+\s*\*\s*(\w+)\s*(?:\w+\s*)?;", text))
    return enum_types, opaque | {"cudaStream_t"}


_SCALARS = {"int": ctypes.c_int, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
            "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t, "float": ctypes.c_float,
            "double": ctypes.c_double, "unsigned long long": ctypes.c_ulonglong,
            "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint}


def prototype(text: str, name: str):
    """The C parameter declarations of ``name`` (None when the headers do not declare it)."""
    m = re.search(rf"\b{name}\s*\(([^;]*?)\)\s*;", text)
    if not m:
        return None
    return [p for p in (s.strip() for s in m.group(1).split(",")) if p and p != "void"]


def ctype_of(param: str, enum_types: set, opaque: set, structs: dict):
    """The ctypes type a binding must declare for one C parameter: scalars by size and sign,
    enums as int, opaque handles and ``void *`` as c_void_p, ``char *`` as c_char_p, a pointer to
    any of those (or an array parameter ``T x[]``) as POINTER of it; ``structs`` maps struct type
    names to our ctypes.Structure."""
    decl = re.sub(r"\bconst\b", " ", param)
    stars = decl.count("*") + len(re.findall(r"\[\s*\]", decl))
    decl = re.sub(r"\[\s*\]|\*", " ", decl)
    words = decl.split()
    base = " ".join(words[:-1]) if len(words) > 1 else words[0]      # the last word is the name
    if base == "char" and stars == 1:
        return ctypes.c_char_p
    if base in _SCALARS:
        t = _SCALARS[base]
    elif base in enum_types:
        t = ctypes.c_int
    elif base in opaque or base == "void":
        if base == "void" and stars == 0:
            raise AssertionError(f"a void parameter {param!r}")
        t, stars = ctypes.c_void_p, stars - (base == "void")
    elif base in structs:
        t = structs[base]
    else:
        raise AssertionError(f"no ctypes rule for the C parameter {param!r}")
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t
