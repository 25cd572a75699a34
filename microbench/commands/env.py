"""``env``: where measurements are taken (CPU, BLAS, GPU, driver, libraries, NVTX cost), and which
environment variables force a weaker kernel than the CPU has (with what that costs NumPy's GEMM,
measured when env runs)."""
from __future__ import annotations

import json

from ..args import console


def add_parsers(sub) -> None:
    e = sub.add_parser("env", help="print the environment (CPU, GPU, libraries)")
    e.add_argument("--json", action="store_true", help="as JSON")
    e.set_defaults(func=cmd_env)


def cmd_env(args) -> int:
    from rich.table import Table

    from .. import env as menv
    from .. import peaks
    info = menv.collect()
    # variables (or an OpenBLAS build) forcing weaker kernels than the CPU has, and what NumPy's
    # GEMM pays for it, measured now (a fresh interpreter without the variables beside this one)
    info["forced_kernels"] = peaks.forced_kernels()
    numpy_vars = [f["variable"] for f in info["forced_kernels"] if f["numpy"] and f["variable"]]
    cost = peaks.forced_cost(numpy_vars) if numpy_vars else None
    for f in info["forced_kernels"]:
        if f["variable"] in numpy_vars:
            f["cost"] = cost
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    t = Table(title="microbench env", show_header=False)
    src = info["microbench"]
    state = "" if src["commit"] is None else f", commit {src['commit'][:12]}" + (
        " with uncommitted changes" if src["dirty"] else "")
    clock = info["cpu_clock"]
    mhz = "/".join(f"{v} MHz {k.split('_')[0]}" for k, v in clock.items() if v) or "clock not reported"
    rows = [("microbench", f"{src['version']}{state} ({src['path']})"), ("command", info["command"]),
            ("date", info["date"]), ("python", info["python"]), ("platform", info["platform"]),
            ("cpu", f"{info['cpu']} ({info['cores']} cores, {info['affinity']} usable; {mhz})"),
            ("memory", f"{info['memory_gib']} GiB")]
    for b in info["blas"]:
        rows.append(("blas", ", ".join(f"{k}={v}" for k, v in b.items())))
    g = info["gpu"]
    rows.append(("gpu", ", ".join(f"{k}={v}" for k, v in g.items())))
    cd = info["cudnn"]
    rows.append(("cudnn", f"{cd.get('version')} from {cd.get('path')}" if cd.get("available")
                 else f"not found ({cd.get('reason')})"))
    od = info.get("onednn") or {}
    rows.append(("onednn", f"{od.get('version')} ({od.get('isa')}, {od.get('cpu_runtime')}) from "
                           f"{od.get('path')}" if od.get("available") else f"not found ({od.get('reason')})"))
    for k, v in info["libraries"].items():
        if k != "nvtx":                       # its own row below
            rows.append((k, v))
    mx = info["mxnet_worker"]
    rows.append(("mxnet worker", f"{mx['python']} (Python {mx.get('python_version')}, mxnet {mx.get('mxnet')}, "
                                 f"numpy {mx.get('numpy')})" if mx["python"] else mx["note"]))
    nv = info["nvtx"]
    rows.append(("nvtx", f"{info['libraries'].get('nvtx', 'not installed')}; ranges {nv['level']} "
                         f"(--nvtx {nv['requested']}); {nv['cost_per_range_s'] * 1e6:.2f} us per range "
                         "(push+pop) here"))
    for fw, f in info.get("frameworks", {}).items():
        rows.append((f"framework {fw}", f"{f['version']}" + (f" (NumPy {f['numpy']} interpreter {f['python']})"
                                                             if "numpy" in f else "")
                     if f["status"] == "found" else f"{f['status']}: {f['reason']}"))
    for k, v in info["env_vars"].items():
        rows.append((k, v))
    for f in info.get("forced_kernels", ()):
        cost = f.get("cost") or {}
        text = peaks.describe_forced(f)
        if "with" in cost:
            text += (f"; NumPy's float32 {cost.get('n', peaks.GEMM_N)}^3 GEMM here: {cost['with']} GFLOP/s, "
                     f"{cost['without']} GFLOP/s without it ({cost['ratio']:.2f}x, measured now)")
        elif cost.get("error"):
            text += f"; its cost not measured: {cost['error']}"
        rows.append(("forced kernels", text))
    from ..names import others, shadowed
    for name, dists in others().items():
        state = shadowed(name) or "ours is imported first"
        rows.append((f"also {name!r}", f"{', '.join(dists)} also installed here; {state}"))
    rows.append(("env_id", info["env_id"]))
    for k, v in rows:
        t.add_row(k, str(v))
    console().print(t)
    return 0


