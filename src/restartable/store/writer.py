"""Writing rows: the commit protocol and retention, written once for every store.

A commit has two halves. The *snapshot* (:class:`Snapshot`) is built in the
caller's thread by the front end: values encoded, arrays captured. The
*persist* (:meth:`RowWriter.persist`) makes it durable, over the operations
of a :class:`~restartable.store.RowStore`:

1. stage: write every payload into a :class:`~restartable.store.Draft`,
   hashing each file while it is written (a local store stages into
   ``.staging-<uuid>/``; an object store uploads under the row's prefix);
2. make durable: every payload is durable before the manifest is written
   (fsyncs on a local disk; an upload is durable when it returns);
3. publish: check the writer's exclusion (a lease can be lost), then the
   manifest makes the row visible in one atomic step, the commit point: a
   rename of the staged directory, or a create-only manifest where the
   store has no rename;
4. retire: only then do rows that fall out of the retention policy stop
   being rows (renamed to ``.trash-*``, or their manifest deleted first),
   and their space is freed, beside the caller's next work when large.

The cost of a commit does not depend on how many rows exist: the writer
lists the store once, when it takes the exclusion, and tracks its rows in
memory afterwards.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import uuid
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import (
    CheckpointCleanupWarning,
    CheckpointCorruptError,
    CheckpointLockedError,
    CheckpointRemoteError,
    CheckpointWriteError,
)
from . import packs
from ._base import RowStore
from ._layout import MAX_SEQUENCE, PAYLOAD_NAME, row_dir_name, sequence_of
from ._local import WriterLock
from ._open import open_store
from .files import CHECKSUM_ALGORITHM, PreparedArray, aligned_empty
from .manifest import FORMAT, FORMAT_VERSION, UNPACKED_FORMAT_VERSION, ManifestError, dump_manifest, load_manifest
from .packs import PACK_NAME, fill_pack, lay_out
from .rows import Row

__all__ = ["RowWriter", "Snapshot", "WriterLock", "clean_leftovers", "row_body"]

# Retired rows at least this large are deleted on a helper thread.
DEFER_DELETE_BYTES = 64 << 20


def row_body(
    snapshot: Snapshot,
    sequence: int,
    commit_id: str,
    files: list[dict[str, Any]],
    arrays: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest body of a row: the front end's fields plus what the engine records.

    ``arrays`` (where each payload is, when some are packed) makes it a
    format 2 row; without packs a row stays in format 1, which every
    release reads.
    """
    body = dict(snapshot.body)
    if arrays is not None:
        body["arrays"] = arrays
    body.update(
        pinned=snapshot.pin,
        format=FORMAT,
        format_version=FORMAT_VERSION if arrays is not None else UNPACKED_FORMAT_VERSION,
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


def clean_leftovers(
    target: RowStore | str | os.PathLike[str], warn: bool = True, *, dry_run: bool = False
) -> list[str]:
    """Remove what interrupted writers left in a store (staging folders, manifest-less uploads).

    Only call this while holding the store's exclusion. Returns what was
    (with ``dry_run``: would be) removed.
    """
    store = open_store(target)
    interrupted, other = store.clean_leftovers(dry_run=dry_run)
    if interrupted and warn and not dry_run:
        warnings.warn(
            f"removed {len(interrupted)} incomplete commit(s) left in {store} by an interrupted writer: "
            + ", ".join(item.rstrip("/").rsplit("/", 1)[-1] for item in interrupted),
            CheckpointCleanupWarning,
            stacklevel=4,
        )
    return interrupted + other


def _row_name(row: Any) -> str:
    """The name of a row given as a name, a path or a URL."""
    name = getattr(row, "name", None)
    return name if isinstance(name, str) else str(row).rstrip("/").rsplit("/", 1)[-1]


class RowWriter:
    """The single writer of one store (one rank's rows).

    Parameters
    ----------
    store:
        A :class:`~restartable.store.RowStore`, or a path or URL for
        :func:`~restartable.store.open_store`.
    keep:
        How many rows to keep (``None`` keeps all); older rows are retired
        after each commit, never before the new row is durable.
    durable:
        fsync files and directories of a local store given by path (turn
        off only for throw-away data).
    link_unchanged:
        Link payloads whose bytes equal those of the same payload in the
        previous row written by this writer, instead of writing them again
        (stores with hard links; elsewhere they are written).
    floor:
        Called at each retirement; rows with a sequence number at or above
        what it returns are never retired (multi-rank runs keep the newest
        row every rank has, and everything newer).
    head:
        Publish the newest committed sequence in ``HEAD`` after each commit,
        for the other ranks' ``floor``.
    pack_below:
        Arrays smaller than this many bytes share pack files
        (:mod:`restartable.store.packs`); ``0`` gives every array a file of
        its own. ``None``: ``$RESTARTABLE_PACK_BELOW`` when set, else
        :data:`~restartable.store.packs.PACK_BELOW_BYTES` (4 MiB).
    """

    def __init__(
        self,
        store: RowStore | str | os.PathLike[str],
        *,
        keep: int | None = None,
        durable: bool = True,
        link_unchanged: bool = False,
        floor: Callable[[], int | None] | None = None,
        head: bool = False,
        pack_below: int | None = None,
    ) -> None:
        self.pack_below = packs.default_pack_below() if pack_below is None else pack_below
        if type(self.pack_below) is not int or self.pack_below < 0:
            raise ValueError(f"pack_below must be a non-negative number of bytes, got {pack_below!r}")
        self.store = open_store(store, durable=durable)
        self.floor = floor
        self.head = head
        self.keep = keep
        self.link_unchanged = link_unchanged and self.store.capabilities.hard_links
        self.exclusion = self.store.exclusion()
        try:
            self.store.prepare()
            self.exclusion.acquire()
        except OSError as exc:
            raise CheckpointWriteError(f"cannot open {self.store} for writing: {exc}", errno=exc.errno) from exc
        try:
            leftovers = clean_leftovers(self.store)
            existing = self.store.list_rows()
        except BaseException:
            self.exclusion.release()
            raise
        self._rows: deque[tuple[int, str]] = deque(existing)
        self._pinned = self._find_pinned() if keep is not None else None
        # Never reuse the number of a leftover row (a writer cut off from
        # its lease may still publish it): the next row is numbered after both.
        numbered = [sequence for item in leftovers if (sequence := sequence_of(item.rstrip("/").rsplit("/", 1)[-1]))]
        self._next_sequence = max([existing[-1][0] if existing else 0, *numbered]) + 1
        self._previous_files: dict[str, dict[str, Any]] = {}
        # The buffers packs are laid out in, reused from one commit to the next.
        self._pack_buffers: list[np.ndarray] = []
        self._writing = ""  # the payload file being written, for messages
        self._previous_name: str | None = None
        self._undeleted: list[Any] = []
        self._reaper: tuple[threading.Thread, list[Any]] | None = None
        # Payload bytes of the rows this writer committed: what retiring them frees.
        self._row_bytes: dict[str, int] = {}

    @property
    def lock(self) -> Any:
        """The store's exclusion (an flock, or a lease on an object store)."""
        return self.exclusion

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def close(self) -> None:
        try:
            if self.exclusion.held:
                self._empty_trash(wait=True)
            else:
                self._join_reaper()
        finally:
            self.exclusion.release()

    def restart_after(self, sequence: int) -> list[tuple[Any, OSError]]:
        """Continue after row ``sequence``: retire every newer row, number the next ``sequence + 1``.

        Multi-rank runs resume every rank from the same sequence; rows a rank
        committed beyond it belong to a future the other ranks never reached,
        and the sequence numbers of the ranks must stay aligned.
        """
        # HEAD down first: other ranks' retention keeps every row at or above
        # the lowest HEAD, so until it says `sequence` they could retire the
        # agreed row while this rank still holds rows of the abandoned run
        # (a kill between the two steps would then leave ranks whose rows
        # numbered alike hold different runs).
        if self.head:
            self._publish_head(sequence)
        # Newest first: a rank reading meanwhile never sees a gap below a newer row.
        newer = [self.store.row_path(name) for seq, name in reversed(self._rows) if seq > sequence]
        failed = self.retire(newer)
        if failed:
            return failed
        self._next_sequence = sequence + 1
        return []

    def _publish_head(self, sequence: int) -> None:
        try:
            self.store.write_head(sequence)
        except (OSError, CheckpointRemoteError) as exc:  # only a retention hint for other ranks
            warnings.warn(f"could not update the HEAD of {self.store}: {exc}", CheckpointCleanupWarning, stacklevel=3)

    def row_path(self, uid: str) -> Any:
        """Where :meth:`persist` with this ``uid`` will publish the next row."""
        return self.store.row_path(row_dir_name(self._numbered_next(), uid))

    def _numbered_next(self) -> int:
        """The next sequence number, refused when a row name cannot hold it."""
        if self._next_sequence <= MAX_SEQUENCE:
            return self._next_sequence
        # A row numbered past the name format would never be listed, and
        # retention would then count it and retire every readable row.
        newest = self.store.row_path(self._rows[-1][1]) if self._rows else self.store
        raise CheckpointWriteError(
            f"cannot number a row after {newest}: its sequence number is the largest a row name can hold "
            f"({MAX_SEQUENCE}). restartable numbers rows from 1, so that row was not made by a writer of this "
            "run; remove it to go on. Earlier rows are intact."
        )

    def persist(self, snapshot: Snapshot, *, uid: str | None = None) -> Row:
        """Make ``snapshot`` a durable row; retire rows beyond ``keep``.

        ``uid`` (32 hex digits) names the row, so that a front end can tell
        the caller where the row will be (:meth:`row_path`) before a
        background persist publishes it; a fresh one by default.

        Raises :class:`CheckpointWriteError` (:class:`CheckpointRemoteError`
        on an object store) if the row could not be made durable; every
        earlier row is then untouched.
        """
        if not self.exclusion.held:
            raise CheckpointWriteError(f"the writer of {self.store} is closed")
        if uid is None:
            uid = uuid.uuid4().hex
        elif not (len(uid) == 32 and all(c in "0123456789abcdef" for c in uid)):
            raise ValueError(f"uid must be 32 lowercase hex digits, got {uid!r}")
        # The rows retired by the previous commit are gone before this one
        # takes space: the store never holds more rows than without deferral.
        self._join_reaper()
        sequence = self._numbered_next()
        self._next_sequence += 1
        name = row_dir_name(sequence, uid)
        step = "creating the staging directory"
        draft = None
        try:
            draft = self.store.stage(name)
            step = "writing the payload files"
            files, arrays = self._write_payloads(draft, snapshot.payloads)
            step = "writing and syncing the payload files"
            draft.finish_payloads()
            body = row_body(snapshot, sequence, name, files, arrays)
            step = "checking the writer's lock"
            self.exclusion.check()
            step = "publishing the row"
            draft.publish(dump_manifest(body))
        except CheckpointLockedError:
            if draft is not None:
                draft.abandon()
            raise
        except (OSError, CheckpointRemoteError) as exc:
            if draft is not None:
                draft.abandon()
            if step == "writing the payload files":
                step = f"writing {self._writing}"
            raise self.store.write_error(
                f"could not commit row {sequence} to {self.store} while {step}: {exc}. Earlier rows are intact.", exc
            ) from exc
        except BaseException:
            if draft is not None:
                draft.abandon()
            raise
        self._rows.append((sequence, name))
        self._row_bytes[name] = sum(record["size"] for record in files)
        if snapshot.pin:
            self._pinned = name
        self._previous_files, self._previous_name = {record["name"]: record for record in files}, name
        try:
            draft.settle()
        except OSError as exc:
            raise self.store.write_error(
                f"row {name} was published in {self.store} but syncing its directory failed: {exc}", exc
            ) from exc
        if self.head:
            self._publish_head(sequence)
        self._retire()
        return Row(store=self.store, name=name, sequence=sequence, body=body)

    def _write_payloads(
        self, draft: Any, payloads: list[np.ndarray]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Write the payload files of a row: ``files`` for the manifest, and ``arrays`` when some are packed."""
        layout = lay_out(payloads, self.pack_below)
        files = [
            self._write_file(draft, PAYLOAD_NAME.format(index), PreparedArray(payloads[index])) for index in layout.own
        ]
        if not layout.packs:
            return files, None  # a format 1 row: payload i is files[i]
        arrays: list[dict[str, Any]] = [{"file": PAYLOAD_NAME.format(index)} for index in range(len(payloads))]
        for number, (members, size) in enumerate(zip(layout.packs, layout.sizes, strict=True)):
            file = PACK_NAME.format(number)
            buffer = self._pack_buffer(number, size)
            for index, entry in fill_pack(buffer, payloads, members, file):
                arrays[index] = entry
            files.append(self._write_file(draft, file, PreparedArray.of_bytes(buffer)))
        del self._pack_buffers[len(layout.packs) :]
        return files, arrays

    def _pack_buffer(self, number: int, size: int) -> np.ndarray:
        """``size`` bytes for pack ``number``: the previous commit's buffer when it is large enough.

        Page-aligned, so that a large pack is written with direct I/O; reused,
        so that a commit does not fault in fresh pages every time.
        """
        if number < len(self._pack_buffers) and self._pack_buffers[number].size >= size:
            return self._pack_buffers[number][:size]
        buffer = aligned_empty((size,), np.dtype(np.uint8))
        if number < len(self._pack_buffers):
            self._pack_buffers[number] = buffer
        else:
            self._pack_buffers.append(buffer)
        return buffer

    def _write_file(self, draft: Any, file: str, prepared: PreparedArray) -> dict[str, Any]:
        """Write one payload file, or link it to the previous row's copy when its bytes are unchanged."""
        self._writing = file
        previous = self._previous_files.get(file)
        if (
            self.link_unchanged
            and previous is not None
            and self._previous_name is not None
            and previous["size"] == prepared.size
            and previous["checksum"] == prepared.digest()
            and draft.link_payload(file, self._previous_name, previous["name"])
        ):
            return {"name": file, "size": prepared.size, "checksum": prepared.digest()}
        digest = draft.write_payload(file, prepared)
        return {"name": file, "size": prepared.size, "checksum": digest}

    def _retire(self) -> None:
        self._empty_trash(wait=True)  # what an earlier deletion left
        if self.keep is None:
            return
        floor = self.floor() if self.floor is not None else None
        rows = list(self._rows)
        # Kept: the newest ``keep`` rows, the pinned row, and (multi-rank)
        # every row at or above the floor.
        kept = {name for _, name in rows[max(0, len(rows) - self.keep) :]} if self.keep > 0 else set()
        freed = 0
        for sequence, name in rows:
            if name in kept or name == self._pinned or (floor is not None and sequence >= floor):
                continue
            try:
                retired = self.store.retire(name)
            except FileNotFoundError:
                self._rows.remove((sequence, name))
                self._row_bytes.pop(name, None)
                continue
            except (OSError, CheckpointRemoteError) as exc:
                # The row stays listed and is retried after the next commit.
                warnings.warn(
                    f"could not retire old row {self.store.row_path(name)}: {exc}",
                    CheckpointCleanupWarning,
                    stacklevel=3,
                )
                break
            self._rows.remove((sequence, name))
            self._undeleted.append(retired)
            freed += self._row_bytes.pop(name, 0)
        # Deleting a small row costs less than handing it to a thread.
        self._empty_trash(wait=freed < DEFER_DELETE_BYTES)

    def retire(self, rows: list[Any]) -> list[tuple[Any, OSError]]:
        """Retire the given committed rows (names or paths) now, whatever ``keep`` says.

        For front ends with their own retention policy (the iterator front
        end keeps the newest steps, not the newest sequence numbers). Call it
        only once the rows that supersede them are durable. Returns the rows
        that could not be retired, with the error; they stay listed and
        nothing is warned here, so that a background thread can hand the
        failures to the caller's thread.
        """
        failed: list[tuple[Any, OSError]] = []
        for row in rows:
            name = _row_name(row)
            try:
                self._undeleted.append(self.store.retire(name))
            except FileNotFoundError:
                pass  # already gone
            except OSError as exc:
                failed.append((row, exc))
                continue
            except CheckpointRemoteError as exc:
                failed.append((row, OSError(str(exc))))
                continue
            self._rows = deque(item for item in self._rows if item[1] != name)
            self._row_bytes.pop(name, None)
        if self._pinned is not None and all(name != self._pinned for _, name in self._rows):
            # An older pinned row (kept while retention was off) is again the
            # newest one: a restart from before the retired pin needs it.
            self._pinned = self._find_pinned()
        self._empty_trash(wait=True)
        return failed

    def _find_pinned(self) -> str | None:
        """The newest pinned row left by an earlier writer (read at open only)."""
        names = [name for _, name in reversed(self._rows)]
        fetched = self.store.read_manifests(names)
        for name in names:
            raw = fetched.get(name)
            # A manifest is canonical JSON: a pinned row's holds these bytes.
            # Parsing only those that do keeps opening a store of large
            # manifests (thousands of packed arrays each) cheap.
            if not isinstance(raw, bytes) or b'"pinned":true' not in raw:
                continue
            try:
                if load_manifest(raw).get("pinned"):
                    return name
            except (ManifestError, CheckpointCorruptError):
                continue
        return None

    def _empty_trash(self, wait: bool = False) -> None:
        """Free the space of retired rows on a helper thread (or now, with ``wait``).

        Deleting a large row costs about as much as a quarter of writing it
        (on a disk mounted with ``discard``, every freed extent is trimmed):
        it runs beside the caller's work and is joined before the next
        commit writes anything, and at :meth:`close`. What cannot be deleted
        is retried at the next call; a killed process leaves ``.trash-*``
        directories (or manifest-less uploads), which the next writer removes.
        """
        self._join_reaper()
        retired, self._undeleted = self._undeleted, []
        if not retired:
            return
        if wait:
            self._undeleted = self.store.delete_retired(retired)
            return
        remaining: list[Any] = []
        thread = threading.Thread(
            target=lambda: remaining.extend(self.store.delete_retired(retired)), name="restartable-reaper", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: delete now
            self._undeleted = self.store.delete_retired(retired)
            return
        self._reaper = (thread, remaining)

    def _join_reaper(self) -> None:
        if self._reaper is not None:
            thread, remaining = self._reaper
            thread.join()
            self._reaper = None
            self._undeleted = remaining + self._undeleted
