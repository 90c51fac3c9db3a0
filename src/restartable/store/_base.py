"""The row store: what the engine needs from a place that keeps rows.

Every backend (a local directory, an object-store prefix, memory) is a
:class:`RowStore`. The engine above it (:mod:`restartable.store.rows` reads
rows, :mod:`restartable.store.writer` commits them) is written once, over
these operations and the store's :class:`Capabilities`; no front end looks
at what kind of store it has.

The operations are small on purpose, in the manner of zarr-python's
``Store`` and fsspec's ``AbstractFileSystem``:

reading
    :meth:`~RowStore.list_rows`, :meth:`~RowStore.read_manifests`,
    :meth:`~RowStore.file_size`, :meth:`~RowStore.read_payload`, :meth:`~RowStore.read_file`,
    :meth:`~RowStore.hash_file`, :meth:`~RowStore.row_files`,
    :meth:`~RowStore.row_exists`, :meth:`~RowStore.read_head`
writing (only with the :meth:`~RowStore.exclusion` held)
    :meth:`~RowStore.stage` gives a :class:`Draft` that takes the payloads
    and then publishes the manifest (the commit point);
    :meth:`~RowStore.retire` makes a row stop being one in one atomic step,
    :meth:`~RowStore.delete_retired` frees its space later;
    :meth:`~RowStore.clean_leftovers`, :meth:`~RowStore.write_head`
layout
    :meth:`~RowStore.child` (a rank's folder), :meth:`~RowStore.rank_folders`

Errors: a missing file or object is ``FileNotFoundError``; a payload that
does not match its manifest is :class:`~restartable.store.files.PayloadError`;
any other failure of the backend is translated into the library's errors by
the store itself, in one place (:meth:`RowStore.write_error` for commits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CheckpointError
from .files import PayloadError, PreparedArray, empty_bytes, new_hasher

__all__ = ["Capabilities", "Draft", "Exclusion", "RowPath", "RowStore", "UrlPath"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, which decides how the engine uses it.

    Attributes
    ----------
    rename:
        A staged row is published by one atomic rename (local disk, memory).
        Without it, the manifest is written last, create-only, and is the
        commit point (object stores).
    hard_links:
        A payload unchanged since the previous row can be linked instead of
        written again (``link_unchanged``).
    durable_on_return:
        A write is durable when it returns (object stores); otherwise the
        store syncs files and directories itself (``durable=True``).
    lease:
        Writers are excluded by an expiring lease (object stores, where a
        killed node leaves its lock behind) rather than a lock the
        operating system releases when its holder dies.
    """

    rename: bool
    hard_links: bool
    durable_on_return: bool
    lease: bool


class UrlPath:
    """The name of an object-store prefix, with the parts of :class:`pathlib.Path` the library uses.

    ``/`` joins, ``name`` and ``parent`` work as on a path; ``str()`` is the URL.
    """

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self.url.rsplit("/", 1)[0])

    def __truediv__(self, part: str) -> UrlPath:
        return UrlPath(f"{self.url}/{str(part).strip('/')}")

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


# Where a row lives: a directory, or an object-store prefix.
RowPath = Path | UrlPath


class Exclusion(Protocol):
    """The single-writer guarantee of a store: a lock or a lease."""

    def acquire(self) -> None:
        """Take it, or raise :class:`~restartable.errors.CheckpointLockedError`."""

    def check(self) -> None:
        """Raise if it was lost; called just before every commit point."""

    def release(self) -> None: ...

    @property
    def held(self) -> bool: ...


class Draft(ABC):
    """A row being committed: payloads go in first, the manifest publishes it.

    Until :meth:`publish` returns, nothing of the row is visible to readers;
    :meth:`abandon` removes what was written.
    """

    @abstractmethod
    def write_payload(self, file: str, prepared: PreparedArray) -> str:
        """Write one ``.npy`` payload; return its checksum (computed as it is written)."""

    def link_payload(self, file: str, source_row: str, source_file: str) -> bool:
        """Make ``file`` the same bytes as ``source_file`` of committed row ``source_row`` without copying.

        Returns whether it could; the caller then writes a copy instead.
        """
        return False

    @abstractmethod
    def write_stream(self, file: str, chunks: Callable[[], Iterator[bytes | memoryview]]) -> None:
        """Write one file from a stream of chunks (copying a row between stores).

        ``chunks`` may be called again to start over (a retried upload).
        """

    @abstractmethod
    def finish_payloads(self) -> None:
        """Return once every payload is durable (fsyncs that ran beside the writes)."""

    @abstractmethod
    def publish(self, manifest: bytes) -> None:
        """Write the manifest and make the row visible, atomically: the commit point.

        ``FileExistsError`` if a row of that name exists already.
        """

    def settle(self) -> None:  # noqa: B027 - optional hook, empty by default
        """After :meth:`publish`: make the publication itself durable (the directory entry)."""

    @abstractmethod
    def abandon(self) -> None:
        """Remove what was written (the commit failed); never raises."""


class RowStore(ABC):
    """A place that keeps committed rows: one rank's folder or prefix.

    See the module documentation for the operations. Implementations:
    :class:`~restartable.store.LocalRowStore`,
    :class:`~restartable.store.FsspecRowStore`,
    :class:`~restartable.store.MemoryRowStore`, and the fault-injecting
    :class:`~restartable.store.FaultyRowStore` around any of them.
    """

    capabilities: Capabilities

    # ------------------------------------------------------------------ naming

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, for messages: a path or a URL."""

    @property
    def root_path(self) -> Path | str:
        """Where the store is, as callers name it.

        A :class:`~pathlib.Path` for a local directory, else :attr:`location`.
        """
        return self.location

    @abstractmethod
    def row_path(self, name: str) -> RowPath:
        """The directory or prefix of row ``name``."""

    def file_location(self, name: str, file: str) -> str:
        """A file of a row, for messages."""
        return str(self.row_path(name) / file)

    @abstractmethod
    def child(self, name: str) -> RowStore:
        """The store in folder ``name`` of this one (a rank's rows)."""

    @abstractmethod
    def rank_folders(self) -> list[str]:
        """Names of the ``rank_*`` folders present, sorted."""

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.location == self.location

    def __hash__(self) -> int:
        return hash((type(self), self.location))

    # ------------------------------------------------------------------ reading

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is stored here (a directory, or objects under the prefix)."""

    def has_commits(self) -> bool:
        """Whether this store is one rank's store (it has a ``commits`` folder or rows)."""
        return bool(self.list_rows())

    @abstractmethod
    def list_rows(self) -> list[tuple[int, str]]:
        """Committed rows by sequence number, as ``(sequence, name)``; nothing read but names.

        On stores without rename, a row is listed only once its manifest
        exists. A listing also refreshes what :meth:`file_size` answers.
        """

    @abstractmethod
    def read_manifest(self, name: str) -> bytes:
        """The raw manifest of row ``name``; ``FileNotFoundError`` if absent."""

    def read_manifests(self, names: list[str]) -> dict[str, bytes | BaseException]:
        """Several manifests, each as bytes or as the exception reading it raised.

        Stores that can fetch many objects at once override this.
        """
        found: dict[str, bytes | BaseException] = {}
        for name in names:
            try:
                found[name] = self.read_manifest(name)
            except (OSError, CheckpointError) as exc:
                found[name] = exc
        return found

    @abstractmethod
    def file_size(self, name: str, file: str) -> int:
        """The size of a file of a row; ``FileNotFoundError`` if it is absent."""

    def file_sizes(self, name: str, files: list[str]) -> dict[str, int | OSError]:
        """Sizes of several files of one row, each as an int or the error finding it raised.

        Stores that can answer for a whole row at once override this.
        """
        found: dict[str, int | OSError] = {}
        for file in files:
            try:
                found[file] = self.file_size(name, file)
            except OSError as exc:
                found[file] = exc
        return found

    @abstractmethod
    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        """Read an ``.npy`` payload, checking its size and (when given) its checksum.

        ``FileNotFoundError`` if absent, ``PayloadError`` if it does not match.
        """

    def read_file(self, name: str, file: str, size: int) -> tuple[np.ndarray, str]:
        """The bytes of a file (a pack) in one buffer, and their checksum, computed as they are read.

        The buffer starts on a 64-byte boundary. ``FileNotFoundError`` if the
        file is absent, ``PayloadError`` if it is not ``size`` bytes long.
        Stores that can read a file into memory directly override this.
        """
        buffer = empty_bytes(size)
        hasher = new_hasher()
        filled = 0
        for chunk in self.read_chunks(name, file):
            end = filled + len(chunk)
            if end > size:
                raise PayloadError(f"larger than the {size} bytes expected")
            buffer[filled:end] = np.frombuffer(chunk, dtype=np.uint8)
            hasher.update(chunk)
            filled = end
        if filled != size:
            raise PayloadError(f"size {filled} bytes, expected {size}")
        return buffer, hasher.hexdigest()

    @abstractmethod
    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        """Size and checksum of a file, read completely."""

    def hash_files(self, name: str, files: list[str]) -> Iterator[tuple[str, tuple[int, str] | OSError]]:
        """``(file, (size, checksum))`` for several files of one row, or ``(file, error)``, in order."""
        for file in files:
            try:
                yield file, self.hash_file(name, file)
            except OSError as exc:
                yield file, exc

    @abstractmethod
    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        """The bytes of a file, in chunks (copying a row to another store)."""

    @abstractmethod
    def row_files(self, name: str) -> set[str]:
        """Names of the files a row holds (empty if it is gone)."""

    @abstractmethod
    def row_exists(self, name: str) -> bool:
        """Whether row ``name`` is still a row (a writer may retire it while it is read)."""

    @abstractmethod
    def read_head(self) -> int | None:
        """The sequence published with :meth:`write_head`, if any."""

    # ------------------------------------------------------------------ writing

    @abstractmethod
    def exclusion(self) -> Exclusion:
        """A new, unacquired lock or lease on this store."""

    def prepare(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Create what writing needs (the ``commits`` folder); called before the exclusion is taken."""

    @abstractmethod
    def clean_leftovers(self, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        """Remove what interrupted writers left; return ``(interrupted commits, other leftovers)``.

        Call only with the exclusion held. ``dry_run`` only lists them.
        """

    @abstractmethod
    def remove_files(self, name: str, files: list[str]) -> None:
        """Delete files of a committed row that its manifest does not list (``restartable gc``)."""

    @abstractmethod
    def stage(self, name: str) -> Draft:
        """Begin committing row ``name``."""

    @abstractmethod
    def retire(self, name: str) -> Any:
        """Make row ``name`` stop being a row, atomically; return what :meth:`delete_retired` frees.

        ``FileNotFoundError`` if it is gone already.
        """

    @abstractmethod
    def delete_retired(self, retired: list[Any]) -> list[Any]:
        """Free the space of retired rows; return those that could not be freed yet."""

    @abstractmethod
    def write_head(self, sequence: int) -> None:
        """Publish this rank's newest committed sequence (a hint for the other ranks' retention)."""

    @abstractmethod
    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        """The library's error for a backend failure during a commit (the store's error edge)."""
