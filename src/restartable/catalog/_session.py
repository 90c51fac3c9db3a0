"""One row of a catalog being restored from and/or written to: :class:`CheckpointSession`.

The session holds the bound states and the pending metadata; the
:class:`~restartable.catalog.Checkpoint` that owns it reads rows, holds the
writer and commits. Between the two runs a small internal interface:
the checkpoint's methods documented "for CheckpointSession", and the
session's documented "for Checkpoint".
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .. import codec
from ..errors import CheckpointLateBindWarning, CheckpointStateCollision, CheckpointStateSchemaError
from ..state import ACTIVE_SESSION, CheckpointState, buffer_pending, state_id, states_of, take_pending
from ._entries import CheckpointEntry, fingerprint, normalize_metadata

if TYPE_CHECKING:
    from ..store import Row
    from ._checkpoint import Checkpoint


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
            row, payloads = checkpoint._load_row(entry)
        self.checkpoint = checkpoint
        self._entry = entry
        # Free-form labels, kept apart from metadata and recorded with each row.
        self.labels: dict[str, Any] = dict(entry.labels) if entry is not None else {}
        self._row = row
        self._payloads = payloads
        self._aligned = False  # multi-rank: the writer continues after this session's row
        self._restored_fingerprints: dict[str, str | None] = {}  # what each restored state was, by content
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
        self.checkpoint._decode_state(record["value"], self._payloads, into=instance)
        self._restored_fingerprints[sid] = fingerprint(record, self._row)
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

        Metadata values come back from the catalog as they were given (type,
        dtype, shape), except ``lead_time``: a one-element array or tensor
        there is recorded as its element. A value that cannot be kept so
        raises :class:`CheckpointSerializationError` naming its key: an
        array of dtype ``object`` at once, any other unsupported value when
        the row is committed (here, unless the commit is deferred). Nothing
        is committed then, and a write that raises is not counted.

        >>> import tempfile
        >>> import numpy as np
        >>> from restartable import Checkpoint
        >>> with Checkpoint("doc", path=tempfile.mkdtemp()) as session:
        ...     entry = session.write(lead_time=np.array([6]), step=np.array([3]))
        >>> entry.lead_time, entry.metadata["step"]
        (np.int64(6), array([3]))
        """
        self.checkpoint._poll_background()  # a failure already known is raised now
        normalized = self._normalize(metadata)  # before anything changes: a refused write is not counted
        before = (self.write_count, dict(self._metadata), self._dirty)
        self.write_count += 1
        self._metadata.update(normalized)
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
        assert entry is not None  # wait=True: the row is committed
        if self._row is not None:
            for sid, proxy in self.bound_states.items():
                if proxy.checkpoint_state_loaded and self._restored_fingerprints.get(sid) != fingerprint(
                    self._saved_states.get(sid), self._row
                ):
                    proxy._set_loaded(False)
        return entry

    def start_fresh(self, component: Any) -> None:
        """Let ``component`` start new work instead of continuing the row's.

        Its bound states (found among its attributes) keep their values but
        are no longer ``checkpoint_state_loaded``, so a model starts a new
        rollout rather than resuming the one the row recorded. The ensemble
        workflow calls this for the model at the start of each member batch.
        """
        for proxy in states_of(component):
            if proxy._is_bound_to(self):
                proxy._set_loaded(False)

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
        entry = self.checkpoint._whole_row(commit_id)
        if entry is None:
            raise KeyError(
                f"checkpoint {self.checkpoint.name!r} has no whole row {commit_id!r} in {self.checkpoint.rank_path}"
            )
        source = CheckpointSession(self.checkpoint, entry)  # reads and verifies the row
        for sid, proxy in self.bound_states.items():
            loaded = source._restore(sid, proxy.checkpoint_dataclass)
            if loaded:
                self._restored_fingerprints[sid] = source._restored_fingerprints[sid]
            proxy._set_loaded(loaded or proxy.checkpoint_state_loaded)

    def _commit_now(self, metadata: dict[str, Any], pin: bool, wait: bool) -> CheckpointEntry | None:
        pending = {**self._metadata, **self._normalize(metadata)}
        self.checkpoint._commit(self, pending, pin=pin)
        self._metadata = pending
        self._dirty = False
        if not wait and self.checkpoint.async_commit:
            return None
        self.checkpoint._settle()
        return self._entry

    def _normalize(self, metadata: dict[str, Any]) -> dict[str, Any]:
        # lead_time given as a one-element array or tensor (a workflow's
        # coords["lead_time"]) is recorded as its element; the bridge does so
        # for every key, as earth2studio does.
        return normalize_metadata(metadata, every_key=self.checkpoint._unwrap_one_element_metadata)

    # ------------------------------------------------------------------ for Checkpoint

    def _committed(self, entry: CheckpointEntry, row: Row) -> None:
        """For Checkpoint: the row committed for this session is durable (``row``, read back verified)."""
        # The session now stands for the new row: a component that binds
        # from here on restores what was just committed.
        self._entry, self._row, self._payloads = entry, row, row.read_payload
        self._saved_states = {record["id"]: record for record in row.body["states"]}

    def _commit_lost(self) -> None:
        """For Checkpoint: a background persist of this session failed; what its row held is pending again."""
        self._dirty = True

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
