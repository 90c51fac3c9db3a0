"""Asynchronous persist: one commit in flight per store, errors never lost.

The caller's thread takes the snapshot (values encoded, arrays copied into
host buffers) and hands the persist to a :class:`BackgroundPersist`. A new
persist first waits for the one in flight, so at most two snapshots are ever
alive: the one being written and the one being taken.
"""

from __future__ import annotations

import atexit
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CheckpointWriteError

__all__ = ["BackgroundPersist", "HostBufferPool"]


class HostBufferPool:
    """Host buffers reused between snapshots whose arrays have the same shapes.

    Steady-state commits of a state whose shapes do not change allocate no
    memory: a snapshot takes buffers from the pool and gives them back when
    its persist is done. The peak is two sets (one persisting, one being
    taken), i.e. at most two extra copies of the state.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def copy(self, array: np.ndarray) -> np.ndarray:
        """A private copy of ``array`` in a reused buffer when one is free."""
        key = (array.shape, array.dtype.str)
        with self._lock:
            free = self._free.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = np.empty(array.shape, dtype=array.dtype)
        np.copyto(buffer, array, casting="no")
        return buffer

    def release(self, arrays: list[np.ndarray]) -> None:
        """Keep the buffers of the snapshot just persisted, and only those.

        Buffers of shapes the state no longer has are dropped, so the pool
        never holds more than one snapshot's worth of memory.
        """
        free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        for array in arrays:
            free.setdefault((array.shape, array.dtype.str), []).append(array)
        with self._lock:
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
        """Start ``job``; ``on_done(result)`` or ``on_error(exc)``, then ``cleanup()``, run in the caller's thread at :meth:`wait`."""
        self.wait()
        self._on_done, self._cleanup, self._on_error = on_done, cleanup, on_error

        def run() -> None:
            try:
                self._result = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
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
        except BaseException:  # noqa: BLE001
            print("restartable: a background commit failed at interpreter exit:", file=sys.stderr)
            traceback.print_exc()
