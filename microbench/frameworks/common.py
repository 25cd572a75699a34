"""What adapters share inside a worker: the result of a build, and the one exception they raise.

Standard library only (see the package docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class Unsupported(Exception):
    """A valid request this framework/path/precision cannot serve: the case is skipped with this text."""


@dataclass
class Built:
    run: Callable[[], object]           # one forward call, complete (synchronised) when it returns
    outputs: Callable[[], tuple]        # (y (T,B,H), h_n (L,B,H)[, c_n]) as NumPy, canonical layout
    info: dict = field(default_factory=dict)   # what ran: kernel path, precision switches, compile_s


def dims(arrays: dict) -> tuple:
    """(T, B, I, H, L) of the arrays the worker was sent."""
    T, B, I = arrays["x"].shape
    L, _, H = arrays["h0"].shape
    return T, B, I, H, L
