"""A store that fails or crashes on purpose: "after operation k".

:class:`FaultyRowStore` wraps any store and counts the operations that
reach it (by default those that change it). At operation ``fail_at`` it
either raises ``OSError(EIO)``, as a failing disk or network would, or
*crashes*: it raises :class:`SimulatedCrash` and from then on lets nothing
through, not even the writer's cleanup, as if the process had died at that
instant. Reopening the wrapped store afterwards shows what a restarted job
would find.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ._base import Capabilities, Draft, Exclusion, RowPath, RowStore
from .files import PreparedArray

__all__ = [
    "FaultyRowStore",
    "SimulatedCrash",
    "WRITING_OPERATIONS",
]

WRITING_OPERATIONS = frozenset(
    {
        "prepare",
        "clean_leftovers",
        "stage",
        "write_payload",
        "link_payload",
        "write_stream",
        "finish_payloads",
        "publish",
        "settle",
        "retire",
        "delete_retired",
        "write_head",
        "remove_files",
    }
)


class SimulatedCrash(BaseException):
    """The process "died" here (a :class:`BaseException`, so that no handler takes it for an error)."""


class _Faults:
    """The operation counter shared by a store and its drafts."""

    def __init__(self, fail_at: int | None, crash: bool, operations: frozenset[str]) -> None:
        self.fail_at = fail_at
        self.crash = crash
        self.operations = operations
        self.log: list[str] = []
        self.crashed = False

    def enter(self, operation: str) -> None:
        if self.crashed:
            raise SimulatedCrash(f"{operation} after the simulated crash")
        if operation not in self.operations:
            return
        self.log.append(operation)
        if self.fail_at is not None and len(self.log) == self.fail_at:
            if self.crash:
                self.crashed = True
                raise SimulatedCrash(f"simulated crash at operation {self.fail_at} ({operation})")
            raise OSError(errno.EIO, f"injected failure of {operation} (operation {self.fail_at})")


class _FaultyDraft(Draft):
    def __init__(self, inner: Draft, faults: _Faults) -> None:
        self.inner = inner
        self.faults = faults

    def write_payload(self, file: str, prepared: PreparedArray) -> str:
        self.faults.enter("write_payload")
        return self.inner.write_payload(file, prepared)

    def link_payload(self, file: str, source_row: str, source_file: str) -> bool:
        self.faults.enter("link_payload")
        return self.inner.link_payload(file, source_row, source_file)

    def write_stream(self, file: str, chunks: Callable[[], Iterator[bytes | memoryview]]) -> None:
        self.faults.enter("write_stream")
        self.inner.write_stream(file, chunks)

    def finish_payloads(self) -> None:
        self.faults.enter("finish_payloads")
        self.inner.finish_payloads()

    def publish(self, manifest: bytes) -> None:
        self.faults.enter("publish")
        self.inner.publish(manifest)

    def settle(self) -> None:
        self.faults.enter("settle")
        self.inner.settle()

    def abandon(self) -> None:
        if self.faults.crashed:
            return  # a dead process cleans nothing up
        self.inner.abandon()


class FaultyRowStore(RowStore):
    """``inner``, failing (or crashing, with ``crash=True``) at operation ``fail_at``.

    Parameters
    ----------
    inner:
        The store to wrap.
    fail_at:
        The 1-based number of the counted operation that fails; ``None``
        only counts (run a commit once to learn how many operations it has:
        :attr:`log`).
    crash:
        Crash instead of failing: raise :class:`SimulatedCrash` and refuse
        every later operation.
    operations:
        Which operations count (default :data:`WRITING_OPERATIONS`).

    Example
    -------
    >>> from restartable.store import FaultyRowStore, MemoryRowStore, RowWriter, Snapshot, scan_rows
    >>> store = FaultyRowStore(MemoryRowStore("faults-example"), fail_at=None)
    >>> writer = RowWriter(store)
    >>> _ = writer.persist(Snapshot(body={}, payloads=[]))
    >>> store.log[-3:]
    ['finish_payloads', 'publish', 'settle']
    >>> writer.close(); MemoryRowStore.forget("faults-example")
    """

    def __init__(
        self,
        inner: RowStore,
        fail_at: int | None = None,
        *,
        crash: bool = False,
        operations: frozenset[str] = WRITING_OPERATIONS,
    ) -> None:
        self.inner = inner
        self.capabilities: Capabilities = inner.capabilities
        self._faults = _Faults(fail_at, crash, operations)

    def arm(self, k: int, *, crash: bool = False) -> None:
        """Fail (or crash) at the ``k``-th counted operation from now (1: the next one)."""
        self._faults.fail_at = len(self._faults.log) + k
        self._faults.crash = crash

    def disarm(self) -> None:
        """Let every later operation through (unless it crashed already)."""
        self._faults.fail_at = None

    @property
    def log(self) -> list[str]:
        """The counted operations so far, in order."""
        return self._faults.log

    @property
    def crashed(self) -> bool:
        return self._faults.crashed

    def _enter(self, operation: str) -> None:
        self._faults.enter(operation)

    @property
    def location(self) -> str:
        return self.inner.location

    def row_path(self, name: str) -> RowPath:
        return self.inner.row_path(name)

    def file_location(self, name: str, file: str) -> str:
        return self.inner.file_location(name, file)

    def child(self, name: str) -> RowStore:
        return FaultyRowStore(
            self.inner.child(name), self._faults.fail_at, crash=self._faults.crash, operations=self._faults.operations
        )

    def rank_folders(self) -> list[str]:
        self._enter("rank_folders")
        return self.inner.rank_folders()

    def exists(self) -> bool:
        self._enter("exists")
        return self.inner.exists()

    def list_rows(self) -> list[tuple[int, str]]:
        self._enter("list_rows")
        return self.inner.list_rows()

    def read_manifest(self, name: str) -> bytes:
        self._enter("read_manifest")
        return self.inner.read_manifest(name)

    def read_manifests(self, names: list[str]) -> dict[str, bytes | BaseException]:
        self._enter("read_manifests")
        return self.inner.read_manifests(names)

    def file_size(self, name: str, file: str) -> int:
        self._enter("file_size")
        return self.inner.file_size(name, file)

    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        self._enter("read_payload")
        return self.inner.read_payload(name, file, size, checksum)

    def read_file(self, name: str, file: str, size: int) -> tuple[np.ndarray, str]:
        self._enter("read_file")
        return self.inner.read_file(name, file, size)

    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        self._enter("hash_file")
        return self.inner.hash_file(name, file)

    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        self._enter("read_chunks")
        return self.inner.read_chunks(name, file)

    def row_files(self, name: str) -> set[str]:
        self._enter("row_files")
        return self.inner.row_files(name)

    def row_exists(self, name: str) -> bool:
        self._enter("row_exists")
        return self.inner.row_exists(name)

    def read_head(self) -> int | None:
        self._enter("read_head")
        return self.inner.read_head()

    def exclusion(self) -> Exclusion:
        return self.inner.exclusion()

    def prepare(self) -> None:
        self._enter("prepare")
        self.inner.prepare()

    def clean_leftovers(self, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        self._enter("clean_leftovers")
        return self.inner.clean_leftovers(dry_run=dry_run)

    def remove_files(self, name: str, files: list[str]) -> None:
        self._enter("remove_files")
        self.inner.remove_files(name, files)

    def stage(self, name: str) -> Draft:
        self._enter("stage")
        return _FaultyDraft(self.inner.stage(name), self._faults)

    def retire(self, name: str) -> Any:
        self._enter("retire")
        return self.inner.retire(name)

    def delete_retired(self, retired: list[Any]) -> list[Any]:
        self._enter("delete_retired")
        return self.inner.delete_retired(retired)

    def write_head(self, sequence: int) -> None:
        self._enter("write_head")
        self.inner.write_head(sequence)

    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        return self.inner.write_error(message, exc)
