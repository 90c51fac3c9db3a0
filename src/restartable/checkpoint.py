"""The catalog front end: :class:`Checkpoint`, :class:`CheckpointSession`, :class:`NullCheckpoint`.

A drop-in replacement for ``earth2studio.utils.checkpoint``::

    from restartable import Checkpoint

    checkpoint = Checkpoint("my-forecast", flush_interval=6, level=2)
    with checkpoint as ckpt:               # latest whole row, or a new session
        for lead_time in lead_times:
            ...                            # step the model, write the IO
            ckpt.write(lead_time=lead_time)
        ckpt.flush()

Each commit is a row of the catalog, made durable by the storage engine in
:mod:`restartable.store` before it is listed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import codec
from .distributed import all_gather, detect_rank_and_world_size, process_group_size, rank_folder, read_head
from .errors import (
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointLateBindWarning,
    CheckpointSerializationError,
    CheckpointStateCollision,
    CheckpointStateSchemaError,
    CheckpointWorldSizeError,
    CheckpointWriteError,
)
from .state import (
    ACTIVE_SESSION,
    CURRENT_CHECKPOINT,
    CheckpointState,
    buffer_pending,
    state_id,
    states_of,
    take_pending,
    unwrap,
)
from .store import Row, RowWriter, Snapshot, list_row_dirs, open_row, scan_rows
from .store.rows import COMMITS_DIR, ROW_NAME
from .store.objects import LOCAL_PROTOCOLS, is_url, local_path_of, url_protocol
from .store.background import BackgroundPersist, HostBufferPool

__all__ = [
    "Checkpoint",
    "CheckpointEntry",
    "CheckpointSession",
    "NullCheckpoint",
    "default_checkpoint_path",
    "resolve_device",
]

CheckpointLevel = Literal[0, 1, 2]
# A reader without the lock may see a row retired between listing and
# reading it; it re-reads the catalog this many times before giving up.
_SELECT_ATTEMPTS = 5
_RANK_DIR = re.compile(r"rank_\d{6}")


class _RowRetired(Exception):
    """The row directory vanished: retired by its writer, not damaged."""


def default_checkpoint_path(name: str) -> Path:
    """``$RESTARTABLE_CACHE/checkpoints/<name>``, else ``~/.cache/restartable/checkpoints/<name>``."""
    base = os.environ.get("RESTARTABLE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "restartable"
    return root / "checkpoints" / name


def resolve_device(device: Any) -> Any:
    """A ``torch.device`` when torch is installed, else the device's name."""
    try:
        import torch
    except ImportError:
        return str(device)
    return torch.device(device)


def _normalize_value(value: Any) -> Any:
    # Workflows pass coords["lead_time"], a one-element array; the catalog
    # records the element.
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.reshape(-1)[0]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().cpu().reshape(-1)[0].item()
    return value


@dataclasses.dataclass(frozen=True)
class CheckpointEntry:
    """One committed row of a catalog.

    Attributes
    ----------
    commit_id:
        Name of the row directory, ``<sequence:012d>-<uuid>``.
    sequence:
        Commit sequence number, increasing within a rank directory.
    lead_time:
        The ``lead_time`` metadata of the row, if any.
    metadata:
        All metadata recorded with ``write``/``flush``.
    write_count:
        Number of ``write`` calls of the session when the row was committed.
    saved_at:
        UTC time of the commit, ISO 8601.
    rank, world_size:
        The rank that wrote the row and the world size at the time.
    level:
        Checkpoint level at the time of the commit.
    state_ids:
        Qualified names of the bound states saved in the row.
    path:
        The row directory.
    pinned:
        Whether the row was committed with :meth:`CheckpointSession.pin`.
    labels:
        The session's labels when the row was committed (``session.labels``:
        a mapping the caller may set, kept apart from metadata).
    all_ranks:
        In a multi-rank run, whether every rank has a row with this sequence
        number (read from the other ranks' folders); ``None`` otherwise.
    """

    commit_id: str
    sequence: int
    lead_time: Any
    metadata: Mapping[str, Any]
    write_count: int
    saved_at: str
    rank: int
    world_size: int
    level: int
    state_ids: tuple[str, ...]
    path: Path
    pinned: bool = False
    all_ranks: bool | None = None
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def metadata_keys(self) -> tuple[str, ...]:
        """Names of the metadata values (earth2studio's field)."""
        return tuple(self.metadata)

    @property
    def artifacts(self) -> tuple[str, ...]:
        """earth2studio's older name for :attr:`metadata_keys`."""
        return self.metadata_keys


def _entry_from_row(row: Row) -> CheckpointEntry:
    body = row.body
    try:
        metadata = codec.decode(body["metadata"], row.read_payload, root="metadata")
        labels = codec.decode(body["labels"], row.read_payload, root="labels") if "labels" in body else {}
        return CheckpointEntry(
            commit_id=row.commit_id,
            sequence=row.sequence,
            lead_time=metadata.get("lead_time"),
            metadata=metadata,
            write_count=int(body["write_count"]),
            saved_at=str(body["saved_at"]),
            rank=int(body["rank"]),
            world_size=int(body["world_size"]),
            level=int(body["level"]),
            state_ids=tuple(record["id"] for record in body["states"]),
            path=row.path,
            pinned=bool(body.get("pinned", False)),
            labels=labels,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CheckpointCorruptError):
            raise
        raise CheckpointCorruptError(
            f"{row.path / 'manifest.json'} lacks a valid catalog record ({exc!r})",
            row=str(row.path),
            file=str(row.path / "manifest.json"),
        ) from exc


def _fingerprint(record: dict[str, Any] | None, row: Row | None) -> str | None:
    """A state record's content, with each array reference replaced by its file's checksum."""
    if record is None or row is None:
        return None
    files = row.files

    def resolve(doc: Any) -> Any:
        if isinstance(doc, list):
            return [resolve(item) for item in doc]
        if isinstance(doc, dict):
            if doc.get(codec.TAG) in ("ndarray", "tensor") and "i" in doc:
                entry = files[int(doc["i"])]
                return {**doc, "i": [entry["size"], entry["checksum"]]}
            return {key: resolve(value) for key, value in doc.items()}
        return doc

    return json.dumps(resolve(record.get("value")), sort_keys=True, default=str)


def _metadata_key(path: str | None) -> str:
    """The metadata key of a codec path like ``metadata['lead_time'][2]``."""
    if path and path.startswith("metadata[") and "]" in path:
        head = path[len("metadata[") : path.index("]")]
        return head.strip("'\"")
    return path or "?"


def _refuse_metadata_dataclasses(metadata_doc: Any) -> None:
    """Metadata is read by every catalog reader, which may lack the user's types."""
    if isinstance(metadata_doc, dict) and "v" in metadata_doc:
        items = list(metadata_doc["v"].items())
    elif isinstance(metadata_doc, dict) and "items" in metadata_doc:
        items = [(key, value) for key, value in metadata_doc["items"]]
    else:
        items = [("?", metadata_doc)]
    for key, value in items:
        _refuse_dataclasses(value, key)


def _refuse_dataclasses(doc: Any, key: Any) -> None:
    if isinstance(doc, dict):
        if doc.get(codec.TAG) == "dataclass":
            raise CheckpointSerializationError(
                f"Invalid checkpoint metadata {key!r}: cannot checkpoint a {doc['type']} in metadata: catalog "
                "readers may not have that type; bind it with bind_checkpoint_state instead",
                path=f"metadata[{key!r}]",
            )
        children: Any = doc.values()
    elif isinstance(doc, list):
        children = doc
    else:
        return
    for child in children:
        _refuse_dataclasses(child, key)


def _validate(name: str, mode: str, flush_interval: int | None, history_size: int | None, level: int) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        # The name becomes a directory under the cache: it must not escape it.
        raise ValueError(f"name must not contain path separators or be '.' or '..', got {name!r}")
    if mode not in ("overwrite", "append"):
        raise ValueError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    if flush_interval is not None and (isinstance(flush_interval, bool) or not isinstance(flush_interval, int) or flush_interval < 1):
        raise ValueError(f"flush_interval must be a positive integer or None, got {flush_interval!r}")
    if history_size is not None and (isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1):
        raise ValueError(f"history_size must be a positive integer or None, got {history_size!r}")
    if level not in (0, 1, 2) or isinstance(level, bool):
        raise ValueError(f"level must be 0, 1 or 2, got {level!r}")


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
        lock (see :mod:`restartable.store.object_rows`). ``file://`` URLs
        are local directories.
    mode:
        ``"overwrite"`` keeps only the latest row; ``"append"`` keeps a history.
    flush_interval:
        Number of ``write`` calls between durable commits; ``None`` commits
        only on ``flush()``.
    history_size:
        Rows kept in append mode (``None``: all). Ignored in overwrite mode.
    level:
        0 records progress and metadata only; 1 adds component state needed to
        restart workflow items (ensemble members); 2 adds state needed to
        resume inside a rollout.
    rank, world_size:
        Distributed rank and world size; detected when ``None``. With
        ``world_size > 1`` each rank writes ``rank_<rank:06d>/``.
    device:
        Device on which components stage tensor state, and on which restored
        tensors are placed.
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
        initialised. ``False`` lets each rank resume from its own newest row
        (independent ranks, as in earth2studio). Catalogs at URLs do that
        whatever ``consistent`` says, for now.
    storage_options:
        Options for fsspec when ``path`` is a URL (``{"endpoint_url": ...}``);
        by default fsspec's and the cloud SDK's own configuration.
        ``durable`` and ``link_unchanged`` apply to local stores only: an
        object store has an upload complete when it returns.
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
        _validate(name, mode, flush_interval, history_size, level)
        if rank is None or world_size is None:
            detected_rank, detected_world = detect_rank_and_world_size(self._initialize_physicsnemo)
            rank = detected_rank if rank is None else rank
            world_size = detected_world if world_size is None else world_size
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.name = name
        self.path: Path | str
        if is_url(path) and url_protocol(str(path)) not in LOCAL_PROTOCOLS:
            self.path = str(path).rstrip("/")
        elif is_url(path):
            self.path = local_path_of(str(path))
        else:
            self.path = Path(path).expanduser() if path is not None else self._default_path(name)
        self.storage_options = dict(storage_options or {})
        self._object_store: Any = None
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
        self._writer: Any = None  # RowWriter, or ObjectRowWriter for a URL
        self._writer_users = 0
        self._finalizer: weakref.finalize | None = None
        self._entries: list[CheckpointEntry] = []
        self._rows: dict[str, Row] = {}
        self._damaged: set[str] = set()
        self._warned: set[str] = set()
        self._context_sessions: list[CheckpointSession] = []
        self.consistent = bool(consistent)
        self._agreed: int | None = None  # the restart sequence every rank agreed on
        CURRENT_CHECKPOINT.set(self)

    # ------------------------------------------------------------------ facts

    @property
    def device(self) -> Any:
        """Device for staged and restored tensor state (``torch.device`` when torch is installed)."""
        return resolve_device(self._device)

    @property
    def rank_path(self) -> Path | str:
        """Directory (or URL) of this process's rows: ``path`` or ``path/rank_<rank:06d>``."""
        if self.world_size == 1:
            return self.path
        if isinstance(self.path, str):
            return f"{self.path}/rank_{self.rank:06d}"
        return self.path / f"rank_{self.rank:06d}"

    @property
    def remote(self) -> bool:
        """Whether the catalog lives on an object store."""
        return isinstance(self.path, str)

    def _store(self) -> Any:
        if self._object_store is None:
            from .store.objects import ObjectStore

            self._object_store = ObjectStore(str(self.rank_path), self.storage_options)
        return self._object_store

    def _scan(self) -> Any:
        if self.remote:
            from .store.object_rows import scan_object_rows

            return scan_object_rows(self._store())
        return scan_rows(self.rank_path)

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

    def refresh(self) -> None:
        """Re-read the catalog from disk.

        Rows whose manifest is missing or damaged, or whose files have the
        wrong size, are left out with a :class:`CheckpointFallbackWarning`.
        """
        self._settle()
        for _attempt in range(_SELECT_ATTEMPTS):
            scan = self._scan()
            entries, rows, retired = self._entries_of(scan)
            if not retired:
                break
        for problem in scan.problems:
            self._warn_damaged(str(problem.row).rstrip("/").rsplit("/", 1)[-1], problem.reason)
        self._check_world_size(entries)
        if self.multi_rank and entries:
            entries = self._flag_common(entries)
        self._entries, self._rows = entries, rows

    def _world_size_of_other_ranks(self) -> str | None:
        for name in sorted(os.listdir(self.path)):
            if not _RANK_DIR.fullmatch(name) or name == f"rank_{self.rank:06d}":
                continue
            for sequence, row_path in reversed(list_row_dirs(self.path / name)):
                try:
                    written = int(open_row(row_path, sequence).body["world_size"])
                except (CheckpointCorruptError, KeyError, TypeError, ValueError):
                    continue
                return None if written == self.world_size else f"{written} (rows of {name})"
        return None

    def _flag_common(self, entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
        """Mark entries whose sequence every rank's folder holds (names only: cheap)."""
        present = None
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            names = {sequence for sequence, _ in list_row_dirs(self._rank_folder(rank))}
            present = names if present is None else present & names
        return [dataclasses.replace(entry, all_ranks=entry.sequence in (present or set())) for entry in entries]

    def _check_world_size(self, entries: list[CheckpointEntry]) -> None:
        """Refuse a store written by a run with another number of ranks."""
        other = sorted({entry.world_size for entry in entries if entry.world_size != self.world_size})
        on_disk: str | None = f"{other[0]}" if other else None
        if on_disk is None and not self.remote and self.path.is_dir():
            ranks = sorted(int(name[5:]) for name in os.listdir(self.path) if _RANK_DIR.fullmatch(name))
            commits = self.path / COMMITS_DIR
            serial = commits.is_dir() and any(ROW_NAME.match(name) for name in os.listdir(commits))
            if self.world_size == 1 and ranks:
                on_disk = f"at least {ranks[-1] + 1} (folders rank_{ranks[0]:06d}..rank_{ranks[-1]:06d})"
            elif self.world_size > 1 and serial:
                on_disk = "1 (rows directly in commits/)"
            elif self.world_size > 1 and ranks and ranks[-1] >= self.world_size:
                on_disk = f"at least {ranks[-1] + 1} (folder rank_{ranks[-1]:06d})"
        if on_disk is None and not self.remote and self.world_size > 1 and not entries and self.path.is_dir():
            # A rank new to this store (more ranks than before): ask another rank's newest row.
            on_disk = self._world_size_of_other_ranks()
        if on_disk is not None:
            raise CheckpointWorldSizeError(
                f"{self.path} was written by a run with world_size {on_disk}, but this run has world_size "
                f"{self.world_size}; resume with the same number of ranks, or use another path"
            )

    def _entries_of(self, scan: Any) -> tuple[list[CheckpointEntry], dict[str, Row], bool]:
        entries, rows, retired = [], {}, False
        for row in scan.rows:
            if row.commit_id in self._damaged:
                continue
            try:
                entry = _entry_from_row(row)
            except CheckpointCorruptError as exc:
                if not row.exists():
                    retired = True  # retired by the writer while we read it: rescan
                    continue
                self._warn_damaged(row.commit_id, str(exc))
                continue
            entries.append(entry)
            rows[row.commit_id] = row
        return entries, rows, retired

    def _warn_damaged(self, commit_id: str, reason: str) -> None:
        if commit_id in self._warned:
            return
        self._warned.add(commit_id)
        warnings.warn(
            f"skipping damaged checkpoint row {commit_id} of {self.rank_path}: {reason}",
            CheckpointFallbackWarning,
            stacklevel=4,
        )

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
        for _attempt in range(_SELECT_ATTEMPTS):
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
            except _RowRetired:
                self.refresh()  # a writer retired the row while we read it; positions moved
        raise CheckpointCorruptError(
            f"rows of {self.rank_path} kept being retired while reading row {row}; try again"
        )

    def _open_session(self, entry: CheckpointEntry) -> CheckpointSession:
        stored = self._rows[entry.commit_id]
        try:
            loader = stored.load_all_payloads()
        except CheckpointCorruptError as exc:
            if not stored.exists():
                raise _RowRetired(entry.commit_id) from exc
            self._damaged.add(entry.commit_id)
            raise
        return CheckpointSession(self, entry, stored, loader)

    def _open_latest(self) -> CheckpointSession:
        """The newest row that verifies, falling back to older ones with a warning."""
        self.refresh()
        for entry in reversed(list(self._entries)):
            try:
                return self._open_session(entry)
            except _RowRetired:
                continue
            except CheckpointCorruptError as exc:
                self._warned.add(entry.commit_id)
                warnings.warn(
                    f"checkpoint row {entry.commit_id} of {self.rank_path} is damaged ({exc}); "
                    "falling back to the previous row",
                    CheckpointFallbackWarning,
                    stacklevel=3,
                )
        if self._damaged:
            warnings.warn(
                f"no whole row is left in {self.rank_path}; starting a new session",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
        return CheckpointSession(self, None)

    # ------------------------------------------------------------------ ranks

    @property
    def multi_rank(self) -> bool:
        """Whether ranks agree on one restart point (``world_size > 1``, ``consistent``, a local path)."""
        return self.world_size > 1 and self.consistent and not self.remote

    def _rank_folder(self, rank: int) -> Path:
        return rank_folder(Path(self.path), rank)

    def _collective(self) -> bool:
        return process_group_size() == self.world_size

    def _rank_views(self) -> tuple[list[tuple[set[int], set[int]]], dict[int, dict[int, Row]]]:
        """(whole sequences, listed sequences) of every rank, by collective or from the shared path,
        and the other ranks' whole rows by sequence (read from the shared path; empty under a collective)."""
        own_whole = {entry.sequence for entry in self._entries}
        own_listed = {sequence for sequence, _ in list_row_dirs(Path(self.rank_path))}
        if self._collective():
            gathered = all_gather([sorted(own_whole), sorted(own_listed)], self.world_size)
            return [(set(whole), set(listed)) for whole, listed in gathered], {}
        views = []
        peers: dict[int, dict[int, Row]] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                views.append((own_whole, own_listed))
                continue
            # One listing for both sets: a row the rank commits meanwhile must
            # not look listed but not whole (that reads as damage).
            scan = scan_rows(self._rank_folder(rank))
            peers[rank] = {row.sequence: row for row in scan.rows}
            whole = set(peers[rank])
            damaged = {int(match.group(1)) for problem in scan.problems if (match := ROW_NAME.match(Path(problem.row).name))}
            views.append((whole, whole | damaged))
        return views, peers

    def _verified_everywhere(
        self, sequence: int, own_ok: bool, peers: dict[int, dict[int, Row]]
    ) -> tuple[list[int], list[int]]:
        """The ranks whose row ``sequence`` fails verification, and those that retired it meanwhile.

        Every rank gets the same answer under a collective. On a shared path,
        the other ranks' rows are those the agreement read (``peers``); a row
        that vanished while it was read was retired by its rank, which had
        agreed on an older row already: it is no restart point any more, but
        no damage either.
        """
        if self._collective():
            oks = all_gather(own_ok, self.world_size)
            return [rank for rank, ok in enumerate(oks) if not ok], []
        failed = [] if own_ok else [self.rank]
        retired = []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            row = peers.get(rank, {}).get(sequence)
            try:
                if row is None:
                    raise CheckpointCorruptError(f"rank {rank} has no row {sequence}")
                row.load_all_payloads()
            except CheckpointCorruptError:
                if row is not None and not row.exists():
                    retired.append(rank)
                else:
                    failed.append(rank)
        return sorted(failed), retired

    def _common_sequences(self) -> tuple[list[int], dict[int, dict[int, Row]]]:
        """Sequences every rank committed whole, oldest first (warning about gaps above the newest),
        and the other ranks' rows as read for it."""
        views, peers = self._rank_views()
        common = set.intersection(*(whole for whole, _ in views))
        newest_common = max(common, default=0)
        lacking = []
        for sequence in sorted(set.union(*(whole for whole, _ in views))):
            if sequence <= newest_common:
                continue
            for rank, (whole, listed) in enumerate(views):
                # A gap (the rank went past it) or a damaged row, not a rank that simply stopped earlier.
                if sequence not in whole and (sequence in listed or sequence < max(listed, default=0)):
                    lacking.append(f"rank {rank} row {sequence}")
        if lacking:
            warnings.warn(
                f"{', '.join(lacking)} of {self.path} is damaged or missing; every rank falls back to "
                + (f"row {newest_common}, the newest every rank has whole" if common else "a new session (no row is common to every rank)"),
                CheckpointFallbackWarning,
                stacklevel=4,
            )
        return sorted(common), peers

    def _open_common(self, position: int | None = None) -> CheckpointSession:
        """The session of the newest row every rank has whole (or the one at ``position`` among them)."""
        self.refresh()
        common, peers = self._common_sequences()
        by_sequence = {entry.sequence: entry for entry in self._entries}
        if position is not None:
            if not common:
                raise IndexError(f"checkpoint {self.name!r} has no row that every rank committed, in {self.path}")
            try:
                chosen = common[position]
            except IndexError:
                raise IndexError(
                    f"row {position} is out of range: {len(common)} row(s) of {self.path} are common to every rank"
                ) from None
            session = self._open_session(by_sequence[chosen])
            self._agreed = chosen
            return session
        vanished: set[int] = set()
        for sequence in reversed(common):
            session: CheckpointSession | None = None
            try:
                session = self._open_session(by_sequence[sequence])
            except (CheckpointCorruptError, _RowRetired):
                session = None
            failed, retired = self._verified_everywhere(sequence, session is not None, peers)
            if not failed and not retired:
                assert session is not None
                self._agreed = sequence
                return session
            vanished.update(retired)
            if not failed:
                continue
            warnings.warn(
                f"row {sequence} of {', '.join(f'rank {rank}' for rank in failed)} in {self.path} is damaged; "
                "every rank falls back to the previous row common to all ranks",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
        if vanished:
            # A rank retiring newer rows after agreeing on an older one never
            # removes every common row: something else removed them.
            warnings.warn(
                f"the rows common to every rank vanished from {', '.join(f'rank {rank}' for rank in sorted(vanished))} "
                f"of {self.path} while they were read; starting a new session",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
        self._agreed = 0
        return CheckpointSession(self, None)

    def _floor(self) -> int | None:
        """The newest sequence every rank has committed, as far as the ranks' HEAD files tell."""
        heads = []
        for rank in range(self.world_size):
            head = read_head(Path(self.rank_path) if rank == self.rank else self._rank_folder(rank))
            heads.append(head if head is not None else (self._agreed or 0))
        return min(heads)

    def _restart_writer(self, session: CheckpointSession) -> None:
        """Align this rank's next sequence with the other ranks after the agreed row."""
        sequence = session.entry.sequence if session.entry is not None else 0
        failed = self._writer.restart_after(sequence)
        if failed:
            path, exc = failed[0]
            raise CheckpointWriteError(
                f"cannot resume {self.rank_path} after row {sequence}: the newer row {path} could not be retired ({exc})",
                errno=exc.errno,
            )

    def __enter__(self) -> CheckpointSession:
        session = self.active
        if session is not None:
            self._context_sessions.append(session)
            return session.__enter__()
        # Before the writer creates this rank's folder: a refused run leaves no trace.
        self._check_world_size([])
        # Lock before reading, so that the row chosen cannot be retired by
        # another writer between reading and entering.
        self._acquire_writer()
        try:
            if self.multi_rank:
                session = self._open_common()
            else:
                session = self._open_latest()
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

    def _release_all(self) -> None:
        self._writer_users = 0
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ writing

    def _acquire_writer(self) -> RowWriter:
        if self._writer is None:
            if self.remote:
                from .store.object_rows import ObjectRowWriter

                self._writer = ObjectRowWriter(self._store(), keep=self.history_size)
            else:
                self._writer = RowWriter(
                    self.rank_path,
                    keep=self.history_size,
                    durable=self.durable,
                    link_unchanged=self.link_unchanged,
                    floor=self._floor if self.multi_rank else None,
                    head=self.multi_rank,
                )
            self._finalizer = weakref.finalize(self, self._writer.close)
        self._writer_users += 1
        return self._writer

    def _release_writer(self) -> None:
        self._writer_users = max(0, self._writer_users - 1)
        if self._writer_users == 0:
            self._release_all()

    def _settle(self) -> None:
        """Wait for a background commit in flight and raise its failure, if any."""
        if self._background is not None:
            self._background.wait()

    def _commit(self, session: CheckpointSession, metadata: dict[str, Any], pin: bool = False) -> None:
        """Snapshot now; persist now, or in the background with ``async_commit``.

        ``session._committed(entry, row)`` is called once the row is durable.
        """
        background = self._background
        # With async_commit the snapshot is taken while the previous persist
        # may still run; submit() then waits for it. At most two snapshots
        # exist: the one being written and this one.
        buffers = self._buffers.take() if background is not None else None
        snapshot = self._snapshot(session, metadata, copy=buffers or False)
        snapshot.pin = pin
        writer = self._acquire_writer()
        if background is None:
            try:
                row = writer.persist(snapshot)
            finally:
                self._release_writer()
            self._published(session, row)
            return

        def cleanup() -> None:
            buffers.release()
            self._release_writer()

        def failed(error: BaseException) -> None:
            session._dirty = True  # what the lost row held is still pending

        try:
            background.submit(lambda: writer.persist(snapshot), lambda row: self._published(session, row), cleanup, failed)
        except BaseException:
            self._release_writer()  # the previous persist failed; this snapshot is not written
            raise

    def _published(self, session: CheckpointSession, row: Row) -> None:
        entry = _entry_from_row(row)
        self._rows[entry.commit_id] = row
        session._committed(entry, row)

    def _snapshot(self, session: CheckpointSession, metadata: dict[str, Any], copy: Any = False) -> Snapshot:
        """Encode metadata and bound states (the caller-thread half of a commit)."""
        values: list[tuple[Any, str]] = [(metadata, "metadata"), (dict(session.labels), "labels")]
        records = []
        if self.level >= 1:
            for sid, proxy in session.bound_states.items():
                instance = unwrap(proxy)
                values.append((instance, "state"))
                records.append({"id": sid, "schema": codec.schema_hash(type(instance)), "level": self.level})
        try:
            encoded = codec.encode([value for value, _ in values], root="values", copy=copy, int_keys=self._int_keys)
        except CheckpointSerializationError:
            # Re-encode one by one only to name the culprit with its own root.
            for index, (value, root) in enumerate(values):
                try:
                    codec.encode(value, root=root, int_keys=self._int_keys)
                except CheckpointSerializationError as exc:
                    if index == 0:
                        raise CheckpointSerializationError(f"Invalid checkpoint metadata {_metadata_key(exc.path)!r}: {exc}", path=exc.path) from None
                    if index == 1:
                        raise CheckpointSerializationError(f"Invalid checkpoint label: {exc}", path=exc.path) from None
                    raise CheckpointSerializationError(f"{exc} of bound state {records[index - 2]['id']}", path=exc.path) from None
            raise
        metadata_doc, labels_doc, *state_docs = encoded.document
        _refuse_metadata_dataclasses(metadata_doc)
        for record, doc in zip(records, state_docs):
            record["value"] = doc
        body = {
            "checkpoint": self.name,
            "rank": self.rank,
            "world_size": self.world_size,
            "level": self.level,
            "mode": self.mode,
            "write_count": session.write_count,
            "metadata": metadata_doc,
            "states": records,
        }
        if session.labels:
            body["labels"] = labels_doc
        return Snapshot(body=body, payloads=encoded.payloads)

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


def _display(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, np.timedelta64):
        if np.isnat(value):
            return str(value)
        if value == np.timedelta64(0, "ns"):
            return "0 hours"
        # The largest unit that shows the value whole: "6 hours", "90 minutes".
        for unit in ("D", "h", "m", "s", "ms", "us", "ns"):
            try:
                count = value / np.timedelta64(1, unit)
            except TypeError:
                continue
            if np.isfinite(count) and count == int(count):
                return str(np.timedelta64(int(count), unit)) if unit != "D" else f"{int(count)} days"
        return str(value)
    text = str(value)
    return text if len(text) <= 32 else text[:29] + "..."


def entries_table(entries: tuple[CheckpointEntry, ...] | list[CheckpointEntry]) -> list[list[str]]:
    """Rows of the catalog table shown by ``print(checkpoint)`` and ``restartable ls``."""
    # Mappings (a workflow's identity) do not fit a table cell; `restartable show`
    # prints them. Sequences do, shortened (earth2studio's completed_ensembles).
    keys = sorted(
        {
            key
            for entry in entries
            for key, value in entry.metadata.items()
            if key != "lead_time" and not isinstance(value, dict)
        }
    )
    header = ["row", "sequence", "lead_time", *keys, "write_count", "states", "saved_at"]
    table = [header]
    for index, entry in enumerate(entries):
        table.append(
            [
                str(index),
                str(entry.sequence),
                _display(entry.lead_time),
                *(_display(entry.metadata.get(key)) for key in keys),
                str(entry.write_count),
                str(len(entry.state_ids)),
                entry.saved_at[:19].replace("T", " "),
            ]
        )
    return table


def format_table(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table)


class CheckpointSession:
    """One row of a catalog being restored from and/or written to.

    Obtained from ``with checkpoint as session`` or ``checkpoint.select(row)``.
    Entering it makes it the active session (bound states restore from it)
    and takes the writer lock of the rank directory.
    """

    def __init__(
        self,
        catalog: Checkpoint,
        entry: CheckpointEntry | None = None,
        row: Row | None = None,
        payloads: Any = None,
    ) -> None:
        checkpoint = catalog
        if entry is not None and row is None:
            # Built by hand from a catalog entry (earth2studio's signature):
            # read and verify the row now, as select() does.
            opened = checkpoint._open_session(entry)
            row, payloads = opened._row, opened._payloads
        self.checkpoint = checkpoint
        self._entry = entry
        # Free-form labels, kept apart from metadata and recorded with each row.
        self.labels: dict[str, Any] = dict(entry.labels) if entry is not None else {}
        self._row = row
        self._payloads = payloads
        self._aligned = False  # multi-rank: the writer continues after this session's row
        self._restored_fingerprints: dict[str, str] = {}  # what each restored state was, by content
        self._saved_states = {record["id"]: record for record in row.body["states"]} if row is not None else {}
        self.bound_states: dict[str, CheckpointState[Any]] = {}
        self._carried_over: set[str] = set()
        self.write_count = entry.write_count if entry is not None else 0
        self._metadata: dict[str, Any] = dict(entry.metadata) if entry is not None else {}
        self._dirty = False
        self._tokens: list[Any] = []
        self._holds_writer = 0

    # ------------------------------------------------------------------ facts

    @property
    def catalog(self) -> Checkpoint:
        """The owning :class:`Checkpoint` (earth2studio's name for it)."""
        return self.checkpoint

    @property
    def exists(self) -> bool:
        """Whether the session stands for a committed row."""
        return self._entry is not None

    @property
    def entry(self) -> CheckpointEntry | None:
        """The committed row this session stands for (latest commit or selection)."""
        return self._entry

    @property
    def commit_id(self) -> str | None:
        return None if self._entry is None else self._entry.commit_id

    @property
    def is_active(self) -> bool:
        return ACTIVE_SESSION.get() is self

    @property
    def level(self) -> int:
        return self.checkpoint.level

    @property
    def device(self) -> Any:
        return self.checkpoint.device

    @property
    def lead_time(self) -> Any:
        """``lead_time`` of the committed row, or ``None``."""
        return None if self._entry is None else self._entry.lead_time

    @property
    def metadata(self) -> dict[str, Any]:
        """Metadata of the committed row (a copy)."""
        return {} if self._entry is None else dict(self._entry.metadata)

    @property
    def artifacts(self) -> dict[str, Any]:
        """earth2studio's older name for :attr:`metadata`."""
        return self.metadata

    def metadata_value(self, key: str) -> Any:
        """One metadata value of the committed row; ``KeyError`` if absent."""
        metadata = self.metadata
        if key not in metadata:
            raise KeyError(f"Metadata {key!r} not found in checkpoint session (row {self.commit_id})")
        return metadata[key]

    def artifact(self, key: str) -> Any:
        """earth2studio's older name for :meth:`metadata_value`."""
        return self.metadata_value(key)

    # ------------------------------------------------------------------ state

    def bind(self, state: Any) -> CheckpointState[Any]:
        """Bind a dataclass (or proxy) to this session, restoring it from the row."""
        self.checkpoint._settle()
        proxy = state if isinstance(state, CheckpointState) else CheckpointState(state)
        instance = proxy.checkpoint_dataclass
        sid = state_id(instance)
        existing = self.bound_states.get(sid)
        if existing is not None:
            if existing.checkpoint_dataclass is instance:
                return existing
            if sid in self._carried_over:
                # A component of a previous session was re-adopted, and now a
                # new instance of it binds: the new one takes its place.
                self._carried_over.discard(sid)
                existing._bind(None)
            else:
                raise CheckpointStateCollision(
                    f"{sid} is already bound in this checkpoint session; bind distinct dataclass types "
                    "for distinct components"
                )
        loaded = self._restore(sid, instance)
        proxy._bind(self.checkpoint, self, loaded)
        self.bound_states[sid] = proxy
        return proxy

    def _restore(self, sid: str, instance: Any) -> bool:
        record = self._saved_states.get(sid)
        if record is None or self.checkpoint.level == 0:
            return False
        expected = codec.schema_hash(type(instance))
        # A state migrated from earth2studio has no comparable schema hash
        # (None); the codec then checks its field names.
        if record.get("schema") is not None and record.get("schema") != expected:
            raise CheckpointStateSchemaError(
                f"saved state {sid} in row {self.commit_id} was written for a different definition of the "
                f"dataclass (schema {record.get('schema')}, now {expected}): its fields or their types changed. "
                "Start a new checkpoint, or restore the old definition."
            )
        codec.decode(
            record["value"],
            self._payloads,
            root="state",
            device=self.checkpoint._device,
            into=instance,
            nested_dataclasses=self.checkpoint._nested_dataclasses,
        )
        self._restored_fingerprints[sid] = _fingerprint(record, self._row)
        return True

    def _adopt_pending(self) -> None:
        late = []
        for item in take_pending(self.checkpoint):
            proxy = self.bind(item.state)
            if item.reusable:
                self._carried_over.add(state_id(proxy))
            elif proxy.checkpoint_state_loaded:
                late.append(state_id(proxy))
        if late:
            warnings.warn(
                f"checkpoint state {', '.join(late)} was bound before an existing checkpoint session "
                f"(row {self.commit_id}) was active and has been restored late; constructor side effects that "
                "used the default state are not replayed. Construct restart-aware components inside "
                "`with checkpoint:`.",
                CheckpointLateBindWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ writing

    def write(self, **metadata: Any) -> CheckpointEntry | None:
        """Record a safe restart boundary; commit when ``flush_interval`` writes have accumulated.

        Keyword metadata (for example ``lead_time=...``) is merged into the
        metadata of the previous row. Returns the committed entry, or
        ``None`` when the commit is deferred.
        """
        if self.checkpoint._background is not None:
            self.checkpoint._background.poll()  # a failure already known is raised now
        before = (self.write_count, dict(self._metadata), self._dirty)
        self.write_count += 1
        self._metadata.update(self._normalize(metadata))
        self._dirty = True
        interval = self.checkpoint.flush_interval
        if interval is not None and self.write_count % interval == 0:
            try:
                return self.flush(wait=False)
            except BaseException:
                # A failed boundary is not recorded: a retry starts clean.
                self.write_count, self._metadata, self._dirty = before
                raise
        return None

    def flush(self, wait: bool = True, **metadata: Any) -> CheckpointEntry | None:
        """Commit the pending writes (and ``metadata``) now.

        Returns the committed entry, or ``None`` when nothing is pending.
        With ``async_commit``, ``wait=False`` returns ``None`` as soon as the
        snapshot is taken; ``wait=True`` returns once the row is durable.
        """
        if wait or not (self._dirty or metadata):
            self.checkpoint._settle()  # else the commit below overlaps its snapshot with the persist in flight
        if not (self._dirty or metadata):
            return None
        if not self._dirty and self._entry is not None and self._unchanged(metadata):
            return None  # the committed row already says exactly this
        return self._commit_now(metadata, pin=False, wait=wait)

    def _unchanged(self, metadata: dict[str, Any]) -> bool:
        committed = self._entry.metadata if self._entry is not None else {}
        try:
            # Committed values decode to the types they were written with, so
            # a value of another type is a change. Comparing across types
            # would also make numpy cast an int to a unit-less timedelta64,
            # which it deprecates.
            return all(
                key in committed and type(committed[key]) is type(value) and bool(committed[key] == value)
                for key, value in self._normalize(metadata).items()
            )
        except (TypeError, ValueError):  # values such as arrays have no single truth value
            return False

    def pin(self, **metadata: Any) -> CheckpointEntry:
        """Commit now, and keep this row until a newer row is pinned.

        A restart point for work that must be rerun from its start if it is
        interrupted (the ensemble workflow pins the start of each member
        batch): the row survives ``mode="overwrite"`` and ``history_size``
        until the next pin, so :meth:`rewind` can return to it.

        A pin starts new work: bound states that changed since they were
        restored are no longer ``checkpoint_state_loaded``, so a component
        starting a new rollout (earth2studio's ``Persistence`` at the next
        member batch) does not continue the old one, while a state still as
        restored (earth2studio's ``Gaussian`` before its first draw) keeps
        the flag and is still read back.
        """
        entry = self._commit_now(metadata, pin=True, wait=True)
        if self._row is not None:
            for sid, proxy in self.bound_states.items():
                if proxy.checkpoint_state_loaded and self._restored_fingerprints.get(sid) != _fingerprint(
                    self._saved_states.get(sid), self._row
                ):
                    object.__setattr__(proxy, "_state_loaded", False)
        return entry

    def start_fresh(self, component: Any) -> None:
        """Let ``component`` start new work instead of continuing the row's.

        Its bound states (found among its attributes) keep their values but
        are no longer ``checkpoint_state_loaded``, so a model starts a new
        rollout rather than resuming the one the row recorded. The ensemble
        workflow calls this for the model at the start of each member batch.
        """
        for proxy in states_of(component):
            if proxy._session is self:
                proxy._bind(self.checkpoint, self, False)

    def rewind(self, commit_id: str) -> None:
        """Restore every bound state from row ``commit_id`` of this catalog.

        The states are updated in place, so components holding them see the
        values they had at that row. Metadata and ``write_count`` stay those
        of the current row.

        Raises
        ------
        KeyError
            No whole row has that id.
        CheckpointCorruptError
            The row is damaged.
        """
        self.checkpoint.refresh()
        entry = next((e for e in self.checkpoint._entries if e.commit_id == commit_id), None)
        if entry is None:
            raise KeyError(f"checkpoint {self.checkpoint.name!r} has no whole row {commit_id!r} in {self.checkpoint.rank_path}")
        source = self.checkpoint._open_session(entry)
        for sid, proxy in self.bound_states.items():
            loaded = source._restore(sid, proxy.checkpoint_dataclass)
            if loaded:
                self._restored_fingerprints[sid] = source._restored_fingerprints[sid]
            object.__setattr__(proxy, "_state_loaded", loaded or proxy.checkpoint_state_loaded)

    def _commit_now(self, metadata: dict[str, Any], pin: bool, wait: bool) -> CheckpointEntry | None:
        pending = {**self._metadata, **self._normalize(metadata)}
        self.checkpoint._commit(self, pending, pin=pin)
        self._metadata = pending
        self._dirty = False
        if not wait and self.checkpoint.async_commit:
            return None
        self.checkpoint._settle()
        return self._entry

    def _committed(self, entry: CheckpointEntry, row: Row) -> None:
        # The session now stands for the new row: a component that binds
        # from here on restores what was just committed, read back verified.
        self._entry, self._row, self._payloads = entry, row, row.read_payload
        self._saved_states = {record["id"]: record for record in row.body["states"]}

    @staticmethod
    def _normalize(metadata: dict[str, Any]) -> dict[str, Any]:
        # One-element arrays and tensors (a workflow's coords["lead_time"])
        # are recorded as their element, as earth2studio does.
        return {key: _normalize_value(value) for key, value in metadata.items()}

    # ------------------------------------------------------------------ context

    def __enter__(self) -> CheckpointSession:
        self.checkpoint._acquire_writer()
        self._holds_writer += 1
        self._tokens.append(ACTIVE_SESSION.set(self))
        try:
            if self.checkpoint.multi_rank and not self._aligned:
                # Rows this rank wrote beyond the agreed one are retired and
                # the next row is numbered after it, as on every other rank.
                self.checkpoint._restart_writer(self)
                self._aligned = True
            self._adopt_pending()
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.checkpoint._settle()  # the row in flight is durable before the lock goes
        finally:
            self._leave()

    def _leave(self) -> None:
        if self._tokens:
            ACTIVE_SESSION.reset(self._tokens.pop())
        if not self._tokens:
            # Components outlive the session; let the next one adopt them.
            for proxy in self.bound_states.values():
                proxy._bind(self.checkpoint)
                buffer_pending(self.checkpoint, proxy, reusable=True)
            self.bound_states = {}
        if self._holds_writer:
            self._holds_writer -= 1
            self.checkpoint._release_writer()

    def __bool__(self) -> bool:
        return self.exists

    def __repr__(self) -> str:
        return f"CheckpointSession({self.checkpoint.name!r}, row={self.commit_id!r}, write_count={self.write_count})"


class NullCheckpoint:
    """A no-op session used by workflows when no checkpoint is given."""

    exists = False
    lead_time = None
    commit_id = None
    level = 0
    checkpoint = None

    @property
    def catalog(self) -> NullCheckpoint:
        """Itself: workflows read ``session.catalog.level``."""
        return self

    @property
    def write_count(self) -> int:
        return 0

    @write_count.setter
    def write_count(self, value: int) -> None:
        pass  # nothing is counted

    @property
    def device(self) -> Any:
        return resolve_device("cpu")

    checkpoint_device = device

    @property
    def metadata(self) -> dict[str, Any]:
        return {}

    labels = metadata

    @property
    def is_active(self) -> bool:
        return False

    def metadata_value(self, key: str) -> Any:
        raise KeyError(key)

    def write(self, **metadata: Any) -> None:
        return None

    def flush(self, wait: bool = True, **metadata: Any) -> None:
        return None

    def pin(self, **metadata: Any) -> None:
        return None

    def start_fresh(self, component: Any) -> None:
        return None

    def __enter__(self) -> NullCheckpoint:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NullCheckpoint()"
