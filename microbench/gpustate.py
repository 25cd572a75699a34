"""GPU clocks, temperature and throttle reasons through NVML, read before and after a case.

A case whose SM clock dropped by more than 10% while it ran, or during which NVML reported a
thermal or power throttle, gets a warning in its record and table row: its samples were not all
taken at the same speed.
"""
from __future__ import annotations

SAG = 0.90   # an SM clock below 90% of the starting one counts as sagging


def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def read(index: int | None = None) -> dict | None:
    """SM and memory clocks (MHz), temperature (C), power (W), throttle reasons of CUDA ordinal
    ``index`` (None: the selected one, kernels.devices); None without NVML.

    NVML numbers every GPU of the machine and ignores CUDA_VISIBLE_DEVICES, so the handle is
    looked up by the ordinal's PCI bus id (kernels.devices.nvml_handle), never by index."""
    from kernels import devices
    nv = _nvml()
    if nv is None:
        return None
    try:
        h = devices.nvml_handle(nv, index)
        state = {
            "sm_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            "mem_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
            "temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "throttle": int(nv.nvmlDeviceGetCurrentClocksEventReasons(h))
            if hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons")
            else int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)),
        }
    except Exception as e:  # an NVML without one of these queries: say so, do not fail the case
        return {"error": str(e)}
    return state


# NVML's thermal and power throttle bits (clocks event reasons): SW power cap 0x4, HW slowdown 0x8,
# SW thermal 0x20, HW thermal 0x40, HW power brake 0x80.
THROTTLE_BITS = {0x4: "power cap", 0x8: "hardware slowdown", 0x20: "thermal (software)",
                 0x40: "thermal (hardware)", 0x80: "power brake"}


def verdict(before: dict | None, after: dict | None) -> str | None:
    """A warning when clocks sagged or a throttle was reported, else None."""
    if not before or not after or "error" in before or "error" in after:
        return None
    reasons = [name for bit, name in THROTTLE_BITS.items() if after.get("throttle", 0) & bit]
    sagged = before["sm_mhz"] and after["sm_mhz"] < SAG * before["sm_mhz"]
    if not reasons and not sagged:
        return None
    parts = []
    if sagged:
        parts.append(f"SM clock {before['sm_mhz']} -> {after['sm_mhz']} MHz")
    if reasons:
        parts.append("throttled: " + ", ".join(reasons))
    return "clocks sagged (" + "; ".join(parts) + f"; {before['temp_c']} -> {after['temp_c']} C)"
