"""Asynchronous persist: one commit in flight per store, errors never lost.

The caller's thread takes the snapshot (values encoded, arrays copied into
host buffers) and hands the persist to a :class:`BackgroundPersist`. A new
persist first waits for the one in flight, so at most two snapshots are ever
alive: the one being written and the one being taken.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ..errors import CheckpointWriteError
from .files import ALIGN_MIN_BYTES, PAGE_BYTES, aligned_empty

__all__ = ["BackgroundPersist", "HostBufferPool", "SnapshotBuffers", "parallel_copy"]


# Copies at least this large are split over threads: one thread cannot reach
# the memory bandwidth of a machine, and ``np.copyto`` releases the GIL.
PARALLEL_COPY_BYTES = 8 << 20
# A few threads saturate the memory bus; more only add overhead.
MAX_COPY_THREADS = 4


def parallel_copy(destination: np.ndarray, source: np.ndarray) -> None:
    """``np.copyto(destination, source)``, split over threads when it is large.

    Both arrays must have the same shape and dtype. Arrays with a common
    contiguous layout are split into equal slabs, one per thread; anything
    else is copied in one call.
    """
    threads = min(MAX_COPY_THREADS, _usable_cpus())
    order: Literal["C", "F"] | None = "C" if source.flags.c_contiguous else "F" if source.flags.f_contiguous else None
    layout_shared = order is not None and (
        destination.flags.c_contiguous if order == "C" else destination.flags.f_contiguous
    )
    if threads < 2 or source.nbytes < PARALLEL_COPY_BYTES or not layout_shared:
        np.copyto(destination, source, casting="no")
        return
    flat_source = source.reshape(-1, order=order)
    flat_destination = destination.reshape(-1, order=order)
    step = -(-flat_source.size // threads)
    slabs = [slice(start, start + step) for start in range(0, flat_source.size, step)]
    errors: list[BaseException] = []

    def copy(slab: slice) -> None:
        try:
            np.copyto(flat_destination[slab], flat_source[slab], casting="no")
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    helpers = [threading.Thread(target=copy, args=(slab,), name="restartable-copy") for slab in slabs[1:]]
    for helper in helpers:
        helper.start()
    copy(slabs[0])
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]


def _usable_cpus() -> int:
    # The CPUs this process may run on (affinity, cgroup cpusets), not the machine's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


_Key = tuple[str, tuple[int, ...], Any]


def _pinned_empty(shape: Any, dtype: Any) -> Any:
    """A pinned host tensor; page-aligned when large, so that the persist can write it with direct I/O.

    A large buffer is our own page-aligned mapping of exactly its size,
    page-locked with ``cudaHostRegister``: torch's pinned allocator would
    round it up to a power of two (a 33 MiB tensor takes 64 MiB, and the
    pool holds two of each). Where registration fails, the buffer comes
    from torch's allocator.
    """
    import torch

    # Pinned (page-locked) memory is what lets the copy run asynchronously,
    # at the full speed of the bus.
    pin = torch.cuda.is_available()
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < ALIGN_MIN_BYTES or not pin:
        return torch.empty(shape, dtype=dtype, pin_memory=pin)
    registered = _registered_empty(nbytes)
    if registered is not None:
        return registered.view(dtype).view(shape)
    raw = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    offset = -raw.data_ptr() % PAGE_BYTES
    if offset:
        # torch's pinned allocator can place a block at any 512-byte
        # boundary; a page-aligned view into one page more is always there.
        # Only then: one page more on a power-of-two size doubles its block.
        raw = torch.empty(nbytes + PAGE_BYTES, dtype=torch.uint8, pin_memory=True)
        offset = -raw.data_ptr() % PAGE_BYTES
    return raw[offset : offset + nbytes].view(dtype).view(shape)


def _registered_empty(nbytes: int) -> Any:
    """``nbytes`` of page-aligned host memory page-locked by CUDA, as a uint8 tensor; ``None`` if CUDA refuses."""
    import torch

    try:
        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]  # torch.cuda.cudart is unannotated
        host = aligned_empty((nbytes,), np.dtype(np.uint8))
        address = host.ctypes.data
        if cudart.cudaHostRegister(address, nbytes, 0) != cudart.cudaError.success:
            return None
    except (AttributeError, RuntimeError, OSError):  # no runtime bindings, or no memory to map
        return None
    # Unregistered when the last view of the memory is gone, before the
    # mapping is released (a weakref callback runs before its referent's
    # fields are freed). Not at interpreter exit: the CUDA context may be
    # gone by then, and the process's memory with it.
    finalizer = weakref.finalize(host, cudart.cudaHostUnregister, address)
    finalizer.atexit = False
    return torch.from_numpy(host)


class SnapshotBuffers:
    """The host copies of one snapshot, taken from (and given back to) a :class:`HostBufferPool`.

    Passed to :func:`restartable.codec.encode` as its ``copy``: host arrays
    are copied into page-aligned buffers (which the persist writes with
    direct I/O), device tensors into pinned host buffers with non-blocking
    copies, and :meth:`finish` waits once for all device copies.
    """

    def __init__(self, pool: HostBufferPool) -> None:
        self._pool = pool
        self.taken: list[tuple[_Key, Any]] = []
        self._devices: set[Any] = set()

    def copy(self, array: np.ndarray) -> np.ndarray:
        """A private copy of ``array`` in a reused buffer when one is free."""
        order: Literal["C", "F"] = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        # The dtype itself: its ``str`` is the same (``|V8``) for different
        # structured dtypes of one item size.
        key = (order, array.shape, array.dtype)
        buffer: np.ndarray | None = self._pool._take(key)
        if buffer is None:
            # Small arrays share pages with other allocations; a mapping of
            # their own each would only cost memory and mappings.
            large = array.nbytes >= ALIGN_MIN_BYTES
            buffer = (
                aligned_empty(array.shape, array.dtype, order) if large else np.empty(array.shape, array.dtype, order)
            )
        parallel_copy(buffer, array)
        self.taken.append((key, buffer))
        return buffer

    def copy_from_device(self, tensor: Any) -> Any:
        """Start copying a device tensor into a pinned host tensor; valid after :meth:`finish`.

        Large buffers are exactly their size (see :func:`_pinned_empty`), so
        the page-locked memory held is two copies of the device state; small
        ones come from torch's caching pinned allocator, which rounds them up.
        """
        key = ("pinned", tuple(tensor.shape), str(tensor.dtype))
        buffer = self._pool._take(key)
        if buffer is None:
            buffer = _pinned_empty(tensor.shape, tensor.dtype)
        buffer.copy_(tensor, non_blocking=True)
        self._devices.add(tensor.device)
        self.taken.append((key, buffer))
        return buffer

    def finish(self) -> None:
        """Wait for the device copies started by :meth:`copy_from_device`: one synchronisation per device."""
        if self._devices:
            import torch

            for device in self._devices:
                # The copies were queued on the device's current stream,
                # after the kernels that produced the values.
                torch.cuda.current_stream(device).synchronize()
            self._devices.clear()

    def release(self) -> None:
        """Give the buffers back to the pool (once the snapshot has been persisted)."""
        taken, self.taken = self.taken, []
        self._pool._give_back(taken)


class HostBufferPool:
    """Host buffers reused between snapshots whose arrays have the same shapes.

    Steady-state commits of a state whose shapes do not change allocate no
    memory: a snapshot takes buffers from the pool (:meth:`take`) and gives
    them back when its persist is done. The peak is two sets (one
    persisting, one being taken), i.e. at most two extra copies of the state.
    """

    def __init__(self) -> None:
        self._free: dict[_Key, list[Any]] = {}
        self._lock = threading.Lock()

    def take(self) -> SnapshotBuffers:
        """The buffers of a new snapshot."""
        return SnapshotBuffers(self)

    def _take(self, key: _Key) -> Any:
        with self._lock:
            free = self._free.get(key)
            return free.pop() if free else None

    def _give_back(self, taken: list[tuple[_Key, Any]]) -> None:
        # Free buffers are kept only for the shapes of the snapshot just
        # persisted, at most two sets of them (two snapshots are alive at
        # most), so a state whose shapes change does not make the pool hold
        # every shape it ever had, and one whose shapes repeat stops
        # allocating after its second snapshot.
        counts = Counter(key for key, _ in taken)
        with self._lock:
            free = {key: self._free.get(key, []) for key in counts}
            for key, buffer in taken:
                free[key].append(buffer)
            for key, buffers in free.items():
                del buffers[: max(0, len(buffers) - 2 * counts[key])]
            self._free = free

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


_live: weakref.WeakSet[BackgroundPersist] = weakref.WeakSet()


class BackgroundPersist:
    """Runs one job at a time on a helper thread and keeps its outcome.

    ``submit`` waits for the previous job. The outcome is collected by
    :meth:`wait`, which re-raises a failure as :class:`CheckpointWriteError`
    chained to the original exception (its traceback included), so a
    failure surfaces at the next call into the store, never silently.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self._cleanup: Callable[[], None] | None = None
        _live.add(self)

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def submit(
        self,
        job: Callable[[], Any],
        on_done: Callable[[Any], None],
        cleanup: Callable[[], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Start ``job``.

        ``on_done(result)`` or ``on_error(exc)``, then ``cleanup()``, run in the
        caller's thread at :meth:`wait`.
        """
        self.wait()
        self._on_done, self._cleanup, self._on_error = on_done, cleanup, on_error

        def run() -> None:
            try:
                self._result = job()
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc

        # Not a daemon: the interpreter waits for a persist in flight at exit.
        self._thread = threading.Thread(target=run, name=f"restartable-persist[{self.name}]")
        self._thread.start()

    def poll(self) -> None:
        """Collect the job's outcome if it has finished (raising its failure); never blocks."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Wait for the job in flight; run its completion; raise its failure."""
        thread = self._thread
        if thread is None:
            return
        thread.join()
        self._thread = None
        result, error = self._result, self._error
        on_done, on_error, cleanup = self._on_done, self._on_error, self._cleanup
        self._result = self._error = self._on_done = self._on_error = self._cleanup = None
        try:
            if error is None and on_done is not None:
                on_done(result)
            elif error is not None and on_error is not None:
                on_error(error)
        finally:
            if cleanup is not None:
                cleanup()
        if error is not None:
            if isinstance(error, CheckpointWriteError):
                raise CheckpointWriteError(f"background commit failed: {error}", errno=error.errno) from error
            raise CheckpointWriteError(f"background commit to {self.name} failed: {error!r}") from error


@atexit.register
def _wait_at_exit() -> None:
    # Make every pending row durable before the interpreter goes; a failure
    # cannot be raised any more, so it is printed rather than lost.
    for persist in list(_live):
        try:
            persist.wait()
        except BaseException:
            print("restartable: a background commit failed at interpreter exit:", file=sys.stderr)
            traceback.print_exc()
