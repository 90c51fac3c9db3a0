"""Writing rows: the lock, the commit protocol and retention.

A commit has two halves. The *snapshot* (:class:`Snapshot`) is built in the
caller's thread by the front end: values encoded, arrays captured. The
*persist* (:meth:`RowWriter.persist`) makes it durable:

1. stage: write every payload, then ``manifest.json``, into
   ``.staging-<uuid>/``, hashing each file while it is written;
2. make durable: fsync every file, then the staging directory;
3. publish: rename the staging directory to ``commits/<seq>-<uuid>`` and
   fsync ``commits/``. The rename is the commit point;
4. retire: only then move rows that fall out of the retention policy to
   ``.trash-<uuid>`` (one atomic rename each) and delete them.

The cost of a commit does not depend on how many rows exist: the writer
lists the directory once, when it takes the lock, and tracks its rows in
memory afterwards.
"""

from __future__ import annotations

import datetime as _dt
import errno as _errno
import os
import shutil
import threading
import uuid
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckpointCleanupWarning, CheckpointCorruptError, CheckpointLockedError, CheckpointWriteError
from .files import CHECKSUM_ALGORITHM, PreparedArray, SyncGroup, fsync_dir, write_bytes, write_payload
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, dump_manifest
from .rows import (
    COMMITS_DIR,
    LOCK_NAME,
    PAYLOAD_NAME,
    STAGING_PREFIX,
    TRASH_PREFIX,
    Row,
    list_row_dirs,
    open_row,
    row_dir_name,
)

try:  # advisory locks exist on every POSIX system
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


# Retired rows at least this large are deleted on a helper thread.
DEFER_DELETE_BYTES = 64 << 20


def row_body(snapshot: Snapshot, sequence: int, commit_id: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest body of a row: the front end's fields plus what the engine records."""
    body = dict(snapshot.body)
    body.update(
        pinned=snapshot.pin,
        format=FORMAT,
        format_version=FORMAT_VERSION,
        library_version=__version__,
        sequence=sequence,
        commit_id=commit_id,
        saved_at=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        checksum_algorithm=CHECKSUM_ALGORITHM,
        files=files,
    )
    return body


@dataclass
class Snapshot:
    """Everything a commit needs, detached from the caller's live objects.

    ``body`` holds the manifest fields the front end owns (metadata, states,
    level, write count, ...); the writer adds sequence, commit id, files and
    timestamps. ``payloads[i]`` is the array referenced as payload ``i``.
    """

    body: dict[str, Any]
    payloads: list[np.ndarray]
    # A pinned row outlives the retention policy until a newer row is
    # pinned: a workflow rerunning an interrupted unit of work from its start
    # (an ensemble member batch) needs the state it had at that start.
    pin: bool = False


class WriterLock:
    """An exclusive, non-blocking advisory lock on a rank directory.

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

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def clean_leftovers(rank_path: Path, warn: bool = True) -> list[Path]:
    """Remove staging and trash directories left by interrupted writers.

    Only call this while holding the writer lock.
    """
    removed = []
    try:
        names = os.listdir(rank_path)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(STAGING_PREFIX) or name.startswith(TRASH_PREFIX):
            path = Path(rank_path) / name
            _remove_tree(path)
            removed.append(path)
    stale = [p for p in removed if p.name.startswith(STAGING_PREFIX)]
    if stale and warn:
        warnings.warn(
            f"removed {len(stale)} incomplete commit(s) left in {rank_path} by an interrupted writer: "
            + ", ".join(p.name for p in stale),
            CheckpointCleanupWarning,
            stacklevel=4,
        )
    return removed


class RowWriter:
    """The single writer of one rank directory.

    Parameters
    ----------
    rank_path:
        Directory of this rank's rows.
    keep:
        How many rows to keep (``None`` keeps all); older rows are retired
        after each commit, never before the new row is durable.
    durable:
        fsync files and directories (turn off only for throw-away data).
    link_unchanged:
        Hard-link array files whose bytes equal those of the same payload in
        the previous row written by this writer, instead of writing them again.
    floor:
        Called at each retirement; rows with a sequence number at or above
        what it returns are never retired (multi-rank runs keep the newest
        row every rank has, and everything newer).
    head:
        Publish the newest committed sequence in ``HEAD`` after each commit,
        for the other ranks' ``floor``.
    """

    def __init__(
        self,
        rank_path: Path,
        *,
        keep: int | None = None,
        durable: bool = True,
        link_unchanged: bool = False,
        floor: Callable[[], int | None] | None = None,
        head: bool = False,
    ) -> None:
        self.rank_path = Path(rank_path)
        self.floor = floor
        self.head = head
        self.keep = keep
        self.durable = durable
        self.link_unchanged = link_unchanged
        self.commits = self.rank_path / COMMITS_DIR
        self.lock = WriterLock(self.rank_path)
        try:
            if not self.commits.is_dir():
                self.commits.mkdir(parents=True, exist_ok=True)
                if durable:
                    # A crash must not lose the new directories, and with
                    # them every row committed into them.
                    fsync_dir(self.rank_path)
                    fsync_dir(self.rank_path.parent)
            self.lock.acquire()
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot open {self.rank_path} for writing: {exc}", errno=exc.errno
            ) from exc
        try:
            clean_leftovers(self.rank_path)
            existing = list_row_dirs(self.rank_path)
        except BaseException:
            self.lock.release()
            raise
        self._rows: deque[tuple[int, Path]] = deque(existing)
        self._pinned = self._find_pinned() if keep is not None else None
        self._next_sequence = existing[-1][0] + 1 if existing else 1
        self._previous_files: list[dict[str, Any]] = []
        self._previous_path: Path | None = None
        self._undeleted_trash: list[Path] = []
        self._reaper: tuple[threading.Thread, list[Path]] | None = None
        # Payload bytes of the rows this writer committed: what retiring them frees.
        self._row_bytes: dict[Path, int] = {}

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def close(self) -> None:
        try:
            if self.lock.held:
                self._empty_trash(wait=True)
            else:
                self._join_reaper()
        finally:
            self.lock.release()

    def restart_after(self, sequence: int) -> list[tuple[Path, OSError]]:
        """Continue after row ``sequence``: retire every newer row, number the next ``sequence + 1``.

        Multi-rank runs resume every rank from the same sequence; rows a rank
        committed beyond it belong to a future the other ranks never reached,
        and the sequence numbers of the ranks must stay aligned.
        """
        # Newest first: a rank reading meanwhile never sees a gap below a newer row.
        newer = [path for seq, path in reversed(self._rows) if seq > sequence]
        failed = self.retire(newer)
        if failed:
            return failed
        self._next_sequence = sequence + 1
        if self.head:
            self._publish_head(sequence)
        return []

    def _publish_head(self, sequence: int) -> None:
        from ..distributed import write_head

        try:
            write_head(self.rank_path, sequence)
        except OSError as exc:  # only a retention hint for other ranks
            warnings.warn(f"could not update {self.rank_path}/HEAD: {exc}", CheckpointCleanupWarning, stacklevel=3)

    def row_path(self, uid: str) -> Path:
        """The directory that :meth:`persist` with this ``uid`` will publish next."""
        return self.commits / row_dir_name(self._next_sequence, uid)

    def persist(self, snapshot: Snapshot, *, uid: str | None = None) -> Row:
        """Make ``snapshot`` a durable row; retire rows beyond ``keep``.

        ``uid`` (32 hex digits) names the row, so that a front end can tell
        the caller where the row will be (:meth:`row_path`) before a
        background persist publishes it; a fresh one by default.

        Raises :class:`CheckpointWriteError` if the row could not be made
        durable; every earlier row is then untouched.
        """
        if not self.lock.held:
            raise CheckpointWriteError(f"the writer of {self.rank_path} is closed")
        if uid is None:
            uid = uuid.uuid4().hex
        elif not (len(uid) == 32 and all(c in "0123456789abcdef" for c in uid)):
            raise ValueError(f"uid must be 32 lowercase hex digits, got {uid!r}")
        # The rows retired by the previous commit are gone before this one
        # takes space: the disk never holds more rows than without deferral.
        self._join_reaper()
        sequence = self._next_sequence
        self._next_sequence += 1
        staging = self.rank_path / f"{STAGING_PREFIX}{uid}"
        final = self.commits / row_dir_name(sequence, uid)
        step = "creating the staging directory"
        sync = SyncGroup()
        try:
            os.mkdir(staging)
            files = []
            try:
                for index, array in enumerate(snapshot.payloads):
                    name = PAYLOAD_NAME.format(index)
                    step = f"writing {name}"
                    files.append(self._write_payload(staging / name, index, PreparedArray(array), sync))
            except BaseException:
                sync.abandon()  # no descriptor may outlive a failed commit
                raise
            step = "writing and syncing the payload files"
            sync.wait()
            body = row_body(snapshot, sequence, final.name, files)
            step = f"writing {MANIFEST_NAME}"
            write_bytes(staging / MANIFEST_NAME, dump_manifest(body), self.durable)
            step = "syncing the staging directory"
            if self.durable:
                fsync_dir(staging)
            step = "publishing the row"
            os.rename(staging, final)
        except OSError as exc:
            _remove_tree(staging)
            raise CheckpointWriteError(
                f"could not commit row {sequence} to {self.rank_path} while {step}: {exc}. "
                "Earlier rows are intact.",
                errno=exc.errno,
            ) from exc
        except BaseException:
            _remove_tree(staging)
            raise
        self._rows.append((sequence, final))
        self._row_bytes[final] = sum(record["size"] for record in files)
        if snapshot.pin:
            self._pinned = final
        self._previous_files, self._previous_path = files, final
        try:
            if self.durable:
                fsync_dir(self.commits)
        except OSError as exc:
            raise CheckpointWriteError(
                f"row {final.name} was published in {self.commits} but syncing the directory failed: {exc}",
                errno=exc.errno,
            ) from exc
        if self.head:
            self._publish_head(sequence)
        self._retire()
        return Row(path=final, sequence=sequence, body=body)

    def _write_payload(self, path: Path, index: int, prepared: PreparedArray, sync: SyncGroup) -> dict[str, Any]:
        previous = self._previous_files[index] if index < len(self._previous_files) else None
        if (
            self.link_unchanged
            and previous is not None
            and previous["size"] == prepared.size
            and previous["checksum"] == prepared.digest()
        ):
            try:
                os.link(self._previous_path / previous["name"], path)  # type: ignore[operator]
                return {"name": path.name, "size": prepared.size, "checksum": prepared.digest()}
            except OSError:
                pass  # no hard links here (or the old row was retired): write a copy
        digest = write_payload(path, prepared, self.durable, sync)
        return {"name": path.name, "size": prepared.size, "checksum": digest}

    def _retire(self) -> None:
        self._empty_trash(wait=True)  # what an earlier deletion left
        if self.keep is None:
            return
        floor = self.floor() if self.floor is not None else None
        rows = list(self._rows)
        # Kept: the newest ``keep`` rows, the pinned row, and (multi-rank)
        # every row at or above the floor.
        kept = {path for _, path in rows[max(0, len(rows) - self.keep) :]} if self.keep > 0 else set()
        freed = 0
        for sequence, path in rows:
            if path in kept or path == self._pinned or (floor is not None and sequence >= floor):
                continue
            trash = self.rank_path / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                self._rows.remove((sequence, path))
                self._row_bytes.pop(path, None)
                continue
            except OSError as exc:
                # The row stays listed and is retried after the next commit.
                warnings.warn(f"could not retire old row {path}: {exc}", CheckpointCleanupWarning, stacklevel=3)
                break
            self._rows.remove((sequence, path))
            self._undeleted_trash.append(trash)
            freed += self._row_bytes.pop(path, 0)
        # Deleting a small row costs less than handing it to a thread.
        self._empty_trash(wait=freed < DEFER_DELETE_BYTES)

    def retire(self, paths: list[Path]) -> list[tuple[Path, OSError]]:
        """Retire the given committed rows now, whatever ``keep`` says.

        For front ends with their own retention policy (the iterator front
        end keeps the newest steps, not the newest sequence numbers). Call it
        only once the rows that supersede them are durable. Each row is
        renamed to ``.trash-<uuid>`` (one atomic step) and deleted. Returns
        the rows that could not be retired, with the error; they stay listed
        and nothing is warned here, so that a background thread can hand the
        failures to the caller's thread.
        """
        failed: list[tuple[Path, OSError]] = []
        for path in paths:
            path = Path(path)
            trash = self.rank_path / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                pass  # already gone
            except OSError as exc:
                failed.append((path, exc))
                continue
            else:
                self._undeleted_trash.append(trash)
            self._rows = deque(item for item in self._rows if item[1] != path)
            self._row_bytes.pop(path, None)
            if self._pinned == path:
                self._pinned = None
        self._empty_trash(wait=True)
        return failed

    def _find_pinned(self) -> Path | None:
        """The newest pinned row left by an earlier writer (read at open only)."""
        for sequence, path in reversed(self._rows):
            try:
                if open_row(path, sequence).body.get("pinned"):
                    return path
            except CheckpointCorruptError:
                continue
        return None

    def _empty_trash(self, wait: bool = False) -> None:
        """Delete retired rows on a helper thread (or now, with ``wait``).

        Deleting a large row costs about as much as a quarter of writing it
        (on a disk mounted with ``discard``, every freed extent is trimmed):
        it runs beside the caller's work and is joined before the next
        commit writes anything, and at :meth:`close`. What cannot be deleted
        is retried at the next call; a killed process leaves ``.trash-*``
        directories, which the next writer removes.
        """
        self._join_reaper()
        trash, self._undeleted_trash = self._undeleted_trash, []
        if not trash:
            return
        if wait:
            self._undeleted_trash = _delete_trees(trash)
            return
        remaining: list[Path] = []
        thread = threading.Thread(
            target=lambda: remaining.extend(_delete_trees(trash)), name="restartable-reaper", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: delete now
            self._undeleted_trash = _delete_trees(trash)
            return
        self._reaper = (thread, remaining)

    def _join_reaper(self) -> None:
        if self._reaper is not None:
            thread, remaining = self._reaper
            thread.join()
            self._reaper = None
            self._undeleted_trash = remaining + self._undeleted_trash


def _delete_trees(paths: list[Path]) -> list[Path]:
    """Delete retired row directories; return those still present."""
    remaining = []
    for trash in paths:
        _remove_tree(trash)
        if os.path.lexists(trash):
            remaining.append(trash)
    return remaining
