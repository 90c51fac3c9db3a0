"""Asynchronous commits (``Checkpoint(..., async_commit=True)``).

The contract (issue 7): ``write()``/``flush(wait=False)`` block only for the
snapshot; the persist runs on one background thread, one at a time per store;
``flush(wait=True)``, leaving the context, ``close()`` and interpreter exit
wait for it; a background failure is raised as :class:`CheckpointWriteError`
at the next call into the store; the catalog never lists a row before it is
durable.

Everything goes through real files, real processes and real tensors. A few
tests observe or steer the engine through internals, and say so where they
do:

* ``RowWriter.persist`` is wrapped to hold a persist at a gate (so that a
  mutation provably happens while the persist has not read the snapshot yet),
  to count concurrent persists, or to record the snapshot's host buffers;
* the background thread is found by its name, ``restartable-persist[...]``,
  to wait until a failed persist has finished without calling into the store;
* ``Checkpoint._buffers`` (the :class:`HostBufferPool`) is inspected for the
  memory bound;
* ``SyncGroup.wait`` and ``restartable.checkpoint.scan_rows`` are wrapped to
  place a fault or a concurrent commit at an exact point of a race.

Faults are injected like in ``test_faults.py``: ``os.fsync``/``os.write`` are
replaced with wrappers that raise ``OSError(ENOSPC)``/``OSError(EIO)`` for
descriptors of files in a ``.staging-`` directory. The persist thread calls the
same module-level ``os`` functions, so the wrappers act there too.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import (
    Checkpoint,
    CheckpointEntry,
    CheckpointWriteError,
    bind_checkpoint_state,
)
from restartable.store import scan_rows, verify_row
from restartable.store.writer import RowWriter

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to map descriptors to paths"
)

NAME = "async"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


# --------------------------------------------------------------------------- helpers


def lead_times(entries: tuple[CheckpointEntry, ...]) -> list[Any]:
    return [entry.lead_time for entry in entries]


def staging_dirs(store: Path) -> list[str]:
    return sorted(name for name in os.listdir(store) if name.startswith(".staging-"))


def assert_rows_verify(entries: tuple[CheckpointEntry, ...]) -> None:
    for entry in entries:
        assert verify_row(entry.path) == [], entry.commit_id


def restore(
    store: Path, cls: type, row: int = -1, mode: str = "overwrite", device: str = "cpu"
) -> tuple[CheckpointEntry, Any]:
    """Row ``row`` read back by a separate :class:`Checkpoint` and a fresh instance of ``cls``."""
    session = Checkpoint(NAME, path=store, mode=mode, device=device).select(row)
    proxy = session.bind(cls())
    assert proxy.checkpoint_state_loaded
    assert session.entry is not None
    return session.entry, proxy.checkpoint_dataclass


def persist_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("restartable-persist")]


def join_persist_threads() -> None:
    """Wait for the background persist to finish without calling into the store (internal: thread name)."""
    threads = persist_threads()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


class Gate:
    """Holds every persist before it starts, until :meth:`open` (wraps ``RowWriter.persist``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.event = threading.Event()
        self.event.set()
        self.entered = threading.Event()
        real = RowWriter.persist

        def gated(writer: RowWriter, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            assert self.event.wait(60), "the gate was never opened"
            return real(writer, snapshot, *args, **kwargs)

        monkeypatch.setattr(RowWriter, "persist", gated)

    def close(self) -> None:
        self.entered.clear()
        self.event.clear()

    def open(self) -> None:
        self.event.set()


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Fault:
    """Makes ``os.<op>`` fail with ``err`` for staging files while armed; records the failing threads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, op: str, err: int) -> None:
        self.armed = False
        self.hit = threading.Event()
        self.threads: list[str] = []
        real = getattr(os, op)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.armed and args and isinstance(args[0], int) and "/.staging-" in fd_path(args[0]):
                self.threads.append(threading.current_thread().name)
                self.hit.set()
                raise OSError(err, os.strerror(err))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, op, wrapper)

    def wait_hit(self) -> None:
        """Wait until the failed persist has finished (every staging call failing meanwhile), then disarm."""
        assert self.hit.wait(60), "the fault was never injected"
        join_persist_threads()
        self.armed = False


def check_background_error(exc: CheckpointWriteError, err: int, store: Path) -> None:
    """Raised with the errno, chained to the original OSError, with the background traceback."""
    assert exc.errno == err
    assert str(store) in str(exc)
    chain = []
    cause: BaseException | None = exc
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, OSError) and c.errno == err for c in chain), chain
    inner = exc.__cause__
    assert inner is not None and inner.__traceback__ is not None
    frames = [frame.name for frame in traceback.extract_tb(inner.__traceback__)]
    assert "persist" in frames, frames


def run_script(path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


# --------------------------------------------------------------------------- 1. mutation after write()

N64 = 1 << 21  # 16 MB of float64
N32 = 1 << 21  # 8 MB of float32
RAMP64 = np.arange(N64, dtype=np.float64)
RAMP2D = np.arange(1024 * 2048, dtype=np.float32).reshape(1024, 2048)
GRID = np.arange(4096, dtype=np.float64)


@dataclass
class Big:
    step: int = 0
    arr: Any = None  # contiguous numpy float64
    np_view: Any = None  # non-contiguous numpy view
    t32: Any = None  # contiguous float32 tensor
    bf16: Any = None  # contiguous bfloat16 tensor
    t_view: Any = None  # non-contiguous float32 tensor view
    bf16_view: Any = None  # non-contiguous (transposed) bfloat16 tensor view


class BigBuffers:
    """The caller's buffers: the state holds views into them, mutated in place."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.ramp32 = torch.arange(N32, dtype=torch.float32, device=device)
        self.tramp = torch.arange(1024 * 1024, dtype=torch.float32, device=device).reshape(1024, 1024)
        self.arr = np.zeros(N64)
        self.np_base = np.zeros((1024, 2048), np.float32)
        self.t32 = torch.zeros(N32, device=device)
        self.bf16 = torch.zeros(N32 // 2, dtype=torch.bfloat16, device=device)
        self.t_base = torch.zeros(1024, 1024, device=device)
        self.b_base = torch.zeros(1024, 1024, dtype=torch.bfloat16, device=device)

    def attach(self, state: Any) -> None:
        state.arr = self.arr
        state.np_view = self.np_base[:, ::2]
        state.t32 = self.t32
        state.bf16 = self.bf16
        state.t_view = self.t_base[:, 1::2]
        state.bf16_view = self.b_base.t()
        assert not state.np_view.flags.c_contiguous and not state.np_view.flags.f_contiguous
        assert not state.t_view.is_contiguous() and not state.bf16_view.is_contiguous()

    def fill(self, state: Any, k: int) -> None:
        state.step = k
        np.add(RAMP64, k, out=self.arr)
        np.add(RAMP2D, k, out=self.np_base)
        torch.add(self.ramp32, k, out=self.t32)
        self.bf16.copy_(self.ramp32[: N32 // 2] + k)
        torch.add(self.tramp, k, out=self.t_base)
        self.b_base.copy_(self.tramp - k)

    def clobber(self, state: Any) -> None:
        state.step = -1
        self.arr.fill(-1.0)
        self.np_base.fill(-1.0)
        self.t32.fill_(-1.0)
        self.bf16.fill_(-1.0)
        self.t_base.fill_(-1.0)
        self.b_base.fill_(-1.0)

    def check(self, state: Any, k: int) -> None:
        assert state.step == k
        np.testing.assert_array_equal(state.arr, RAMP64 + k)
        np.testing.assert_array_equal(state.np_view, (RAMP2D + k)[:, ::2])
        expected = {
            "t32": self.ramp32 + k,
            "bf16": (self.ramp32[: N32 // 2] + k).to(torch.bfloat16),
            "t_view": (self.tramp + k)[:, 1::2],
            "bf16_view": (self.tramp - k).to(torch.bfloat16).t(),
        }
        for name, want in expected.items():
            got = getattr(state, name)
            assert isinstance(got, torch.Tensor), name
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert got.device.type == self.device, name
            assert torch.equal(got.cpu(), want.cpu()), f"{name} does not hold the values at write() of step {k}"


@pytest.mark.parametrize("device", DEVICES)
def test_mutation_right_after_write_is_not_committed(store: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """The row holds the values at ``write()``, though the caller overwrites every buffer at once.

    On odd steps the persist is held at a gate until the mutation is done, so
    the mutation happens before the persist has read a byte; on even steps
    the mutation races with a persist of ~34 MB.
    """
    gate = Gate(monkeypatch)
    buffers = BigBuffers(device)
    checkpoint = Checkpoint(NAME, path=store, async_commit=True, device=device)
    with checkpoint as session:
        state = bind_checkpoint_state(Big())
        buffers.attach(state)
        for k in range(1, 9):
            buffers.fill(state, k)
            grid = GRID + k
            tags = ["step", k]
            held = k % 2 == 1
            if held:
                gate.close()
            assert session.write(lead_time=k, grid=grid, tags=tags) is None
            buffers.clobber(state)
            grid.fill(-1.0)
            tags.append("mutated")
            if held:
                assert session.entry is None or session.entry.lead_time == k - 1
                gate.open()
            entries = checkpoint.catalog  # waits for the persist
            assert lead_times(entries) == [k]
            assert_rows_verify(entries)
            entry, restored = restore(store, Big, device=device)
            assert entry.lead_time == k
            np.testing.assert_array_equal(entry.metadata["grid"], GRID + k)
            assert entry.metadata["tags"] == ["step", k]
            buffers.check(restored, k)
            assert session.entry is not None and session.entry.commit_id == entry.commit_id


# --------------------------------------------------------------------------- 2. failures in the background


@dataclass
class Small:
    k: int = 0
    a: Any = field(default_factory=lambda: np.zeros(1 << 18))  # 2 MiB: flushed on a helper thread
    b: Any = field(default_factory=lambda: np.zeros(16))  # flushed on the persist thread


@dataclass
class Other:
    x: int = 0


def set_small(state: Any, k: int) -> None:
    state.k = k
    state.a = np.full(1 << 18, float(k))
    state.b = np.arange(16.0) * k


def check_small(state: Small, k: int) -> None:
    assert state.k == k
    np.testing.assert_array_equal(state.a, np.full(1 << 18, float(k)))
    np.testing.assert_array_equal(state.b, np.arange(16.0) * k)


SURFACES = ["write", "flush", "flush_nowait", "flush_metadata", "pin", "bind", "catalog", "select", "refresh", "rewind"]


def surface(where: str, checkpoint: Checkpoint, session: Any, first: CheckpointEntry) -> None:
    if where == "write":
        session.write(lead_time=99)
    elif where == "flush":
        session.flush()
    elif where == "flush_nowait":
        session.flush(wait=False)
    elif where == "flush_metadata":
        session.flush(note="x")
    elif where == "pin":
        session.pin(note="x")
    elif where == "bind":
        session.bind(Other())
    elif where == "catalog":
        checkpoint.catalog  # noqa: B018
    elif where == "select":
        checkpoint.select(-1)
    elif where == "refresh":
        checkpoint.refresh()
    elif where == "rewind":
        session.rewind(first.commit_id)
    else:  # pragma: no cover
        raise AssertionError(where)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("op", ["fsync", "write"])
@pytest.mark.parametrize("where", [*SURFACES, "exit"])
def test_background_failure_is_raised_at_next_call(
    store: Path, monkeypatch: pytest.MonkeyPatch, where: str, op: str, err: int
) -> None:
    fault = Fault(monkeypatch, op, err)
    checkpoint = Checkpoint(NAME, path=store, mode="append", async_commit=True)

    def commit_first_then_fail(session: Any, state: Any) -> CheckpointEntry:
        set_small(state, 1)
        assert session.write(lead_time=1) is None
        session.flush()  # row 1 is durable; nothing in flight
        entries = checkpoint.catalog
        assert lead_times(entries) == [1]
        fault.armed = True
        set_small(state, 2)
        assert session.write(lead_time=2) is None  # only the snapshot: no error yet
        fault.wait_hit()
        return entries[0]

    if where == "exit":
        with pytest.raises(CheckpointWriteError) as info:
            with checkpoint as session:
                state = bind_checkpoint_state(Small())
                first = commit_first_then_fail(session, state)
        # The lock was released: the store opens again, at the last durable row.
        with checkpoint as session:
            assert session.lead_time == 1
            state = bind_checkpoint_state(Small())
            check_small(state.checkpoint_dataclass, 1)
            set_small(state, 3)
            session.write(lead_time=3)
            session.flush()
    else:
        with checkpoint as session:
            state = bind_checkpoint_state(Small())
            first = commit_first_then_fail(session, state)
            with pytest.raises(CheckpointWriteError) as info:
                surface(where, checkpoint, session, first)
            # Raised once, then the store works again.
            assert lead_times(checkpoint.catalog) == [1]
            assert session.lead_time == 1  # the session still stands for the last durable row
            set_small(state, 3)
            assert session.write(lead_time=3) is None
            session.flush()
            assert session.lead_time == 3
    check_background_error(info.value, err, store)
    assert fault.threads and all(name != "MainThread" for name in fault.threads), fault.threads
    entries = Checkpoint(NAME, path=store, mode="append").catalog
    assert lead_times(entries) == [1, 3]
    assert entries[0].commit_id == first.commit_id
    assert_rows_verify(entries)
    assert staging_dirs(store) == []
    _, restored = restore(store, Small, mode="append")
    check_small(restored, 3)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_background_failure_raised_by_close_without_context(
    store: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    fault = Fault(monkeypatch, "fsync", err)
    checkpoint = Checkpoint(NAME, path=store, async_commit=True)
    session = checkpoint.select()
    assert not session.exists
    assert session.write(lead_time=1, payload=np.full(1 << 18, 1.0)) is None
    session.flush()
    fault.armed = True
    assert session.write(lead_time=2, payload=np.full(1 << 18, 2.0)) is None
    fault.wait_hit()
    with pytest.raises(CheckpointWriteError) as info:
        checkpoint.close()
    check_background_error(info.value, err, store)
    # close() released the writer lock even though it raised.
    with Checkpoint(NAME, path=store) as other:
        assert other.lead_time == 1
        np.testing.assert_array_equal(other.metadata["payload"], np.full(1 << 18, 1.0))
        other.write(lead_time=3)
    assert lead_times(Checkpoint(NAME, path=store).catalog) == [3]
    assert staging_dirs(store) == []


def test_background_failure_at_exit_is_not_masked_by_body_exception(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body's own exception stays visible as ``__context__``; the write error is not swallowed."""
    fault = Fault(monkeypatch, "fsync", errno.EIO)
    checkpoint = Checkpoint(NAME, path=store, async_commit=True)
    with pytest.raises(CheckpointWriteError) as info:
        with checkpoint as session:
            session.write(lead_time=1)
            session.flush()
            fault.armed = True
            session.write(lead_time=2)
            fault.wait_hit()
            raise KeyError("body failed")
    assert isinstance(info.value.__context__, KeyError)
    check_background_error(info.value, errno.EIO, store)
    assert lead_times(Checkpoint(NAME, path=store).catalog) == [1]


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_flush_retried_after_failure_commits_the_pending_state(
    store: Path, monkeypatch: pytest.MonkeyPatch, async_commit: bool
) -> None:
    """A flush that raised left the writes pending: retrying it commits them, as in sync mode.

    Only the failure's timing differs between the modes (during the flush,
    or in the background before the flush returns), so the retry must behave
    the same.
    """
    fault = Fault(monkeypatch, "fsync", errno.ENOSPC)
    checkpoint = Checkpoint(NAME, path=store, mode="append", flush_interval=None, async_commit=async_commit)
    with checkpoint as session:
        state = bind_checkpoint_state(Small())
        set_small(state, 1)
        session.write(lead_time=1)
        assert session.flush().lead_time == 1
        set_small(state, 2)
        assert session.write(lead_time=2) is None  # deferred: flush_interval=None
        fault.armed = True
        with pytest.raises(CheckpointWriteError):
            session.flush()
        fault.armed = False
        retried = session.flush()
        assert retried is not None, "the retried flush committed nothing: the writes of step 2 were dropped"
        assert retried.lead_time == 2
        assert lead_times(checkpoint.catalog) == [1, 2]
    _, restored = restore(store, Small, mode="append")
    check_small(restored, 2)


def test_failure_raised_at_next_write_even_when_it_does_not_commit(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``flush_interval=3`` a failed background commit must stop the next ``write()``, not the third one."""
    fault = Fault(monkeypatch, "fsync", errno.EIO)
    checkpoint = Checkpoint(NAME, path=store, mode="append", flush_interval=3, async_commit=True)
    error: CheckpointWriteError | None = None
    try:
        with checkpoint as session:
            for k in (1, 2, 3):
                session.write(lead_time=k)
            session.flush()
            assert lead_times(checkpoint.catalog) == [3]
            fault.armed = True
            for k in (4, 5, 6):
                session.write(lead_time=k)  # the sixth hands a commit to the background
            fault.wait_hit()  # the background commit has failed and finished
            try:
                session.write(lead_time=7)
            except CheckpointWriteError as exc:
                error = exc
    except CheckpointWriteError:
        pass  # surfaced only at context exit
    assert error is not None, "write(7) went on as if the commit of write(6) had not failed"
    check_background_error(error, errno.EIO, store)


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_failed_fsync_on_helper_thread_fails_the_commit(
    store: Path, monkeypatch: pytest.MonkeyPatch, async_commit: bool
) -> None:
    """Payloads of 1 MiB and more are fsynced on helper threads; one failed fsync there must fail the commit.

    A single fsync fails, that of the 2 MiB payload, and it fails late: once
    the commit has started waiting for its helper threads (a failing disk is
    slow to answer). Internal: ``SyncGroup.wait`` is wrapped only to know
    when that is; every other call succeeds.
    """
    from restartable.store import files as files_module

    hits: list[str] = []
    armed = threading.Event()
    waiting = threading.Event()
    real_fsync = os.fsync
    real_wait = files_module.SyncGroup.wait

    def wait(group: Any) -> None:
        waiting.set()
        return real_wait(group)

    def fsync(fd: int) -> None:
        if armed.is_set() and "/.staging-" in fd_path(fd) and os.fstat(fd).st_size >= 1 << 20:
            armed.clear()
            hits.append(threading.current_thread().name)
            waiting.wait(10)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(files_module.SyncGroup, "wait", wait)
    monkeypatch.setattr(os, "fsync", fsync)
    checkpoint = Checkpoint(NAME, path=store, mode="append", async_commit=async_commit)
    with checkpoint as session:
        state = bind_checkpoint_state(Small())
        set_small(state, 1)
        session.write(lead_time=1)
        session.flush()
        waiting.clear()
        armed.set()
        set_small(state, 2)
        with pytest.raises(CheckpointWriteError) as info:
            session.write(lead_time=2)
            session.flush()  # async: raised here at the latest
        assert hits == ["restartable-fsync"], hits
        assert info.value.errno == errno.EIO
        assert lead_times(checkpoint.catalog) == [1], "a row whose payload failed to fsync was published"
    assert staging_dirs(store) == []


# --------------------------------------------------------------------------- 3. SIGKILL during a background persist

KILL_CHILD = r"""
import os, sys, time, traceback, warnings
from dataclasses import dataclass, field

import numpy as np

from restartable import Checkpoint, CheckpointCleanupWarning, CheckpointWarning, bind_checkpoint_state
from restartable.store.writer import RowWriter

store, report_path, stall, max_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
N = 1 << 19
BASE = np.arange(N, dtype=np.float64)


def derive_a(i):
    return BASE * 0.5 + i


def derive_b(i):
    return (BASE[::-1] - i).astype(np.float32)


@dataclass
class KillState:
    counter: int = 0
    tag: str = "c0"
    a: np.ndarray = field(default_factory=lambda: derive_a(0))
    b: np.ndarray = field(default_factory=lambda: derive_b(0))


def consistent(state, lead_time):
    return (
        state.counter == lead_time
        and state.tag == "c%d" % lead_time
        and np.array_equal(state.a, derive_a(lead_time))
        and np.array_equal(state.b, derive_b(lead_time))
    )


fd = os.open(report_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def report(line):
    os.write(fd, (line + "\n").encode())


start = None
if stall != "none":
    stage, n = stall.split(":")
    n = int(n)
    persists = [0]
    real_persist = RowWriter.persist

    def persist(self, snapshot, *args, **kwargs):
        persists[0] += 1
        return real_persist(self, snapshot, *args, **kwargs)

    RowWriter.persist = persist
    real_fsync = os.fsync

    def fsync(fdesc):
        if persists[0] == n:
            try:
                path = os.readlink("/proc/self/fd/%d" % fdesc)
            except OSError:
                path = ""
            if (stage == "payload" and "/.staging-" in path and path.endswith(".npy")) or (
                stage == "publish" and path.endswith("/commits")
            ):
                report("stalled %s %d" % (stage, start + n))
                time.sleep(3600)
        return real_fsync(fdesc)

    os.fsync = fsync

warnings.simplefilter("error", CheckpointWarning)
warnings.simplefilter("ignore", CheckpointCleanupWarning)  # inserted in front: takes precedence
try:
    with Checkpoint("async", path=store, mode="append", async_commit=True) as session:
        state = bind_checkpoint_state(KillState())
        start = state.counter
        ok = consistent(state, session.lead_time if session.exists else 0)
        report("open %d %s" % (start, "ok" if ok else "inconsistent"))
        pending = None
        i = start
        while i < start + max_rows:
            i += 1
            state.counter = i
            state.tag = "c%d" % i
            state.a[:] = derive_a(i)  # in place, while the previous row may still persist
            state.b = derive_b(i)
            assert session.write(lead_time=i) is None
            if pending is not None:
                report("durable %d" % pending)  # a write waits for the previous persist
            pending = i
            if i % 3 == 0:
                session.flush()
                report("durable %d" % i)
                pending = None
    report("done")
except BaseException:
    report("error " + traceback.format_exc().replace("\n", " | "))
    sys.exit(2)
"""


def test_sigkill_during_background_persist_keeps_whole_rows(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    script = tmp_path / "kill_child.py"
    script.write_text(KILL_CHILD)
    report = tmp_path / "report.txt"
    report.touch()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # Two deterministic kills inside a persist (payloads written, not yet
    # published; published, commits/ not yet synced), then kills at random moments.
    plan = ["payload:2", "publish:2", "none", "payload:1", "none", "none", "none"]
    durable: set[int] = set()
    consumed = 0

    def new_lines(timeout: float, want: str) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = report.read_text().splitlines()
            fresh = lines[consumed:]
            if any(line.startswith(want) or line.startswith("error") for line in fresh):
                return fresh
            if time.monotonic() > deadline:
                raise AssertionError(f"no {want!r} line from the child (seed {seed}): {fresh}")
            time.sleep(0.005)

    try:
        for stall in [*plan, "final"]:
            max_rows = "0" if stall == "final" else "100000"
            with open(tmp_path / "child.err", "w") as err:
                child = subprocess.Popen(
                    [
                        sys.executable,
                        str(script),
                        str(store),
                        str(report),
                        "none" if stall == "final" else stall,
                        max_rows,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            try:
                fresh = new_lines(60, "open")
                opened = next(line for line in fresh if line.startswith(("open", "error")))
                assert opened.endswith(" ok"), f"{opened} (seed {seed}, stderr: {(tmp_path / 'child.err').read_text()})"
                start = int(opened.split()[1])
                if stall == "final":
                    assert child.wait(60) == 0, (tmp_path / "child.err").read_text()
                    break
                if stall == "none":
                    time.sleep(rng.uniform(0.0, 0.6))
                else:
                    new_lines(60, "stalled")
                os.kill(child.pid, signal.SIGKILL)
                assert child.wait(60) == -signal.SIGKILL, (tmp_path / "child.err").read_text()
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
            lines = report.read_text().splitlines()
            fresh, consumed = lines[consumed:], len(lines)
            assert not [line for line in fresh if line.startswith("error")], (fresh, seed)
            durable |= {int(line.split()[1]) for line in fresh if line.startswith("durable")}

            entries = Checkpoint(NAME, path=store, mode="append").catalog  # a damaged row would warn: an error here
            leads = lead_times(entries)
            assert leads == list(range(1, len(leads) + 1)), (leads, seed)
            assert_rows_verify(entries)
            assert sorted(os.listdir(store / "commits")) == [entry.commit_id for entry in entries]
            missing = durable - set(leads)
            assert not missing, f"rows reported durable are missing: {sorted(missing)} (seed {seed})"
            if stall != "none":
                stage, n = stall.split(":")
                row = start + int(n)
                stalled = next(line for line in fresh if line.startswith("stalled"))
                assert stalled == f"stalled {stage} {row}"
                if stage == "payload":
                    assert leads[-1] == row - 1, leads
                    assert staging_dirs(store), "the kill did not interrupt a persist"
                else:
                    assert leads[-1] == row, leads
        # The final child restored the newest row consistently ("open ... ok") and
        # removed the staging directories of the interrupted persists.
        assert staging_dirs(store) == []
        assert len(entries) >= 3
    finally:
        # Several hundred MB of rows: do not leave them to pytest's retention.
        import shutil

        shutil.rmtree(store, ignore_errors=True)


# --------------------------------------------------------------------------- 4. interpreter exit with a pending persist

EXIT_CHILD = r"""
import errno, gc, os, sys, threading

import numpy as np

from restartable import Checkpoint

store, variant = sys.argv[1], sys.argv[2]
N = 1 << 21
release = threading.Event()
real_rename = os.rename


def rename(src, dst, *args, **kwargs):
    # The row cannot be published before the script's last statement.
    if os.path.basename(os.fspath(src)).startswith(".staging-"):
        release.wait()
    return real_rename(src, dst, *args, **kwargs)


os.rename = rename


def values(k):
    return np.arange(N, dtype=np.float64) + k


if variant == "module":
    session = Checkpoint("async", path=store, async_commit=True).select()
    assert session.write(lead_time=1, values=values(1)) is None
    release.set()
elif variant == "function":
    def main():
        session = Checkpoint("async", path=store, async_commit=True).select()
        assert session.write(lead_time=1, values=values(1)) is None

    main()
    gc.collect()  # the Checkpoint and its session are gone
    release.set()
elif variant == "sys_exit_in_with":
    with Checkpoint("async", path=store, async_commit=True) as session:
        assert session.write(lead_time=1, values=values(1)) is None
        release.set()
        sys.exit(0)
elif variant == "uncaught":
    session = Checkpoint("async", path=store, async_commit=True).select()
    assert session.write(lead_time=1, values=values(1)) is None
    release.set()
    raise RuntimeError("the script failed after write()")
elif variant == "failure":
    session = Checkpoint("async", path=store, async_commit=True).select()
    session.write(lead_time=1, values=values(1))
    release.set()
    session.flush()
    release.clear()
    real_fsync = os.fsync

    def fsync(fd):
        if "/.staging-" in os.readlink("/proc/self/fd/%d" % fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    os.fsync = fsync
    assert session.write(lead_time=2, values=values(2)) is None
    release.set()
"""


@pytest.mark.parametrize("variant", ["module", "function", "sys_exit_in_with", "uncaught"])
def test_interpreter_exit_waits_for_pending_persist(tmp_path: Path, store: Path, variant: str) -> None:
    script = tmp_path / "exit_child.py"
    script.write_text(EXIT_CHILD)
    result = run_script(script, str(store), variant)
    expected_rc = 1 if variant == "uncaught" else 0
    assert result.returncode == expected_rc, result.stderr
    assert "background commit failed" not in result.stderr, result.stderr
    if variant == "uncaught":
        assert "the script failed after write()" in result.stderr
    else:
        assert result.stderr == ""
    entries = Checkpoint(NAME, path=store).catalog
    assert lead_times(entries) == [1]
    assert_rows_verify(entries)
    np.testing.assert_array_equal(entries[0].metadata["values"], np.arange(1 << 21, dtype=np.float64) + 1)
    assert staging_dirs(store) == []


def test_background_failure_at_interpreter_exit_is_reported(tmp_path: Path, store: Path) -> None:
    script = tmp_path / "exit_child.py"
    script.write_text(EXIT_CHILD)
    result = run_script(script, str(store), "failure")
    assert "a background commit failed at interpreter exit" in result.stderr, result.stderr
    assert "CheckpointWriteError" in result.stderr and os.strerror(errno.EIO) in result.stderr
    entries = Checkpoint(NAME, path=store).catalog
    assert lead_times(entries) == [1]
    assert_rows_verify(entries)
    assert staging_dirs(store) == []


# --------------------------------------------------------------------------- 5. memory: reused host buffers


@dataclass
class Pooled:
    k: int = 0
    a: Any = field(default_factory=lambda: np.zeros((256, 1024)))
    t: Any = field(default_factory=lambda: torch.zeros(512, 512))
    bf: Any = field(default_factory=lambda: torch.zeros(256, 512, dtype=torch.bfloat16))
    view: Any = field(default_factory=lambda: torch.zeros(512, 512)[::2, 1::2])


def record_snapshots(monkeypatch: pytest.MonkeyPatch) -> list[list[np.ndarray]]:
    """Wraps ``RowWriter.persist`` (internal) to keep every snapshot's host buffers alive.

    Keeping them alive means that without reuse the allocator could never
    hand the same memory out again: a repeated address is a reused buffer.
    """
    seen: list[list[np.ndarray]] = []
    real = RowWriter.persist

    def recording(writer: RowWriter, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(list(snapshot.payloads))
        return real(writer, snapshot, *args, **kwargs)

    monkeypatch.setattr(RowWriter, "persist", recording)
    return seen


def test_steady_state_commits_reuse_host_buffers(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_snapshots(monkeypatch)
    checkpoint = Checkpoint(NAME, path=store, async_commit=True)
    with checkpoint as session:
        state = bind_checkpoint_state(Pooled())
        for k in range(1, 13):
            state.k = k
            state.a[:] = k
            state.t.fill_(k)
            state.bf.fill_(k)
            state.view.fill_(k)
            session.write(lead_time=k, grid=np.full(64, float(k)))
            for payload in seen[-1]:  # detached from the caller's memory
                for live in (state.a, state.t.numpy(), state.view.numpy()):
                    assert not np.shares_memory(payload, live)
        session.flush()
        held = checkpoint._buffers._free  # internal: the pool's free lists
        assert all(len(buffers) <= 2 for buffers in held.values()), {key: len(v) for key, v in held.items()}
    assert len(seen) == 12
    by_payload = list(zip(*[[array.ctypes.data for array in payloads] for payloads in seen], strict=True))
    assert len(by_payload) == 5  # a, t, bf, view and the metadata grid
    for index, addresses in enumerate(by_payload):
        assert len(set(addresses)) <= 2, f"payload {index} got {len(set(addresses))} distinct buffers in 12 commits"
    _, restored = restore(store, Pooled)
    assert restored.k == 12 and bool((restored.view == 12).all()) and bool((restored.bf == 12).all())


def test_host_buffer_pool_stays_bounded_when_shapes_change(store: Path) -> None:
    """A state whose arrays change shape (a growing history) must not make the pool hold every shape ever seen.

    The documented peak is two extra copies of the state; internal: sums the
    bytes of ``Checkpoint._buffers._free``.
    """
    checkpoint = Checkpoint(NAME, path=store, async_commit=True)
    with checkpoint as session:
        state = bind_checkpoint_state(Small())
        for k in range(1, 21):
            state.a = np.zeros(4096 * k)
            session.write(lead_time=k)
        session.flush()
        state_bytes = state.a.nbytes + state.b.nbytes
        pooled = sum(buffer.nbytes for buffers in checkpoint._buffers._free.values() for buffer in buffers)
        assert pooled <= 2 * state_bytes, f"the pool holds {pooled} bytes for a state of {state_bytes} bytes"


# --------------------------------------------------------------------------- 6. one persist in flight


def test_at_most_one_persist_in_flight(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    counts = {"active": 0, "peak": 0, "calls": 0, "alive_peak": 0}
    threads: set[str] = set()
    snapshots: list[weakref.ref] = []
    real = RowWriter.persist

    def counting(writer: RowWriter, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            counts["active"] += 1
            counts["calls"] += 1
            counts["peak"] = max(counts["peak"], counts["active"])
            snapshots.append(weakref.ref(snapshot))
            counts["alive_peak"] = max(counts["alive_peak"], sum(ref() is not None for ref in snapshots))
        threads.add(threading.current_thread().name)
        try:
            time.sleep(0.002)  # widen the window in which a second persist could enter
            return real(writer, snapshot, *args, **kwargs)
        finally:
            with lock:
                counts["active"] -= 1

    monkeypatch.setattr(RowWriter, "persist", counting)
    checkpoint = Checkpoint(NAME, path=store, mode="append", async_commit=True)
    with checkpoint as session:
        state = bind_checkpoint_state(Small())
        for k in range(1, 41):
            set_small(state, k)
            if k % 5 == 0:
                session.write(lead_time=k)
                session.flush(wait=False, n=k)  # a second commit right behind the first
            else:
                assert session.write(lead_time=k, n=k) is None
        session.flush()
    assert counts["calls"] == 48
    assert counts["peak"] == 1, counts
    assert counts["alive_peak"] <= 2, counts  # never more than two snapshots alive
    assert "MainThread" not in threads and all(name.startswith("restartable-persist") for name in threads), threads
    entries = Checkpoint(NAME, path=store, mode="append").catalog
    assert [entry.metadata["n"] for entry in entries] == sorted(entry.metadata["n"] for entry in entries)
    assert [entry.sequence for entry in entries] == list(range(1, 49))
    assert lead_times(entries)[-1] == 40


# --------------------------------------------------------------------------- 7. nothing is listed before it is durable


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_flush_wait_returns_the_durable_entry(store: Path, async_commit: bool) -> None:
    checkpoint = Checkpoint(NAME, path=store, mode="append", flush_interval=None, async_commit=async_commit)
    with checkpoint as session:
        assert session.write(lead_time=1) is None  # deferred
        assert session.write(lead_time=2) is None
        entry = session.flush()
        assert isinstance(entry, CheckpointEntry)
        assert entry.lead_time == 2 and entry.write_count == 2
        assert checkpoint.catalog[-1] == entry
        assert verify_row(entry.path) == []
        entry = session.flush(wait=True, note="end")
        assert entry.metadata == {"lead_time": 2, "note": "end"}
        assert Checkpoint(NAME, path=store, mode="append").catalog[-1].commit_id == entry.commit_id
    with Checkpoint(NAME, path=store, mode="append", flush_interval=1, async_commit=async_commit) as session:
        written = session.write(lead_time=3)
        if async_commit:
            assert written is None  # the row is not durable yet
            session.flush()
            assert session.entry.lead_time == 3
        else:
            assert isinstance(written, CheckpointEntry) and written.lead_time == 3
        late = session.flush(wait=False, note="late")
        if async_commit:
            assert late is None
        else:
            assert isinstance(late, CheckpointEntry) and late.metadata["note"] == "late"
        session.flush()
        assert session.entry.metadata["note"] == "late"
        assert verify_row(session.entry.path) == []


def test_row_not_listed_before_published(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold the persist right before the publishing rename: every file is written and synced, the row is not listed."""
    at_rename = threading.Event()
    release = threading.Event()
    real_rename = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if os.path.basename(os.fspath(src)).startswith(".staging-"):
            at_rename.set()
            assert release.wait(60)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    checkpoint = Checkpoint(NAME, path=store, mode="append", async_commit=True)
    reader = Checkpoint(NAME, path=store, mode="append")
    with checkpoint as session:
        state = bind_checkpoint_state(Small())
        set_small(state, 1)
        session.write(lead_time=1)
        release.set()
        session.flush()
        release.clear()
        at_rename.clear()
        set_small(state, 2)
        assert session.write(lead_time=2) is None
        assert at_rename.wait(60)
        assert staging_dirs(store)  # the row is complete on disk, but not published
        assert lead_times(reader.catalog) == [1]
        assert reader.select(-1).lead_time == 1
        assert session.entry.lead_time == 1
        release.set()
        assert lead_times(checkpoint.catalog) == [1, 2]
        assert session.entry.lead_time == 2
    assert lead_times(reader.catalog) == [1, 2]


READER = r"""
import json, os, sys, traceback, warnings

import numpy as np

from restartable import Checkpoint, CheckpointWarning
from restartable.store import verify_row

warnings.simplefilter("error", CheckpointWarning)
store, ready, stop, history = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
reader = Checkpoint("async", path=store, mode="append", history_size=None if history == "all" else int(history))
polls = selects = newest = 0
problems, seen = [], set()


def problem(where, exc):
    problems.append("%s: %s" % (where, "".join(traceback.format_exception_only(type(exc), exc)).strip()))


open(ready, "w").close()
while True:
    final = os.path.exists(stop)
    polls += 1
    try:
        entries = reader.catalog
    except Exception as exc:  # CheckpointFallbackWarning made an error: a row was taken for damaged
        problem("catalog", exc)
        continue
    for entry in entries:
        try:
            found = verify_row(entry.path)
        except FileNotFoundError:
            if os.path.exists(entry.path):
                raise
            continue  # retired by the writer meanwhile: gone, not damaged
        if found and os.path.exists(entry.path):
            problems.append("verify_row: " + "; ".join(str(p) for p in found))
        if not np.array_equal(entry.metadata["fingerprint"], np.full(8, entry.lead_time)):
            problems.append("row %s: fingerprint does not match lead_time" % entry.commit_id)
        seen.add(entry.lead_time)
    if entries:
        if entries[-1].lead_time < newest:
            problems.append("newest row went back from %d to %d" % (newest, entries[-1].lead_time))
        newest = max(newest, entries[-1].lead_time)
        try:
            session = reader.select(-1)  # reads and verifies every file of the row
        except Exception as exc:
            problem("select", exc)
        else:
            selects += 1
            if session.lead_time < entries[-1].lead_time:
                problems.append("select(-1) gave an older row")
    if final:
        break
print(json.dumps({"polls": polls, "selects": selects, "newest": newest, "seen": sorted(seen), "problems": problems}))
"""


@dataclass
class Polled:
    k: int = 0
    a: Any = field(default_factory=lambda: np.zeros(1 << 21))
    t: Any = field(default_factory=lambda: torch.zeros(1 << 21))


def poll_while_committing(tmp_path: Path, store: Path, history_size: int | None) -> dict[str, Any]:
    """A reader process polls catalog, verify_row and select(-1).

    Meanwhile this process commits 15 rows of ~24 MB in async mode.
    """
    script = tmp_path / "reader.py"
    script.write_text(READER)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    reader = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(store),
            str(ready),
            str(stop),
            "all" if history_size is None else str(history_size),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert reader.poll() is None, reader.communicate()
            assert time.monotonic() < deadline, "the reader never started"
            time.sleep(0.01)
        checkpoint = Checkpoint(NAME, path=store, mode="append", history_size=history_size, async_commit=True)
        with checkpoint as session:
            state = bind_checkpoint_state(Polled())
            for k in range(1, 16):
                state.k = k
                state.a.fill(k)
                state.t.fill_(k)
                assert session.write(lead_time=k, fingerprint=np.full(8, k)) is None
            session.flush()
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["newest"] == 15 and 15 in result["seen"], result
    assert result["selects"] >= 1
    return result


def test_reader_never_sees_a_row_before_it_is_durable(tmp_path: Path, store: Path) -> None:
    result = poll_while_committing(tmp_path, store, history_size=None)
    assert result["problems"] == [], result["problems"]
    assert result["seen"] == list(range(1, 16))  # the last poll, after the final flush, lists every row


def test_reader_racing_retirement_does_not_report_damage(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row retired between a reader's listing and its reading is gone, not damaged.

    Deterministic form of a race seen by polling readers: the reader's scan
    (``restartable.checkpoint.scan_rows``, wrapped) returns, then the writer
    commits a row in overwrite mode, retiring the row just scanned, before the
    reader decodes that row's metadata (an array: a payload file). The reader
    must not warn about damage (``CheckpointFallbackWarning`` is an error here).
    """
    import restartable.catalog._reading as checkpoint_module

    writer = Checkpoint(NAME, path=store, async_commit=True)
    reader = Checkpoint(NAME, path=store)
    real_scan = checkpoint_module.scan_rows
    racing = threading.Event()

    with writer as session:

        def scan_then_commit(*args: Any, **kwargs: Any) -> Any:
            scan = real_scan(*args, **kwargs)
            if racing.is_set():
                racing.clear()
                session.write(lead_time=2, fingerprint=np.full(8, 2))
                session.flush()  # row 2 is durable and row 1 retired
            return scan

        session.write(lead_time=1, fingerprint=np.full(8, 1))
        session.flush()
        monkeypatch.setattr(checkpoint_module, "scan_rows", scan_then_commit)
        racing.set()
        entries = reader.catalog
        assert not racing.is_set()
        assert all(entry.path.exists() for entry in entries)
        assert lead_times(entries) == [2]


# --------------------------------------------------------------------------- 8. async and sync give the same rows


@dataclass
class Seq:
    k: int = 0
    name: str = ""
    a: Any = field(default_factory=lambda: np.zeros((64, 64)))
    t: Any = None
    bf: Any = None
    view: Any = None
    history: list = field(default_factory=list)


def run_sequence(store: Path, async_commit: bool, device: str) -> list[Any]:
    checkpoint = Checkpoint(
        NAME, path=store, mode="append", history_size=3, flush_interval=2, async_commit=async_commit, device=device
    )
    base = torch.arange(4096, dtype=torch.float32, device=device).reshape(64, 64)
    with checkpoint as session:
        state = bind_checkpoint_state(Seq())
        for k in range(1, 12):
            state.k = k
            state.name = f"step-{k}"
            state.a = np.arange(4096.0).reshape(64, 64) * k
            state.t = base + k
            state.bf = (base * k).to(torch.bfloat16)
            state.view = (base - k)[::2, 1::3]
            state.history.append(k)
            session.write(lead_time=k, grid=np.linspace(0, 1, 16) * k)
            if k == 4:
                session.pin(note="pinned")
            if k == 7:
                session.flush(wait=False, extra=k)
        session.flush(final=True)
    with checkpoint as session:  # resume and continue
        state = bind_checkpoint_state(Seq())
        state.k += 100
        session.write(lead_time=100)
        session.write(lead_time=101)
        session.flush()
    return scan_rows(store).rows


@pytest.mark.parametrize("device", DEVICES)
def test_async_and_sync_commit_identical_rows(tmp_path: Path, device: str) -> None:
    sync_rows = run_sequence(tmp_path / "sync", False, device)
    async_rows = run_sequence(tmp_path / "async", True, device)

    def comparable(row: Any) -> dict[str, Any]:
        body = dict(row.body)
        del body["commit_id"], body["saved_at"]
        return body

    assert len(sync_rows) == len(async_rows) >= 4
    assert any(row.body["pinned"] for row in sync_rows)
    for sync_row, async_row in zip(sync_rows, async_rows, strict=True):
        assert sync_row.sequence == async_row.sequence
        assert comparable(sync_row) == comparable(async_row)  # metadata, states, files with checksums
        assert verify_row(async_row.path) == []


# --------------------------------------------------------------------------- 9. CUDA


@dataclass
class OnDevice:
    t: Any = None
    bf: Any = None


@CUDA
def test_cuda_snapshot_uses_reused_pinned_host_buffers(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7, "On a GPU": device tensors are copied into reusable pinned host buffers."""
    seen = record_snapshots(monkeypatch)
    checkpoint = Checkpoint(NAME, path=store, async_commit=True, device="cuda")
    with checkpoint as session:
        state = bind_checkpoint_state(OnDevice())
        state.t = torch.zeros(1 << 20, device="cuda")
        state.bf = torch.zeros(1 << 20, dtype=torch.bfloat16, device="cuda")
        for k in range(1, 7):
            state.t.fill_(k)
            state.bf.fill_(k)
            assert session.write(lead_time=k) is None
            state.t.fill_(-1)
            state.bf.fill_(-1)
        session.flush()
    _, restored = restore(store, OnDevice, device="cuda")
    assert restored.t.device.type == "cuda" and restored.bf.dtype == torch.bfloat16
    assert bool((restored.t == 6).all()) and bool((restored.bf == 6).all())
    assert len(seen) == 6
    for payloads in seen:
        for payload in payloads:
            assert torch.from_numpy(payload).is_pinned(), "the snapshot of a CUDA tensor is not in pinned host memory"
    by_payload = list(zip(*[[array.ctypes.data for array in payloads] for payloads in seen], strict=True))
    for addresses in by_payload:
        assert len(set(addresses)) <= 2, "the snapshot of a CUDA tensor did not reuse its host buffer"
