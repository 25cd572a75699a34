"""The parent's side of the worker protocol: start a worker, send requests, read answers.

One :class:`Worker` per case: a fresh process per framework case keeps thread pools, allocators
and JIT caches of one case (and one framework) from disturbing the next.  Arrays travel through
``.npz`` files in a private temporary folder that :meth:`Worker.close` removes.

A test session (``MICROBENCH_REUSE_WORKERS=1``, set by the test suite) trades that isolation for
time: :func:`start` hands out an idle worker of the same framework, interpreter, thread count,
device and environment when one is left, and :meth:`Worker.close` keeps a healthy worker for the
next case instead of ending it (a worker builds every case anew; only the process is shared).
Measurements never run this way unless asked.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kernels.errors import BadInput, MicrobenchError, MissingDependency, Unsupported

from . import FRAMEWORKS, IMPORT_NAME, NOT_INSTALLABLE, NUMPY1

START_TIMEOUT_S = 180.0     # importing TensorFlow on a busy 2-core machine takes ~10 s
REUSE_ENV = "MICROBENCH_REUSE_WORKERS"
_IDLE: list = []            # (reuse key, worker), oldest first (MICROBENCH_REUSE_WORKERS only)
MAX_IDLE = 3                # idle workers kept at most: each holds a framework's memory (0.3-1 GB)


def _reusing() -> bool:
    return os.environ.get(REUSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _reuse_key(framework: str, python: str | None, threads, device: str) -> tuple:
    """What a worker was started with: a worker is handed out again only to a case that would
    have started the same one (the whole environment too: oneDNN's verbose switches, thread
    policies and framework flags are read at start-up)."""
    return (framework, os.path.realpath(python or sys.executable), threads, device,
            tuple(sorted(os.environ.items())))


def start(framework: str, *, python: str | None = None, threads: int | None = None,
          device: str = "cpu") -> "Worker":
    """A worker for one case: a new process, or under MICROBENCH_REUSE_WORKERS an idle one
    started the same way (module docstring)."""
    if not _reusing():
        return Worker(framework, python=python, threads=threads, device=device)
    key = _reuse_key(framework, python, threads, device)
    for i in range(len(_IDLE) - 1, -1, -1):
        k, w = _IDLE[i]
        if k == key:
            del _IDLE[i]
            if w.proc.poll() is None:
                return w
            w._shutdown()
    w = Worker(framework, python=python, threads=threads, device=device)
    w._reuse_key = key
    return w


@atexit.register
def _end_idle() -> None:
    while _IDLE:
        _IDLE.pop()[1]._shutdown()


class WorkerError(MicrobenchError):
    """The worker died, answered garbage, or reported an error in the framework."""


def _package_roots() -> list:
    """Folders that make ``microbench`` and ``kernels`` importable (for a worker on our interpreter)."""
    import kernels
    import microbench
    return list(dict.fromkeys(str(Path(m.__file__).resolve().parent.parent) for m in (microbench, kernels)))


def parse_python(items) -> dict:
    """``["mxnet=/path/python", ...]`` (or one comma list) -> {framework: path}; bad names raise BadInput."""
    out = {}
    for item in items or ():
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, path = part.partition("=")
            name = name.strip()
            if not sep or not path.strip():
                raise BadInput(f"--python {part!r}: expected FRAMEWORK=/path/to/python")
            if name in NOT_INSTALLABLE:
                raise BadInput(f"--python {name}: not supported: {NOT_INSTALLABLE[name]}")
            if name not in FRAMEWORKS:
                raise BadInput(f"--python {name!r}: unknown framework; allowed: {', '.join(FRAMEWORKS)}")
            path = os.path.expanduser(path.strip())
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise BadInput(f"--python {name}={path}: not an executable file")
            problem = _interpreter_problem(path)
            if problem:
                raise BadInput(f"--python {name}={path}: not a working Python 3 interpreter ({problem})")
            out[name] = path
    return out


def _interpreter_problem(path: str) -> str:
    """Why ``path`` is not a Python 3 that can run a worker ('' when it is): it must run a line
    of Python and say so (an executable like /bin/true exits 0 and says nothing)."""
    import subprocess
    probe = "import sys; print('microbench-python', sys.version_info[0])"
    try:
        r = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        return f"it does not start: {e}"
    if r.returncode != 0 or not r.stdout.startswith("microbench-python 3"):
        said = (r.stderr or r.stdout).strip().splitlines()
        return f"'-c print' exited {r.returncode}" + (f": {said[-1][:120]}" if said else " without output")
    return ""


class Worker:
    def __init__(self, framework: str, *, python: str | None = None, threads: int | None = None,
                 device: str = "cpu"):
        if framework not in FRAMEWORKS:
            raise BadInput(f"framework {framework!r} is unknown; allowed: {', '.join(FRAMEWORKS)}")
        self.framework, self.device = framework, device
        self.python = python or sys.executable
        self.dir = Path(tempfile.mkdtemp(prefix=f"microbench-{framework}-"))
        self._buf = b""
        env = os.environ.copy()
        if python and os.path.realpath(python) != os.path.realpath(sys.executable):
            # A foreign interpreter sees only our ``microbench`` package (through a link), never
            # this interpreter's site-packages: its NumPy must stay its own.
            root = self.dir / "path"
            root.mkdir()
            os.symlink(Path(__file__).resolve().parent.parent, root / "microbench")
            roots = [str(root)]
        else:
            roots = _package_roots()
        env["PYTHONPATH"] = os.pathsep.join(roots + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # kernels sets OMP_WAIT_POLICY=PASSIVE for numba+OpenBLAS; frameworks run with their own default.
        if env.get("OMP_WAIT_POLICY") == "PASSIVE" and not env.get("MICROBENCH_FRAMEWORK_OMP_WAIT_POLICY"):
            env.pop("OMP_WAIT_POLICY")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        if device == "cuda":   # the worker's cuda:0 is the GPU this process selected (--device cuda:K)
            from kernels import devices
            env.update(devices.worker_env())
        cmd = [self.python, "-m", "microbench.frameworks.worker", framework, "--device", device]
        if threads:
            cmd += ["--threads", str(threads)]
        self._log = open(self.dir / "stderr.log", "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, env=env, cwd=str(self.dir), bufsize=0)
        except OSError as e:
            self.close()
            raise MissingDependency(self.python, f"the {framework} worker", e.strerror or str(e)) from None
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            hello = self._read(START_TIMEOUT_S)
            self._raise_for(hello)
        except BaseException:
            self.close()
            raise
        self.env = hello["env"]

    # -- messages -----------------------------------------------------------------------------
    def request(self, msg: dict, timeout: float = 600.0) -> dict:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._died("while sending a request")) from None
        ans = self._read(timeout)
        self._raise_for(ans)
        return ans

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerError(f"{self.framework} worker gave no answer in {timeout:.0f} s; stopped it")
            if not self._sel.select(min(left, 1.0)):
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise WorkerError(self._died("before answering"))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"{self.framework} worker answered a line that is not JSON: {line[:200]!r}") from None

    def _raise_for(self, ans: dict) -> None:
        if ans.get("ok"):
            return
        kind, message = ans.get("kind"), ans.get("message", "")
        via = "" if self.python == sys.executable else f" in {self.python}"
        if kind == "missing":
            hint = (f"install it{via}, e.g. pip install -e '.[frameworks]'" if self.framework not in NUMPY1
                    else f"run scripts/setup-mxnet (MXNet and Chainer's NumPy-1 interpreter) and pass "
                         f"--python {self.framework}=.venv-mxnet/bin/python")
            raise MissingDependency(IMPORT_NAME[self.framework], f"the {self.framework} cases{via}",
                                    f"{hint} ({message})")
        if kind == "unsupported":
            raise Unsupported(message)
        raise WorkerError(f"{self.framework} worker: {message}")

    def _died(self, when: str) -> str:
        code = self.proc.poll()
        try:
            self._log.flush()
            tail = (self.dir / "stderr.log").read_bytes().decode(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return (f"{self.framework} worker exited {when} (code {code})"
                + (": " + " | ".join(tail) if tail else ""))

    # -- arrays -----------------------------------------------------------------------------
    def path(self, name: str) -> str:
        return str(self.dir / name)

    def save(self, name: str, arrays: dict) -> str:
        """The arrays in an .npz the worker reads.  bf16 (ml_dtypes) travels widened to fp32,
        exactly: .npz keeps no ml_dtypes type (it would arrive as opaque void), and the adapter
        rounds it back to its framework's bf16 without loss."""
        p = self.path(name)
        np.savez(p, **{k: (a.astype(np.float32) if getattr(a, "dtype", None) is not None
                           and a.dtype.kind == "V" else a) for k, a in arrays.items()})
        return p

    def load(self, name: str) -> list:
        with np.load(self.path(name)) as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]

    # -- lifetime ----------------------------------------------------------------------------
    def kill(self) -> None:
        self._reuse_key = None          # a stopped worker is never handed out again
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """End the worker (under MICROBENCH_REUSE_WORKERS keep a live one for the next case)."""
        key = getattr(self, "_reuse_key", None)
        if key is not None and _reusing() and getattr(self, "proc", None) is not None \
                and self.proc.poll() is None and not self._buf:
            _IDLE.append((key, self))
            while len(_IDLE) > MAX_IDLE:        # the least recently used goes
                _IDLE.pop(0)[1]._shutdown()
            return
        self._shutdown()

    def _shutdown(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if getattr(self, "_log", None) is not None:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
