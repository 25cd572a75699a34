"""Helpers shared by the CUDA source tests."""
from __future__ import annotations

import re


def parse_resource_usage(report: str) -> dict:
    """ptxas --resource-usage text -> {kernel: {registers, smem, spill_stores, spill_loads, stack}}."""
    out, current = {}, None
    for line in report.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers.*?(\d+) bytes smem", line)
        if m and current is not None:
            current.update(registers=int(m.group(1)), smem=int(m.group(2)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
    return out
