"""The catalog of one named run: :class:`Checkpoint`.

A thin owner of the catalog's parts: :class:`~._reading.CatalogReader` reads
this rank's rows, :class:`~._agreement.RankAgreement` checks the world size
and makes the ranks agree on one restart row, :func:`~._snapshot.encode_snapshot`
encodes a commit, and the storage engine in :mod:`restartable.store` writes
it. The checkpoint holds the writer (reference counted across sessions) and
the background persist of ``async_commit``.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import codec
from .._device import check_device, resolve_device
from ..distributed import detect_rank_and_world_size
from ..errors import CheckpointCorruptError, CheckpointWarning, CheckpointWriteError
from ..state import ACTIVE_SESSION, CURRENT_CHECKPOINT
from ..store import Row, RowStore, RowWriter, open_store
from ..store._layout import rank_folder_name
from ..store.background import BackgroundPersist, HostBufferPool
from ._agreement import RankAgreement
from ._entries import CheckpointEntry, entry_from_row
from ._paths import default_checkpoint_path
from ._reading import SELECT_ATTEMPTS, CatalogReader, RowRetired
from ._session import CheckpointSession
from ._snapshot import encode_snapshot
from ._table import entries_table, format_table

CheckpointLevel = Literal[0, 1, 2]


def _validate(
    name: str, mode: str, flush_interval: int | None, history_size: int | None, level: int, warn_history: bool
) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        # The name becomes a directory under the cache: it must not escape it.
        raise ValueError(f"name must not contain path separators or be '.' or '..', got {name!r}")
    if mode not in ("overwrite", "append"):
        raise ValueError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    if flush_interval is not None and (
        isinstance(flush_interval, bool) or not isinstance(flush_interval, int) or flush_interval < 1
    ):
        raise ValueError(f"flush_interval must be a positive integer or None, got {flush_interval!r}")
    if history_size is not None and (
        isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1
    ):
        raise ValueError(f"history_size must be a positive integer or None, got {history_size!r}")
    if level not in (0, 1, 2) or isinstance(level, bool):
        raise ValueError(f"level must be 0, 1 or 2, got {level!r}")
    if warn_history and mode == "overwrite" and history_size is not None and history_size > 1:
        # earth2studio accepts the pair and ignores history_size (its docs say
        # so): warned about, not refused, so that code written for it still runs.
        warnings.warn(
            f"history_size={history_size} is ignored: mode='overwrite' keeps one row; "
            f"use mode='append' to keep a history of {history_size} rows",
            CheckpointWarning,
            stacklevel=3,  # the caller of Checkpoint(...), past _validate and __init__
        )


class Checkpoint:
    """Catalog of restart checkpoints for a named run.

    Parameters
    ----------
    name:
        Name of the checkpoint store, used in the default path and in manifests.
    path:
        Directory of the store. Default ``$RESTARTABLE_CACHE/checkpoints/<name>``
        or ``~/.cache/restartable/checkpoints/<name>``. Any fsspec URL
        (``"s3://bucket/prefix"``, ``"gs://..."``, ``"memory://..."``) puts
        the catalog on an object store: rows are uploaded payloads first and
        manifest last, and a writer holds an expiring lease instead of a
        lock (see :class:`restartable.store.FsspecRowStore`). ``file://``
        URLs are local directories. A :class:`restartable.store.RowStore`
        is used as it is.
    mode:
        ``"overwrite"`` keeps only the latest row; ``"append"`` keeps a history.
    flush_interval:
        Number of ``write`` calls between durable commits; ``None`` commits
        only on ``flush()``.
    history_size:
        Rows kept in append mode (``None``: all). Overwrite mode keeps one
        row: a ``history_size`` above 1 there is ignored with a
        :class:`CheckpointWarning` (earth2studio, and the bridge, ignore it
        silently).
    level:
        0 records progress and metadata only; 1 adds component state needed to
        restart workflow items (ensemble members); 2 adds state needed to
        resume inside a rollout.
    rank, world_size:
        Distributed rank and world size; detected when ``None``. With
        ``world_size > 1`` each rank writes ``rank_<rank:06d>/``.
    device:
        Device on which components stage tensor state, and on which restored
        tensors are placed: ``"cpu"`` (the default), ``"cuda"``,
        ``"cuda:<index>"``, ``"meta"`` (shapes and dtypes only), another
        torch device type, or a ``torch.device``. Checked here: a name torch
        does not know, or a device this process cannot use (``"cuda"``
        where ``torch.cuda.is_available()`` is false, an index beyond the
        devices visible), raises ``ValueError`` naming the value.
    durable:
        fsync every file and directory of a commit (the default). Turn off
        only for throw-away data.
    link_unchanged:
        Hard-link array files whose bytes did not change since the previous
        row instead of writing them again. Faster for slowly changing state,
        but linked rows share one file: damage to it damages all of them, so
        falling back to an older row no longer helps. Off by default.
    consistent:
        With ``world_size > 1`` (the default ``True``): every rank resumes from
        the same row, the newest one every rank committed whole, and no rank
        retires that row or a newer one. Entering the checkpoint and
        ``select()`` are then collective calls when ``torch.distributed`` is
        initialised; otherwise each rank reads the other ranks' folders (or
        prefixes, on an object store). ``False`` lets each rank resume from
        its own newest row (independent ranks, as in earth2studio).
    storage_options:
        Options for fsspec when ``path`` is a URL (``{"endpoint_url": ...}``);
        by default fsspec's and the cloud SDK's own configuration.
        ``durable`` and ``link_unchanged`` apply to stores that can sync and
        link files: an object store has an upload durable when it returns,
        and writes every payload.
    async_commit:
        Persist rows on a background thread: ``write()`` and ``flush(wait=False)``
        block only for the snapshot (state copied into reusable page-aligned
        host buffers, CUDA tensors into pinned ones; metadata encoded), and
        large payloads are written with direct I/O, bypassing the page
        cache. One persist is in flight at a time; ``flush()``,
        leaving the session, :meth:`close` and interpreter exit wait for it.
        A background failure is raised as :class:`CheckpointWriteError` at the
        next call into the checkpoint, never swallowed. Peak memory: up to
        two extra copies of the state (one persisting, one being taken).

    Examples
    --------
    >>> import tempfile
    >>> from restartable import Checkpoint
    >>> store = tempfile.mkdtemp()
    >>> with Checkpoint("demo", path=store) as ckpt:
    ...     for step in range(3):
    ...         _ = ckpt.write(lead_time=step)
    >>> Checkpoint("demo", path=store).select(-1).lead_time
    2
    """

    # Where a store without an explicit path goes (the earth2studio bridge
    # moves it to earth2studio's cache).
    _default_path = staticmethod(default_checkpoint_path)
    # Whether rank detection initialises PhysicsNeMo's DistributedManager
    # (earth2studio's Checkpoint does; restartable's own leaves it alone).
    _initialize_physicsnemo = False
    # Codec rules: restartable accepts int dictionary keys and restores
    # saved dataclasses as their classes; the bridge follows earth2studio
    # (str keys only; a dataclass only into a dataclass the field holds).
    _int_keys = True
    _nested_dataclasses: Literal["resolve", "in_place"] = "resolve"
    # Metadata: restartable keeps every value as given but lead_time (a
    # one-element array or tensor there is recorded as its element); the
    # bridge unwraps one-element values of every key, as earth2studio does.
    _unwrap_one_element_metadata = False
    # Whether mode="overwrite" with a history_size above 1 is warned about;
    # earth2studio documents the pair as accepted, and the bridge keeps quiet.
    _warn_ignored_history_size = True

    def __init__(
        self,
        name: str,
        path: str | Path | None = None,
        mode: Literal["overwrite", "append"] = "overwrite",
        flush_interval: int | None = 1,
        history_size: int | None = None,
        level: CheckpointLevel = 2,
        rank: int | None = None,
        world_size: int | None = None,
        device: Any = "cpu",
        *,
        durable: bool = True,
        link_unchanged: bool = False,
        async_commit: bool = False,
        storage_options: dict[str, Any] | None = None,
        consistent: bool = True,
    ) -> None:
        _validate(name, mode, flush_interval, history_size, level, self._warn_ignored_history_size)
        check_device(device)
        if rank is None or world_size is None:
            detected_rank, detected_world = detect_rank_and_world_size(self._initialize_physicsnemo)
            rank = detected_rank if rank is None else rank
            world_size = detected_world if world_size is None else world_size
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.name = name
        self.storage_options = dict(storage_options or {})
        self._root = open_store(
            path if path is not None else self._default_path(name), self.storage_options, durable=durable
        )
        self.store: RowStore = self._root if world_size == 1 else self._root.child(rank_folder_name(rank))
        """This rank's rows (:class:`~restartable.store.RowStore`)."""
        self.path: Path | str = self._root.root_path
        self.mode = mode
        self.flush_interval = flush_interval
        self.history_size = 1 if mode == "overwrite" else history_size
        self.level = int(level)
        self.rank = rank
        self.world_size = world_size
        self._device = device
        self.durable = durable
        self.link_unchanged = link_unchanged
        self.async_commit = bool(async_commit)
        self._background = BackgroundPersist(str(self.rank_path)) if self.async_commit else None
        self._buffers = HostBufferPool()
        self._writer: RowWriter | None = None
        self._writer_users = 0
        self._finalizer: weakref.finalize[[], Checkpoint] | None = None
        self._reader = CatalogReader(self.store)
        self._agreement = RankAgreement(name, self._root, rank, world_size)
        self._context_sessions: list[CheckpointSession] = []
        self.consistent = bool(consistent)
        CURRENT_CHECKPOINT.set(self)

    # ------------------------------------------------------------------ facts

    @property
    def device(self) -> Any:
        """Device for staged and restored tensor state (``torch.device`` when torch is installed)."""
        return resolve_device(self._device)

    @property
    def rank_path(self) -> Path | str:
        """Directory (or URL) of this process's rows: ``path`` or ``path/rank_<rank:06d>``."""
        return self.store.root_path

    @property
    def remote(self) -> bool:
        """Whether the catalog lives on an object store (writers hold a lease there, not a lock)."""
        return self._root.capabilities.lease

    @property
    def multi_rank(self) -> bool:
        """Whether ranks agree on one restart point (``world_size > 1`` and ``consistent``)."""
        return self.world_size > 1 and self.consistent

    @property
    def active(self) -> CheckpointSession | None:
        """The session of this checkpoint open in the current context, if any."""
        session = ACTIVE_SESSION.get()
        if session is not None and session.checkpoint is self:
            return session
        return None

    @property
    def catalog(self) -> tuple[CheckpointEntry, ...]:
        """Committed rows of this rank, oldest first (re-read from disk)."""
        self.refresh()
        return tuple(self._entries)

    @property
    def _entries(self) -> list[CheckpointEntry]:
        """The whole rows of this rank as last read, oldest first."""
        return self._reader.entries

    def refresh(self) -> None:
        """Re-read the catalog from disk.

        Rows whose manifest is missing or damaged, or whose files have the
        wrong size, are left out with a :class:`CheckpointFallbackWarning`.
        """
        self._settle()
        entries, rows = self._reader.read()
        self._agreement.check_world_size(entries)
        if self.multi_rank and entries:
            entries = self._agreement.flag_common(entries)
        self._reader.keep(entries, rows)

    # ------------------------------------------------------------------ selection

    def select(self, row: int | None = None) -> CheckpointSession:
        """The session of catalog row ``row`` (negative indexes count from the end).

        Every file of the row is read and verified now; its bound states are
        restored when the session is entered or when components bind.
        ``select()`` with no row gives the latest row, or a new session when
        the catalog is empty. In a multi-rank run (:attr:`multi_rank`) the
        position counts the rows every rank has, so every rank selects the
        same sequence number, and ``select()`` gives the newest of them.

        Raises
        ------
        IndexError
            No row has that index.
        CheckpointCorruptError
            The row is damaged; the message names the file.
        """
        if self.multi_rank:
            if row is not None and (isinstance(row, bool) or not isinstance(row, (int, np.integer))):
                raise TypeError(f"row must be an integer, got {row!r}")
            return self._open_common(None if row is None else int(row))
        self.refresh()
        if row is None:
            if not self._entries:
                return CheckpointSession(self, None)
            row = -1
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row must be an integer, got {row!r}")
        for _attempt in range(SELECT_ATTEMPTS):
            if not self._entries:
                raise IndexError(f"checkpoint {self.name!r} has no committed rows in {self.rank_path}")
            try:
                entry = self._entries[row]
            except IndexError:
                raise IndexError(
                    f"row {row} is out of range: checkpoint {self.name!r} has {len(self._entries)} row(s)"
                ) from None
            try:
                return self._open_session(entry)
            except RowRetired:
                self.refresh()  # a writer retired the row while we read it; positions moved
        raise CheckpointCorruptError(f"rows of {self.rank_path} kept being retired while reading row {row}; try again")

    def _open_session(self, entry: CheckpointEntry) -> CheckpointSession:
        """The session of ``entry``'s row, read and verified."""
        return CheckpointSession(self, entry, *self._reader.load(entry))

    def _open_latest(self) -> CheckpointSession:
        """The newest row that verifies, falling back to older ones with a warning."""
        self.refresh()
        opened = self._reader.open_latest()
        return CheckpointSession(self, None) if opened is None else CheckpointSession(self, *opened)

    def _open_common(self, position: int | None = None) -> CheckpointSession:
        """The session of the newest row every rank has whole (or the one at ``position`` among them)."""
        self.refresh()
        opened = self._agreement.open_common(self._entries, self._reader.load, position)
        return CheckpointSession(self, None) if opened is None else CheckpointSession(self, *opened)

    # ------------------------------------------------------------------ context

    def __enter__(self) -> CheckpointSession:
        session = self.active
        if session is not None:
            self._context_sessions.append(session)
            return session.__enter__()
        # Before the writer creates this rank's folder: a refused run leaves no trace.
        self._agreement.check_world_size([])
        # Lock before reading, so that the row chosen cannot be retired by
        # another writer between reading and entering.
        self._acquire_writer()
        try:
            session = self._open_common() if self.multi_rank else self._open_latest()
            session.__enter__()
        finally:
            self._release_writer()
        self._context_sessions.append(session)
        return session

    def __exit__(self, *exc_info: Any) -> None:
        if self._context_sessions:
            self._context_sessions.pop().__exit__(*exc_info)

    def close(self) -> None:
        """Wait for a background commit in flight, then release the writer lock."""
        try:
            self._settle()
        finally:
            self._release_all()

    # ------------------------------------------------------------------ writer

    def _acquire_writer(self) -> RowWriter:
        """Take a reference to the writer (opening it, and taking its lock, on the first).

        For CheckpointSession too: an entered session holds one.
        """
        if self._writer is None:
            self._writer = RowWriter(
                self.store,
                keep=self.history_size,
                link_unchanged=self.link_unchanged,
                floor=self._agreement.floor if self.multi_rank else None,
                head=self.multi_rank,
            )
            self._finalizer = weakref.finalize(self, self._writer.close)
        self._writer_users += 1
        return self._writer

    def _release_writer(self) -> None:
        """Drop a reference to the writer (closing it, and releasing its lock, on the last).

        For CheckpointSession too: a session leaving drops its reference.
        """
        self._writer_users = max(0, self._writer_users - 1)
        if self._writer_users == 0:
            self._release_all()

    def _release_all(self) -> None:
        self._writer_users = 0
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ for CheckpointSession
    #
    # The session's side of reading rows, restoring state and committing.
    # Underscored to keep them out of the public Checkpoint API; nothing but
    # CheckpointSession (and this class) calls them.

    def _load_row(self, entry: CheckpointEntry) -> tuple[Row, Any]:
        """For CheckpointSession: read and verify ``entry``'s row; the row and its payload loader."""
        return self._reader.load(entry)

    def _whole_row(self, commit_id: str) -> CheckpointEntry | None:
        """For CheckpointSession: the entry of whole row ``commit_id`` as last read, if any."""
        return next((entry for entry in self._entries if entry.commit_id == commit_id), None)

    def _decode_state(self, doc: Any, payloads: Any, into: Any) -> None:
        """For CheckpointSession: restore a saved state ``doc`` into the dataclass ``into``, on :attr:`device`."""
        codec.decode(
            doc,
            payloads,
            root="state",
            device=self._device,
            into=into,
            nested_dataclasses=self._nested_dataclasses,
        )

    def _restart_writer(self, session: CheckpointSession) -> None:
        """For CheckpointSession: number this rank's next row after the agreed one, as on the other ranks."""
        sequence = session.entry.sequence if session.entry is not None else 0
        writer = self._writer
        assert writer is not None  # the entering session holds the writer
        failed = writer.restart_after(sequence)
        if failed:
            path, exc = failed[0]
            raise CheckpointWriteError(
                f"cannot resume {self.rank_path} after row {sequence}: "
                f"the newer row {path} could not be retired ({exc})",
                errno=exc.errno,
            )

    def _poll_background(self) -> None:
        """For CheckpointSession: raise the failure of a background commit already known, without waiting."""
        if self._background is not None:
            self._background.poll()

    def _settle(self) -> None:
        """For CheckpointSession too: wait for a background commit in flight and raise its failure, if any."""
        if self._background is not None:
            self._background.wait()

    def _commit(self, session: CheckpointSession, metadata: dict[str, Any], pin: bool = False) -> None:
        """For CheckpointSession: snapshot now; persist now, or in the background with ``async_commit``.

        ``session._committed(entry, row)`` is called once the row is durable,
        ``session._commit_lost()`` if a background persist fails.
        """
        background = self._background
        # With async_commit the snapshot is taken while the previous persist
        # may still run; submit() then waits for it. At most two snapshots
        # exist: the one being written and this one.
        buffers = self._buffers.take() if background is not None else None
        snapshot = encode_snapshot(
            checkpoint_name=self.name,
            rank=self.rank,
            world_size=self.world_size,
            level=self.level,
            mode=self.mode,
            int_keys=self._int_keys,
            write_count=session.write_count,
            metadata=metadata,
            labels=session.labels,
            bound_states=session.bound_states,
            copy=buffers or False,
        )
        snapshot.pin = pin
        writer = self._acquire_writer()
        if background is None:
            try:
                row = writer.persist(snapshot)
            finally:
                self._release_writer()
            self._published(session, row)
            return
        assert buffers is not None  # taken above, for the background persist

        def cleanup() -> None:
            buffers.release()
            self._release_writer()

        def failed(error: BaseException) -> None:
            session._commit_lost()

        try:
            background.submit(
                lambda: writer.persist(snapshot), lambda row: self._published(session, row), cleanup, failed
            )
        except BaseException:
            self._release_writer()  # the previous persist failed; this snapshot is not written
            raise

    def _published(self, session: CheckpointSession, row: Row) -> None:
        entry = entry_from_row(row)
        self._reader.remember(entry, row)
        session._committed(entry, row)

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        # The catalog as a table, as earth2studio shows a checkpoint.
        return str(self)

    def __str__(self) -> str:
        entries = self.catalog
        lines = [
            f'Checkpoint("{self.name}")',
            f"path: {self.rank_path}",
            f"mode: {self.mode}  level: {self.level}  flush_interval: {self.flush_interval}  "
            f"rank: {self.rank}/{self.world_size}",
        ]
        if not entries:
            return "\n".join([*lines, "catalog: empty"])
        return "\n".join([*lines, "", format_table(entries_table(entries))])
