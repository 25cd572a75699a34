"""Files a user did not write (results files, trace files) read as untrusted input.

Shared by :mod:`microbench.store` (results records) and :mod:`profiles.trace` (reference traces):
both import ``kernels``, and neither may import the other.

- :func:`loads` parses JSON with bounds Python's ``json`` does not have: no integer longer than
  :data:`MAX_INT_DIGITS` digits is converted (Python refuses past 4300 digits with a ValueError,
  and integers far beyond float range overflow wherever a reader divides), every integer fits in
  64 bits, nesting is at most :data:`MAX_DEPTH` levels (readers that recurse stay far from
  Python's recursion limit), and lone UTF-16 surrogates (``"\\ud800"``, valid JSON escapes but not
  text: printing or encoding them raises) are replaced by U+FFFD.  Any other problem is
  :class:`Untrusted`, one line naming where.
- :func:`visible` and :func:`terminal` make text safe to print: control characters (ANSI escape
  sequences, carriage returns, bidirectional overrides) are shown as escapes instead of being sent
  to the terminal, and :func:`terminal` also escapes rich markup (``[bold]``, ``[link=...]``).
"""
from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 32                 # records are about 5 levels deep; traces 4
INT_MIN, INT_MAX = -2**63, 2**63 - 1
MAX_INT_DIGITS = 20            # 2**63 has 19 digits; anything longer is refused unconverted


class Untrusted(ValueError):
    """Why untrusted JSON cannot be used (one line)."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:        # refused before int() spends time on it (or refuses it)
        raise Untrusted(f"an integer of {digits} digits (integers must fit in 64 bits)")
    return int(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(s: str) -> str:
    # json.loads joins escaped surrogate pairs into one code point, so any left is a lone one
    return _SURROGATE.sub("\ufffd", s) if _SURROGATE.search(s) else s


def loads(data) -> object:
    """The JSON value of ``data`` (str or UTF-8 bytes) within the bounds above, or
    :class:`Untrusted`; a text that is not JSON raises ``json.JSONDecodeError`` (or
    ``UnicodeDecodeError``) as ``json.loads`` does."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    try:
        obj = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise Untrusted(f"nested deeper than {MAX_DEPTH} levels") from None
    return check(obj)


def check(obj) -> object:
    """``obj`` (parsed JSON) checked in place, without recursion: depth, 64-bit integers, lone
    surrogates replaced.  Returns ``obj`` (a new string where the top level was one)."""
    if isinstance(obj, str):
        return _text(obj)
    stack = [(obj, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
            raise Untrusted(f"{where or 'value'}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k in list(value):
                v = value[k]
                if isinstance(k, str) and _SURROGATE.search(k):
                    del value[k]
                    k = _text(k)
                    value[k] = v
                if isinstance(v, str):
                    value[k] = _text(v)
                else:
                    stack.append((v, f"{where}.{visible(k)[:40]}" if where else visible(k)[:40], depth + 1))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, str):
                    value[i] = _text(v)
                else:
                    stack.append((v, f"{where}[{i}]", depth + 1))
        elif isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
            raise Untrusted(f"{where or 'value'}: {value:.3e} does not fit in 64 bits")
    return obj


def finite(x) -> bool:
    """A real number (not a bool) that is finite."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# C0 and C1 controls, DEL, the line/paragraph separators, bidirectional embeddings, overrides and
# isolates (which reorder what a terminal or an editor shows), zero-width joiners/marks, and lone
# surrogates (which cannot be encoded)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
                     "\ud800-\udfff]")


def _escape_char(m) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(text) -> str:
    """``text`` with every control or invisible formatting character shown as ``\\xNN`` /
    ``\\uNNNN`` (a newline too: what a record holds is shown on one line)."""
    text = str(text)
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def terminal(text) -> str:
    """``text`` for a rich console: :func:`visible`, then rich markup escaped."""
    from rich.markup import escape
    return escape(visible(text))
