"""Rows in memory: the reference store for tests and throw-away runs.

It behaves like a local directory without a disk: a commit is staged apart
and published by one atomic step, a writer is excluded by an in-process
lock, and bytes are checked exactly as on disk. Stores with the same name
share their rows within a process (as fsspec's ``memory://`` does), so a
test can open a store twice, as a job and its restart would.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointLockedError, CheckpointWriteError
from ._base import Capabilities, Draft, RowStore, UrlPath
from ._layout import MANIFEST_NAME, RANK_FOLDER, ROW_NAME, join_url
from .files import CHUNK_BYTES, PreparedArray, checksum_bytes, read_npy

__all__ = ["MemoryRowStore"]


@dataclass
class _Space:
    rows: dict[str, dict[str, bytes]] = field(default_factory=dict)
    staged: dict[int, dict[str, bytes]] = field(default_factory=dict)
    head: int | None = None
    holder: object | None = None


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()


class _MemoryLock:
    def __init__(self, store: MemoryRowStore) -> None:
        self.store = store
        self._held = False

    def acquire(self) -> None:
        space = self.store.space
        with _SPACES_LOCK:
            if space.holder is not None:
                raise CheckpointLockedError(
                    f"{self.store.location} is being written by another writer; "
                    "only one writer per checkpoint store (and rank) is allowed"
                )
            space.holder = self
        self._held = True

    def check(self) -> None:
        """An in-process lock cannot be lost."""

    def release(self) -> None:
        if self._held:
            self._held = False
            with _SPACES_LOCK:
                if self.store.space.holder is self:
                    self.store.space.holder = None

    @property
    def held(self) -> bool:
        return self._held


class _MemoryDraft(Draft):
    def __init__(self, store: MemoryRowStore, name: str) -> None:
        self.store = store
        self.name = name
        self.files: dict[str, bytes] = {}
        store.space.staged[id(self)] = self.files

    def write_payload(self, file: str, prepared: PreparedArray) -> str:
        data = b"".join(bytes(chunk) for chunk in prepared.chunks())
        self.files[file] = data
        return checksum_bytes(data)

    def link_payload(self, file: str, source_row: str, source_file: str) -> bool:
        source = self.store.space.rows.get(source_row, {}).get(source_file)
        if source is None:
            return False
        self.files[file] = source  # bytes are immutable: sharing them is a link
        return True

    def write_stream(self, file: str, chunks: Callable[[], Iterator[bytes | memoryview]]) -> None:
        self.files[file] = b"".join(bytes(chunk) for chunk in chunks())

    def finish_payloads(self) -> None:
        """Memory is as durable as it gets at once."""

    def publish(self, manifest: bytes) -> None:
        space = self.store.space
        with _SPACES_LOCK:
            if self.name in space.rows:
                raise FileExistsError(str(self.store.row_path(self.name)))
            space.rows[self.name] = {**self.files, MANIFEST_NAME: manifest}
            space.staged.pop(id(self), None)

    def abandon(self) -> None:
        self.store.space.staged.pop(id(self), None)


class MemoryRowStore(RowStore):
    """Rows kept in this process's memory, under a name (``memory-store://<name>``).

    Example
    -------
    >>> from restartable.store import MemoryRowStore, RowWriter, Snapshot, scan_rows
    >>> store = MemoryRowStore("example")
    >>> writer = RowWriter(store)
    >>> row = writer.persist(Snapshot(body={}, payloads=[]))
    >>> writer.close()
    >>> [r.sequence for r in scan_rows(store).rows]
    [1]
    >>> MemoryRowStore.forget("example")
    """

    capabilities = Capabilities(rename=True, hard_links=True, durable_on_return=True, lease=False)

    def __init__(self, name: str) -> None:
        self.name = name.strip("/")
        with _SPACES_LOCK:
            self.space = _SPACES.setdefault(self.name, _Space())

    @staticmethod
    def forget(name: str) -> None:
        """Drop every row of store ``name`` and of its rank folders."""
        with _SPACES_LOCK:
            for key in [key for key in _SPACES if key == name or key.startswith(name + "/")]:
                del _SPACES[key]

    @property
    def location(self) -> str:
        return f"memory-store://{self.name}"

    def row_path(self, name: str) -> UrlPath:
        return UrlPath(join_url(self.location, "commits", name))

    def child(self, name: str) -> MemoryRowStore:
        return MemoryRowStore(f"{self.name}/{name}")

    def rank_folders(self) -> list[str]:
        prefix = self.name + "/"
        with _SPACES_LOCK:
            names = {key[len(prefix) :] for key, space in _SPACES.items() if key.startswith(prefix) and space.rows}
        return sorted(name for name in names if RANK_FOLDER.fullmatch(name))

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return bool(self.space.rows) or bool(self.rank_folders())

    def list_rows(self) -> list[tuple[int, str]]:
        return sorted((int(name[:12]), name) for name in list(self.space.rows) if ROW_NAME.fullmatch(name))

    def _file(self, name: str, file: str) -> bytes:
        try:
            return self.space.rows[name][file]
        except KeyError:
            raise FileNotFoundError(self.file_location(name, file)) from None

    def read_manifest(self, name: str) -> bytes:
        return self._file(name, MANIFEST_NAME)

    def file_size(self, name: str, file: str) -> int:
        return len(self._file(name, file))

    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        data = self._file(name, file)
        return read_npy(io.BytesIO(data), len(data), size, checksum)

    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        data = self._file(name, file)
        return len(data), checksum_bytes(data)

    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        data = self._file(name, file)
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]

    def row_files(self, name: str) -> set[str]:
        return set(self.space.rows.get(name, {}))

    def row_exists(self, name: str) -> bool:
        return name in self.space.rows

    def read_head(self) -> int | None:
        return self.space.head

    # ------------------------------------------------------------------ writing

    def exclusion(self) -> _MemoryLock:
        return _MemoryLock(self)

    def clean_leftovers(self, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        interrupted = [f"{self.location}/.staging-{key}" for key in self.space.staged]
        if not dry_run:
            self.space.staged.clear()
        return interrupted, []

    def remove_files(self, name: str, files: list[str]) -> None:
        for file in files:
            self.space.rows.get(name, {}).pop(file, None)

    def stage(self, name: str) -> Draft:
        return _MemoryDraft(self, name)

    def retire(self, name: str) -> Any:
        with _SPACES_LOCK:
            try:
                return self.space.rows.pop(name)
            except KeyError:
                raise FileNotFoundError(str(self.row_path(name))) from None

    def delete_retired(self, retired: list[Any]) -> list[Any]:
        return []  # the retired rows' bytes are freed when nothing refers to them

    def write_head(self, sequence: int) -> None:
        self.space.head = sequence

    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        return CheckpointWriteError(message, errno=getattr(exc, "errno", None))

    # ------------------------------------------------------------------ damage, for tests

    def replace_file(self, name: str, file: str, data: bytes) -> None:
        """Overwrite (or create) a file of a row, creating the row if needed (to test that damage is found)."""
        self.space.rows.setdefault(name, {})[file] = data
