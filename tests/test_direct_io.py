"""Large payloads: page-aligned files, direct I/O from the snapshot buffers, and its failure paths.

A payload of at least 1 MiB is stored with its ``.npy`` header padded to
4096 bytes, so that its data starts on a page boundary of the file. An
asynchronous commit copies the state into page-aligned host buffers, and the
persist writes them to the disk with ``O_DIRECT`` (no copy into the page
cache); where the file system refuses direct I/O, the write goes through the
page cache instead. Either way the file is a plain ``.npy`` file.

Real files on the real file system of the test's temporary directory. Faults
are injected by wrapping ``os.write``/``fcntl.fcntl`` for descriptors of
files in a ``.staging-`` directory (the persist thread calls the same
module-level functions), as in ``test_faults.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import Checkpoint, CheckpointWriteError, bind_checkpoint_state
from restartable.store import scan_rows, verify_row

O_DIRECT = getattr(os, "O_DIRECT", 0)
LINUX_ONLY = pytest.mark.skipif(
    not (O_DIRECT and os.path.isdir("/proc/self/fd")), reason="needs Linux (O_DIRECT, /proc/self/fd)"
)
pytestmark = LINUX_ONLY

NAME = "direct"
MIB = 1 << 20


@dataclass
class Big:
    # 6 MiB + 12 bytes: not a whole number of pages, so the tail of the file
    # goes through the page cache.
    a: np.ndarray = field(default_factory=lambda: np.zeros(6 * MIB // 4 + 3, dtype=np.float32))
    t: torch.Tensor = field(default_factory=lambda: torch.zeros(1024, 1024, dtype=torch.float64))
    small: np.ndarray = field(default_factory=lambda: np.zeros(100, dtype=np.int16))


def fill(state: Any, k: int) -> None:
    rng = np.random.default_rng(k)
    state.a[:] = rng.standard_normal(state.a.shape, dtype=np.float32)
    state.t.copy_(torch.from_numpy(rng.standard_normal((1024, 1024))))
    state.small[:] = k


def expected(k: int) -> Big:
    state = Big()
    fill(state, k)
    return state


def restore(store: Path, row: int = -1) -> tuple[Any, Big]:
    session = Checkpoint(NAME, path=store).select(row)
    proxy = session.bind(Big())
    assert proxy.checkpoint_state_loaded
    return session.entry, proxy.checkpoint_dataclass


def assert_equal(actual: Big, wanted: Big) -> None:
    assert np.array_equal(actual.a, wanted.a)
    assert torch.equal(actual.t, wanted.t)
    assert np.array_equal(actual.small, wanted.small)


def header_length(path: Path) -> int:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        read(fh)
        return fh.tell()


def payload_files(entry: Any) -> list[Path]:
    return sorted(p for p in Path(entry.path).iterdir() if p.suffix == ".npy")


def commit(store: Path, k: int, async_commit: bool) -> None:
    with Checkpoint(NAME, path=store, async_commit=async_commit) as session:
        state = bind_checkpoint_state(Big())
        fill(state, k)
        session.write(lead_time=k)


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def is_direct(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
    except OSError:
        return False


class DirectWrites:
    """Wraps ``os.write`` to count (and optionally fail) direct writes to staging files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None, err: int = errno.EINVAL) -> None:
        self.count = 0
        self.failed = 0
        self.fail_after = fail_after
        self.err = err
        self._lock = threading.Lock()
        real = os.write

        def wrapper(fd: int, data: Any) -> int:
            if is_direct(fd) and "/.staging-" in fd_path(fd):
                with self._lock:
                    if self.fail_after is not None and self.count >= self.fail_after:
                        self.failed += 1
                        raise OSError(self.err, os.strerror(self.err))
                    self.count += 1
            return real(fd, data)

        monkeypatch.setattr(os, "write", wrapper)


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_large_payloads_have_page_aligned_data_and_stay_plain_npy(store: Path, async_commit: bool) -> None:
    commit(store, 1, async_commit)
    entry, restored = restore(store)
    assert_equal(restored, expected(1))
    assert verify_row(entry.path) == []
    lengths = {}
    for path in payload_files(entry):
        array = np.load(path, allow_pickle=False)  # a plain .npy file for any reader
        lengths[array.nbytes] = header_length(path)
        assert path.stat().st_size == header_length(path) + array.nbytes
    want = expected(1)
    assert lengths[want.a.nbytes] == 4096 and lengths[want.t.numpy().nbytes] == 4096
    # The small array shares a pack (restartable.store.packs), unpadded.
    assert sorted(lengths) == sorted([want.a.nbytes, want.t.numpy().nbytes])
    assert (Path(entry.path) / "pack000000.bin").stat().st_size == want.small.nbytes


def test_sync_and_async_rows_have_identical_files(tmp_path: Path) -> None:
    rows = {}
    for async_commit in (False, True):
        store = tmp_path / f"async={async_commit}"
        store.mkdir()
        commit(store, 7, async_commit)
        (row,) = scan_rows(store).rows
        rows[async_commit] = row
    files = {flag: [(f["size"], f["checksum"]) for f in row.body["files"]] for flag, row in rows.items()}
    assert files[False] == files[True]


def test_async_commit_of_large_state_writes_directly(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = DirectWrites(monkeypatch)
    commit(store, 3, async_commit=True)
    assert writes.count >= 2  # one direct write (at least) per large payload
    _, restored = restore(store)
    assert_equal(restored, expected(3))


@pytest.mark.parametrize("value", ["0", "off"])
def test_direct_io_can_be_turned_off(store: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RESTARTABLE_DIRECT_IO", value)
    writes = DirectWrites(monkeypatch)
    commit(store, 4, async_commit=True)
    assert writes.count == 0
    entry, restored = restore(store)
    assert_equal(restored, expected(4))
    assert verify_row(entry.path) == []
    assert all(header_length(path) == 4096 for path in payload_files(entry) if path.stat().st_size > MIB)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.asfortranarray(np.arange(3 * MIB, dtype=np.float32).reshape(1536, 2048)), id="fortran"),
        pytest.param(lambda: np.arange(8 * MIB, dtype=np.float32).reshape(4096, 2048)[::2, 1::2], id="strided-view"),
        pytest.param(lambda: np.arange(9 * MIB + 5, dtype=np.int64).astype(np.int8), id="odd-length-int8"),
        pytest.param(lambda: np.arange(2 * MIB, dtype=np.uint32).view(np.complex64), id="complex"),
        pytest.param(lambda: np.arange(4 * MIB) % 3 == 0, id="bool"),
        pytest.param(lambda: np.zeros((0, 4 * MIB), dtype=np.float32), id="empty"),
    ],
)
def test_async_snapshot_of_every_layout_roundtrips(store: Path, make: Any) -> None:
    @dataclass
    class Holder:
        x: Any = None

    original = make()
    with Checkpoint(NAME, path=store, async_commit=True) as session:
        state = bind_checkpoint_state(Holder())
        state.x = original.copy(order="K") if original.flags.owndata else original
        session.write(lead_time=1)
        if state.x.size:
            state.x[...] = 0 if state.x.dtype != bool else False  # after write(): not in the row
        session.flush()
    session = Checkpoint(NAME, path=store).select(-1)
    restored = session.bind(Holder()).checkpoint_dataclass.x
    assert restored.dtype == original.dtype and restored.shape == original.shape
    assert np.array_equal(restored, make())
    assert verify_row(session.entry.path) == []


def _residency(path: Path, offset: int) -> float:
    """Fraction of the file's whole pages from ``offset`` on that are in the page cache (``mincore``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = np.zeros(pages, dtype=np.uint8)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mapped:
        address = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
        if libc.mincore(address, size, vector.ctypes.data) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
    whole = vector[offset // mmap.PAGESIZE : size // mmap.PAGESIZE]  # the partial last page went through the cache
    return float((whole & 1).mean()) if whole.size else 0.0


def test_async_persist_leaves_the_page_cache_alone(store: Path, tmp_path: Path) -> None:
    """The direct write does not fill the page cache with the checkpoint; a buffered write does (the control)."""
    probe_direct = tmp_path / "probe-direct"
    probe_buffered = tmp_path / "probe-buffered"
    data = np.frombuffer(mmap.mmap(-1, 8 * MIB), dtype=np.uint8)
    data[:] = 1
    fd = os.open(probe_direct, os.O_WRONLY | os.O_CREAT | O_DIRECT)
    try:
        os.write(fd, data)
    except OSError as exc:
        pytest.skip(f"no direct I/O on this file system ({exc})")
    finally:
        os.close(fd)
    probe_buffered.write_bytes(data.tobytes())
    if _residency(probe_buffered, 0) < 0.5:
        pytest.skip("buffered writes do not stay in this machine's page cache: nothing to tell apart")
    if _residency(probe_direct, 0) > 0.1:
        pytest.skip("this file system keeps direct writes in the page cache")

    commit(store, 5, async_commit=True)
    (row,) = scan_rows(store).rows
    large = [f for f in row.body["files"] if f["size"] > MIB]
    assert len(large) == 2
    for record in large:
        resident = _residency(Path(row.path) / record["name"], 4096)
        assert resident < 0.1, f"{record['name']}: {resident:.0%} of its data pages are cached"


# --------------------------------------------------------------------------- refusals and faults


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EFAULT, errno.EOPNOTSUPP])
@pytest.mark.parametrize("fail_after", [0, 1], ids=["refused-at-once", "refused-midway"])
def test_direct_write_refused_falls_back_to_the_page_cache(
    store: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int, err: int
) -> None:
    """A device that refuses a direct request (EINVAL), or memory it cannot reach directly (EFAULT),
    gets the rest through the page cache."""

    @dataclass
    class Long:
        # 40 MiB: more than one direct request.
        x: np.ndarray = field(default_factory=lambda: np.arange(10 * MIB, dtype=np.float32))

    writes = DirectWrites(monkeypatch, fail_after=fail_after, err=err)
    with Checkpoint(NAME, path=store, async_commit=True) as session:
        state = bind_checkpoint_state(Long())
        session.write(lead_time=1)
        state.x[:] = -1
    assert writes.failed >= 1 and writes.count == fail_after
    session = Checkpoint(NAME, path=store).select(-1)
    restored = session.bind(Long()).checkpoint_dataclass
    assert np.array_equal(restored.x, np.arange(10 * MIB, dtype=np.float32))
    assert verify_row(session.entry.path) == []


def test_file_system_without_direct_io(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fcntl(F_SETFL, O_DIRECT)`` refused (tmpfs on older kernels, many FUSE file systems): plain writes."""
    real = fcntl.fcntl
    refused = []

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & O_DIRECT:
            refused.append(fd_path(fd))
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", no_direct)
    commit(store, 2, async_commit=True)
    assert len(refused) == 2 and all("/.staging-" in path for path in refused)
    entry, restored = restore(store)
    assert_equal(restored, expected(2))
    assert verify_row(entry.path) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_disk_full_during_direct_write_keeps_the_previous_row(
    store: Path, monkeypatch: pytest.MonkeyPatch, err: int, async_commit: bool
) -> None:
    # Sync commits write directly only when the caller's memory happens to be
    # page-aligned: make it so, to cover both paths.
    commit(store, 1, async_commit)
    writes = DirectWrites(monkeypatch, fail_after=0, err=err)
    with pytest.raises(CheckpointWriteError) as caught:
        with Checkpoint(NAME, path=store, async_commit=async_commit) as session:
            state = bind_checkpoint_state(Big())
            aligned = np.frombuffer(mmap.mmap(-1, state.a.nbytes), dtype=np.float32)
            state.a = aligned
            fill(state, 2)
            session.write(lead_time=2)
            session.flush()
    assert writes.failed >= 1
    assert caught.value.errno == err
    assert str(store) in str(caught.value) and os.strerror(err) in str(caught.value)
    assert not [n for n in os.listdir(store) if n.startswith(".staging-")]
    entry, restored = restore(store)
    assert entry.metadata["lead_time"] == 1
    assert_equal(restored, expected(1))


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_any_failure_of_a_direct_write_fails_the_commit(
    store: Path, monkeypatch: pytest.MonkeyPatch, async_commit: bool
) -> None:
    """Not only OSError: whatever stops the helper thread's write must keep the row from being published."""
    import restartable.store.files as files_module

    commit(store, 1, async_commit)

    def broken(fd: int, body: memoryview) -> None:
        raise MemoryError("no memory for the direct write")

    monkeypatch.setattr(files_module, "_write_direct", broken)
    with pytest.raises((MemoryError, CheckpointWriteError), match="no memory for the direct write"):
        with Checkpoint(NAME, path=store, async_commit=async_commit) as session:
            state = bind_checkpoint_state(Big())
            state.a = np.frombuffer(mmap.mmap(-1, state.a.nbytes), dtype=np.float32)  # page-aligned: the direct path
            fill(state, 2)
            session.write(lead_time=2)
            session.flush()
    assert not [n for n in os.listdir(store) if n.startswith(".staging-")]
    entry, restored = restore(store)
    assert entry.metadata["lead_time"] == 1
    assert_equal(restored, expected(1))
    assert verify_row(entry.path) == []


def test_structured_dtypes_of_one_item_size_do_not_share_buffers(store: Path) -> None:
    """Two structured dtypes with the same ``dtype.str`` (``|V8``) get buffers of their own."""

    @dataclass
    class Records:
        r: Any = None

    first = np.dtype([("a", "<f4"), ("b", "<i4")])
    second = np.dtype([("x", "<i2"), ("y", "<i2"), ("z", "<f4")])
    assert first.str == second.str
    with Checkpoint(NAME, path=store, async_commit=True, mode="append") as session:
        state = bind_checkpoint_state(Records())
        for k, dtype in enumerate([first, second, first, second], start=1):
            state.r = np.zeros(MIB // 8 * 3, dtype=dtype)
            state.r[dtype.names[0]] = k
            session.flush(lead_time=k)  # durable: the buffers are back in the pool for the next commit
    for k, entry in enumerate(Checkpoint(NAME, path=store, mode="append").catalog, start=1):
        restored = Checkpoint(NAME, path=store, mode="append").select(k - 1).bind(Records()).checkpoint_dataclass.r
        dtype = first if k % 2 else second
        assert restored.dtype == dtype and np.all(restored[dtype.names[0]] == k), entry.commit_id


# --------------------------------------------------------------------------- SIGKILL

STATE_MODULE = r"""
import numpy as np
from dataclasses import dataclass, field

@dataclass
class S:
    x: np.ndarray = field(default_factory=lambda: np.zeros(3 * (1 << 20) + 7, dtype=np.float32))
    k: int = 0
"""

CHILD = r"""
import sys
from restartable import Checkpoint, bind_checkpoint_state
from direct_child_state import S

with Checkpoint("direct", path=sys.argv[1], async_commit=True, mode="append", history_size=3) as session:
    state = bind_checkpoint_state(S())
    for k in range(1, 100000):
        state.k = k
        state.x[:] = k
        session.write(lead_time=k)
        if k == 2:
            print("ready", flush=True)
"""


def test_sigkill_during_direct_writes_keeps_whole_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "direct_child_state.py").write_text(STATE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    from direct_child_state import S

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(0)
    for attempt in range(4):
        store = tmp_path / f"store{attempt}"
        store.mkdir()
        child = subprocess.Popen(
            [sys.executable, str(script), str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(60)
        assert child.returncode == -signal.SIGKILL
        rows = scan_rows(store).rows
        assert rows, "no row survived"
        for row in rows:
            assert verify_row(row.path) == []
        session = Checkpoint(NAME, path=store, mode="append").select(-1)
        proxy = session.bind(S())
        assert proxy.checkpoint_state_loaded
        restored = proxy.checkpoint_dataclass
        assert restored.k == session.entry.metadata["lead_time"] >= 1
        assert np.all(restored.x == restored.k)


# --------------------------------------------------------------------------- retiring large rows


@dataclass
class Heavy:
    # 72 MiB in all: large enough that retiring a row is handed to a helper thread.
    a: np.ndarray = field(default_factory=lambda: np.zeros(9 * MIB, dtype=np.float32))
    b: np.ndarray = field(default_factory=lambda: np.zeros(9 * MIB, dtype=np.float32))


def trash_dirs(store: Path) -> list[str]:
    return sorted(n for n in os.listdir(store) if n.startswith(".trash-"))


@pytest.mark.parametrize("async_commit", [False, True], ids=["sync", "async"])
def test_large_retired_rows_are_gone_when_the_session_ends(store: Path, async_commit: bool) -> None:
    with Checkpoint(NAME, path=store, async_commit=async_commit) as session:
        state = bind_checkpoint_state(Heavy())
        for k in range(1, 5):
            state.a[:] = k
            state.b[:] = -k
            session.flush(lead_time=k)
            # Overwrite mode: one committed row, whatever is still being deleted.
            assert len(os.listdir(store / "commits")) == 1
            # At most the row retired by this commit is still being deleted.
            assert len(trash_dirs(store)) <= 1
    assert trash_dirs(store) == []
    session = Checkpoint(NAME, path=store).select(-1)
    restored = session.bind(Heavy()).checkpoint_dataclass
    assert session.entry.metadata["lead_time"] == 4
    assert np.all(restored.a == 4) and np.all(restored.b == -4)


def test_no_thread_for_the_deletion_deletes_at_once(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "restartable-reaper":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with Checkpoint(NAME, path=store) as session:
        state = bind_checkpoint_state(Heavy())
        for k in range(1, 4):
            state.a[:] = k
            session.flush(lead_time=k)
            assert trash_dirs(store) == []
    session = Checkpoint(NAME, path=store).select(-1)
    assert session.entry.metadata["lead_time"] == 3
    assert np.all(session.bind(Heavy()).checkpoint_dataclass.a == 3)


def test_deletion_failing_on_the_helper_thread_is_retried(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_unlink = os.unlink
    failing = {"on": True, "hits": 0}

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        # shutil.rmtree unlinks relative to a descriptor of the directory.
        where = fd_path(kwargs["dir_fd"]) + "/" if kwargs.get("dir_fd") is not None else ""
        if failing["on"] and "/.trash-" in where + os.fspath(path):
            failing["hits"] += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with Checkpoint(NAME, path=store) as session:
        state = bind_checkpoint_state(Heavy())
        for k in range(1, 4):
            state.a[:] = k
            session.flush(lead_time=k)
        assert failing["hits"] >= 1
        # The commits went through; the undeletable rows wait in the trash.
        assert len(os.listdir(store / "commits")) == 1
        failing["on"] = False
        state.a[:] = 9
        session.flush(lead_time=9)  # retries what was left, before and after this commit
    assert trash_dirs(store) == []
    session = Checkpoint(NAME, path=store).select(-1)
    assert session.entry.metadata["lead_time"] == 9
    assert np.all(session.bind(Heavy()).checkpoint_dataclass.a == 9)
