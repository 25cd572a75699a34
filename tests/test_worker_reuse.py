"""Framework workers reused within a test session (MICROBENCH_REUSE_WORKERS): only a live worker
started the same way is handed out again, at most MAX_IDLE wait, and without the switch every case
gets a process of its own (as measurements do)."""
import pytest

from microbench.frameworks import client


class _Proc:
    def __init__(self):
        self.code = None

    def poll(self):
        return self.code


class _FakeWorker(client.Worker):
    started = 0

    def __init__(self, framework, *, python=None, threads=None, device="cpu"):
        type(self).started += 1
        self.framework, self.proc, self._buf, self.ended = framework, _Proc(), b"", False

    def _shutdown(self):
        self.ended = True


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(client, "Worker", _FakeWorker)
    monkeypatch.setattr(client, "_IDLE", [])
    _FakeWorker.started = 0
    return _FakeWorker


def test_a_closed_worker_serves_the_next_case_started_the_same_way(fake, monkeypatch):
    monkeypatch.setenv(client.REUSE_ENV, "1")
    a = client.start("torch", threads=1)
    a.close()
    assert client.start("torch", threads=1) is a and fake.started == 1
    a.close()
    assert client.start("torch", threads=2) is not a          # another thread count: another process
    assert client.start("jax", threads=1) is not a
    monkeypatch.setenv("ONEDNN_VERBOSE", "all")               # read at start-up: another process
    assert client.start("torch", threads=1) is not a and not a.ended


def test_a_dead_worker_is_never_handed_out(fake, monkeypatch):
    monkeypatch.setenv(client.REUSE_ENV, "1")
    a = client.start("torch")
    a.close()
    a.proc.code = -9
    b = client.start("torch")
    assert b is not a and a.ended


def test_at_most_max_idle_workers_wait(fake, monkeypatch):
    monkeypatch.setenv(client.REUSE_ENV, "1")
    ws = [client.start("torch", threads=t) for t in range(1, client.MAX_IDLE + 3)]
    for w in ws:
        w.close()
    assert len(client._IDLE) == client.MAX_IDLE
    assert [w.ended for w in ws] == [True, True] + [False] * client.MAX_IDLE   # the oldest went


def test_without_the_switch_each_case_has_its_own_process(fake, monkeypatch):
    monkeypatch.delenv(client.REUSE_ENV, raising=False)
    a = client.start("torch")
    a.close()
    assert a.ended and client.start("torch") is not a and fake.started == 2
