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

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointCorruptError, CheckpointError, CheckpointLockedError, CheckpointWriteError
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
    is_plain_name,
)
from .files import (
    CHUNK_BYTES,
    PreparedArray,
    SyncGroup,
    fsync_dir,
    hash_file,
    open_directory,
    open_regular,
    read_file,
    read_payload,
    refused_link,
    regular_size,
    write_bytes,
    write_payload,
)
from .manifest import MAX_MANIFEST_BYTES

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
        # O_NOFOLLOW: a .lock that is a link must not make us truncate and
        # write a file outside the store.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise refused_link(exc, self.path) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = self._holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
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
    """Delete a directory tree; anything else there (a link, a FIFO) is removed itself, never opened."""
    try:
        is_directory = stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return  # gone already
    if not is_directory:
        # rmtree would open a FIFO, and wait for a writer forever.
        with contextlib.suppress(OSError):
            path.unlink()
        return
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
            os.link(self.store.commits / source_row / source_file, self.staging / file, follow_symlinks=False)
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

    Nothing in the store is trusted: every directory and file a reader
    opens inside it is opened relative to its parent's descriptor without
    following links, and must be a directory or a regular file, so that a
    link (out of the store, to ``/dev/zero``, to itself) or a FIFO in a row
    is refused as damage instead of read or waited on.

    Parameters
    ----------
    root:
        The directory (one rank's rows). It may itself be a link: it is
        where the user pointed us.
    durable:
        fsync every file and directory of a commit (the default); off only
        for throw-away data.
    """

    capabilities = Capabilities(rename=True, hard_links=True, durable_on_return=False, lease=False)

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True, contained: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.commits = self.root / COMMITS_DIR
        self.durable = durable
        # A rank folder inside another store: a link there leads out of that store.
        self._contained = contained

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def root_path(self) -> Path:
        return self.root

    def row_path(self, name: str) -> Path:
        return self.commits / name

    def child(self, name: str) -> LocalRowStore:
        return LocalRowStore(self.root / name, durable=self.durable, contained=True)

    def rank_folders(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        # A rank folder that is a link is not one of ours: never listed, never cleaned.
        return sorted(e.name for e in entries if RANK_FOLDER.fullmatch(e.name) and e.is_dir(follow_symlinks=False))

    def _open_commits(self) -> int:
        if self._contained:
            root = open_directory(self.root)
        else:
            root = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            return open_directory(COMMITS_DIR, dir_fd=root)
        finally:
            os.close(root)

    @contextlib.contextmanager
    def _row_dir(self, name: str) -> Iterator[int]:
        """A descriptor of row ``name``'s directory, reached without following any link."""
        if not ROW_NAME.fullmatch(name):
            raise FileNotFoundError(errno.ENOENT, "not a row name", str(self.commits / name))
        commits = self._open_commits()
        try:
            fd = open_directory(name, dir_fd=commits)
        finally:
            os.close(commits)
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _check_file(file: str) -> str:
        if file != MANIFEST_NAME and not is_plain_name(file):
            raise OSError(errno.EINVAL, "is not a plain file name inside the row", file)
        return file

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.root.is_dir()

    def has_commits(self) -> bool:
        return self.commits.is_dir()

    def _refuse_linked_commits(self) -> None:
        if self.commits.is_symlink() or (self._contained and self.root.is_symlink()):
            where = self.commits if self.commits.is_symlink() else self.root
            raise CheckpointCorruptError(
                f"{where} is a symbolic link; restartable never follows links inside a store", file=str(where)
            )

    def list_rows(self) -> list[tuple[int, str]]:
        try:
            fd = self._open_commits()
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            self._refuse_linked_commits()
            raise
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        found = [(int(match.group(1)), name) for name in names if (match := ROW_NAME.fullmatch(name))]
        found.sort()
        return found

    def read_manifest(self, name: str) -> bytes:
        with self._row_dir(name) as row, open(open_regular(MANIFEST_NAME, dir_fd=row), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise OSError(errno.EFBIG, f"is {size} bytes, more than a manifest can be", MANIFEST_NAME)
            return fh.read(MAX_MANIFEST_BYTES + 1)

    def file_size(self, name: str, file: str) -> int:
        with self._row_dir(name) as row:
            return regular_size(self._check_file(file), dir_fd=row)

    def file_sizes(self, name: str, files: list[str]) -> dict[str, int | OSError]:
        # One descriptor of the row for all of them: a row may list a great many files.
        found: dict[str, int | OSError] = {}
        with self._row_dir(name) as row:
            for file in files:
                try:
                    found[file] = regular_size(self._check_file(file), dir_fd=row)
                except OSError as exc:
                    found[file] = exc
        return found

    def hash_files(self, name: str, files: list[str]) -> Iterator[tuple[str, tuple[int, str] | OSError]]:
        with self._row_dir(name) as row:
            for file in files:
                try:
                    yield file, hash_file(self._check_file(file), dir_fd=row)
                except OSError as exc:
                    yield file, exc

    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        with self._row_dir(name) as row:
            return read_payload(self._check_file(file), size, checksum, dir_fd=row)

    def read_file(self, name: str, file: str, size: int) -> tuple[np.ndarray, str]:
        with self._row_dir(name) as row:
            return read_file(self._check_file(file), size, dir_fd=row)

    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        with self._row_dir(name) as row:
            return hash_file(self._check_file(file), dir_fd=row)

    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        with self._row_dir(name) as row:
            fd = open_regular(self._check_file(file), dir_fd=row)
        with open(fd, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def row_files(self, name: str) -> set[str]:
        try:
            with self._row_dir(name) as row:
                return set(os.listdir(row))
        except OSError:
            return set()  # missing, or a link we do not list through

    def row_exists(self, name: str) -> bool:
        return os.path.lexists(self.commits / name)

    def read_head(self) -> int | None:
        try:
            with open(open_regular(self.root / HEAD_NAME), "rb") as fh:
                text = fh.read(32).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and text.isascii() else None

    # ------------------------------------------------------------------ writing

    def exclusion(self) -> WriterLock:
        return WriterLock(self.root)

    def prepare(self) -> None:
        self._refuse_linked_commits()
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
        with self._row_dir(name) as row:
            for file in files:
                if "/" in file or file in ("", ".", ".."):
                    raise OSError(errno.EINVAL, "is not a file name inside the row", file)
                if stat.S_ISDIR(os.stat(file, dir_fd=row, follow_symlinks=False).st_mode):
                    shutil.rmtree(self.commits / name / file)  # rmtree never follows links inside
                else:
                    os.unlink(file, dir_fd=row)  # a link is removed, never followed

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
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # whatever is there, a link included, is replaced, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with open(fd, "w") as fh:
            fh.write(f"{sequence}\n")
        os.replace(tmp, self.root / HEAD_NAME)

    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        return CheckpointWriteError(message, errno=getattr(exc, "errno", None))
