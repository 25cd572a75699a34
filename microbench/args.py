"""What every command's argument parsing shares, as a leaf of the package: the parser that says
its errors in one line, ASCII-only numbers, comma lists, the seed and output-path types, the
console tables print to, and the command line the run was given (records keep it).  Imported by
the CLI, the commands, the planner and the environment record; it imports none of them."""
from __future__ import annotations

import argparse
import re

from kernels.errors import BadInput

class UsageError(Exception):
    pass


COMMAND_LINE = None     # the arguments cli.main() was given: records keep the command line


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # type=int / type=float of every option (subcommands are Parsers too): ASCII numbers only
        self.register("type", int, ascii_int)
        self.register("type", float, ascii_float)

    def error(self, message):  # one line, no usage block: the message names the value and the choices
        raise UsageError(message)


# Python's int() and float() take any Unicode decimal digit ('٤', '１６') and '_' separators
# ('1_6'); a command line takes ASCII decimal numbers only.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_int(text, what: str) -> int:
    """An integer written in ASCII decimal digits (BadInput naming ``what`` otherwise)."""
    t = str(text).strip()
    if not _INT.fullmatch(t):
        raise BadInput(f"{what} {text!r} is not an integer (ASCII decimal digits, e.g. 16)")
    return int(t)


def ascii_int(text: str) -> int:
    """argparse type of integer options (registered for ``type=int``)."""
    try:
        return parse_int(text, "")
    except BadInput:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (ASCII decimal digits, e.g. 16)") from None


def ascii_float(text: str) -> float:
    """argparse type of number options (registered for ``type=float``): ASCII decimal notation."""
    t = str(text).strip()
    if not _FLOAT.fullmatch(t):
        raise argparse.ArgumentTypeError(f"invalid number: {text!r} (ASCII decimal notation, e.g. 0.5 or 2e-3)")
    return float(t)


def csv_list(text: str) -> list:
    return [p.strip() for p in text.split(",") if p.strip()]


def named_list(flag: str, text: str | None, allowed: str = "") -> list | None:
    """A comma list given to ``flag`` (None when the flag is absent); one that names nothing
    (``--backend ,``, ``--backend ''``) is refused rather than read as "all"."""
    if text is None:
        return None
    names = list(dict.fromkeys(csv_list(text)))
    if not names:
        raise BadInput(f"{flag} {text!r} names nothing" + (f"; allowed: {allowed}" if allowed else ""))
    return names


SEED_MAX = 2**63 - 1


def seed_arg(text: str) -> int:
    """argparse type of --seed: NumPy's generators take a non-negative integer."""
    n = ascii_int(text)
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{n} is out of range; allowed: 0..{SEED_MAX}")
    return n


def output_path(text: str) -> str:
    """argparse type of output paths: an empty one is refused (it would silently write nothing)."""
    if not text:
        raise argparse.ArgumentTypeError("'' is empty; give a file path")
    return text


def console(stderr: bool = False):
    from rich.console import Console
    # Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)
