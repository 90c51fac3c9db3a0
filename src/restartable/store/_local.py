"""Rows in a local directory: staged, fsynced and published by one rename.

A commit writes every payload and then ``manifest.json`` into
``.staging-<uuid>/``, hashing each file while it is written; fsyncs every
file and then the staging directory; renames the staging directory to
``commits/<seq>-<uuid>`` (the commit point) and fsyncs ``commits/``.
Retiring a row renames it to ``.trash-<uuid>`` (one atomic step) before
it is deleted. Writers hold an ``flock`` on ``.lock``, which the kernel
releases when the holder dies, however it dies.
"""

from __future__ import annotations

import errno as _errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, CheckpointLockedError, CheckpointWriteError
from ._base import Capabilities, Draft, RowStore
from ._layout import (
    COMMITS_DIR,
    HEAD_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    RANK_FOLDER,
    ROW_NAME,
    STAGING_PREFIX,
    TRASH_PREFIX,
)
from .files import CHUNK_BYTES, PreparedArray, SyncGroup, fsync_dir, hash_file, read_payload, write_bytes, write_payload

try:  # advisory locks exist on every POSIX system
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LocalRowStore", "WriterLock"]


class WriterLock:
    """An exclusive, non-blocking advisory lock on a local store.

    ``flock`` locks belong to the open file description, so a second writer
    in the same process is refused just like one in another process, and the
    kernel releases the lock when the holder dies, however it dies.
    """

    def __init__(self, rank_path: Path) -> None:
        self.path = Path(rank_path) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = self._holder(fd)
                os.close(fd)
                if exc.errno in (_errno.EWOULDBLOCK, _errno.EAGAIN, _errno.EACCES):
                    raise CheckpointLockedError(
                        f"{self.path.parent} is being written by another writer{holder}; "
                        "only one writer per checkpoint directory (and rank) is allowed"
                    ) from None
                raise
        record = f"{os.getpid()}\n".encode()
        try:
            current = os.pread(fd, 64, 0)
        except OSError:
            current = b""
        if current != record:
            # A front end that locks for each commit (the iterator checkpoints)
            # finds its own pid here and skips the truncate, a journalled
            # metadata change that can wait for another file's fsync.
            os.ftruncate(fd, 0)
            os.write(fd, record)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 64, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (process {text})" if text.isdigit() else ""

    def check(self) -> None:
        """An flock cannot be taken away from its holder: nothing to check."""

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _LocalDraft(Draft):
    def __init__(self, store: LocalRowStore, name: str) -> None:
        self.store = store
        self.name = name
        self.staging = store.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        self.sync = SyncGroup()
        os.mkdir(self.staging)

    def write_payload(self, file: str, prepared: PreparedArray) -> str:
        try:
            return write_payload(self.staging / file, prepared, self.store.durable, self.sync)
        except BaseException:
            self.sync.abandon()  # no descriptor may outlive a failed commit
            raise

    def link_payload(self, file: str, source_row: str, source_file: str) -> bool:
        try:
            os.link(self.store.commits / source_row / source_file, self.staging / file)
        except OSError:
            return False  # no hard links here (or the old row was retired)
        return True

    def write_stream(self, file: str, chunks: Callable[[], Iterator[bytes | memoryview]]) -> None:
        fd = os.open(self.staging / file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in chunks():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if self.store.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def finish_payloads(self) -> None:
        self.sync.wait()

    def publish(self, manifest: bytes) -> None:
        write_bytes(self.staging / MANIFEST_NAME, manifest, self.store.durable)
        if self.store.durable:
            fsync_dir(self.staging)
        final = self.store.commits / self.name
        if final.exists():
            raise FileExistsError(f"{final} exists already")
        os.rename(self.staging, final)

    def settle(self) -> None:
        if self.store.durable:
            fsync_dir(self.store.commits)

    def abandon(self) -> None:
        self.sync.abandon()
        _remove_tree(self.staging)


class LocalRowStore(RowStore):
    """Rows in a directory of the local filesystem (or a shared one mounted here).

    Parameters
    ----------
    root:
        The directory (one rank's rows).
    durable:
        fsync every file and directory of a commit (the default); off only
        for throw-away data.
    """

    capabilities = Capabilities(rename=True, hard_links=True, durable_on_return=False, lease=False)

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.commits = self.root / COMMITS_DIR
        self.durable = durable

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def root_path(self) -> Path:
        return self.root

    def row_path(self, name: str) -> Path:
        return self.commits / name

    def child(self, name: str) -> LocalRowStore:
        return LocalRowStore(self.root / name, durable=self.durable)

    def rank_folders(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(name for name in names if RANK_FOLDER.match(name) and (self.root / name).is_dir())

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.root.is_dir()

    def has_commits(self) -> bool:
        return self.commits.is_dir()

    def list_rows(self) -> list[tuple[int, str]]:
        try:
            names = os.listdir(self.commits)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = [(int(match.group(1)), name) for name in names if (match := ROW_NAME.match(name))]
        found.sort()
        return found

    def read_manifest(self, name: str) -> bytes:
        with open(self.commits / name / MANIFEST_NAME, "rb") as fh:
            return fh.read()

    def file_size(self, name: str, file: str) -> int:
        return os.stat(self.commits / name / file).st_size

    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        return read_payload(self.commits / name / file, size, checksum)

    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        return hash_file(self.commits / name / file)

    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        with open(self.commits / name / file, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def row_files(self, name: str) -> set[str]:
        try:
            return set(os.listdir(self.commits / name))
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def row_exists(self, name: str) -> bool:
        return (self.commits / name).exists()

    def read_head(self) -> int | None:
        try:
            text = (self.root / HEAD_NAME).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    # ------------------------------------------------------------------ writing

    def exclusion(self) -> WriterLock:
        return WriterLock(self.root)

    def prepare(self) -> None:
        if self.commits.is_dir():
            return
        self.commits.mkdir(parents=True, exist_ok=True)
        if self.durable:
            # A crash must not lose the new directories, and with them every
            # row committed into them.
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    def leftovers(self) -> list[Path]:
        """Staging and trash directories present now (what :meth:`clean_leftovers` removes)."""
        try:
            names = os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self.root / name for name in sorted(names) if name.startswith((STAGING_PREFIX, TRASH_PREFIX))]

    def clean_leftovers(self, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        interrupted: list[str] = []
        other: list[str] = []
        for path in self.leftovers():
            if not dry_run:
                _remove_tree(path)
            (interrupted if path.name.startswith(STAGING_PREFIX) else other).append(str(path))
        return interrupted, other

    def remove_files(self, name: str, files: list[str]) -> None:
        for file in files:
            target = self.commits / name / file
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def stage(self, name: str) -> Draft:
        return _LocalDraft(self, name)

    def retire(self, name: str) -> Path:
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(self.commits / name, trash)
        return trash

    def delete_retired(self, retired: list[Any]) -> list[Any]:
        remaining = []
        for trash in retired:
            _remove_tree(trash)
            if os.path.lexists(trash):
                remaining.append(trash)
        return remaining

    def write_head(self, sequence: int) -> None:
        # Temp file and rename, no fsync: a HEAD lost in a crash only makes
        # other ranks keep more rows; it is a hint for retention, never a
        # source of truth for restoring.
        tmp = self.root / f".{HEAD_NAME}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{sequence}\n")
        os.replace(tmp, self.root / HEAD_NAME)

    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        return CheckpointWriteError(message, errno=getattr(exc, "errno", None))
