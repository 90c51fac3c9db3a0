"""Where iterator states are kept: the handler protocol and restartable's engine as the default.

:class:`~restartable.iterators.IteratorCheckpoint` validates its arguments,
gets the state from the iterator (or puts it back) and leaves the storage to
a *handler*. Any object with these methods can be one:

``save(directory, state, *, step, keep, overwrite, metadata) -> str``
    Store ``state`` (the value ``get_state()`` returned) as ``step``; return
    where it is. ``keep`` (an int >= 1, or ``None`` for all) is how many
    steps to keep, counting the new one: the oldest steps beyond it are
    deleted, but only once the new step is durable. ``overwrite=False``
    with an existing ``step`` must raise ``ValueError``. ``metadata`` is a
    dict of str to int/str/float/bool.
``restore(directory, step=None) -> state``
    The state saved as ``step``; ``None`` means the latest step that can be
    read. Raise ``ValueError`` when there is nothing to restore or no such
    step.
``list_checkpoints(directory) -> dict[int, str]``
    Every step that can be restored, mapped to where it is.

and, optionally:

``read_metadata(directory, step=None) -> dict``
    The metadata saved with a step (for ``IteratorCheckpoint.get_metadata``).
``wait_until_finished()``
    Block until an asynchronous save is durable; raise its failure.
``close()``
    Wait as above and release resources.

``directory`` is the ``base_dir`` given to ``IteratorCheckpoint``: a
:class:`pathlib.Path`, or the URL string as given when it has a scheme
(``s3://...``).

The default, :class:`EngineHandler`, makes every save a row of restartable's
storage engine in ``directory`` (the rank directory, or the rank prefix of
an object store): the same commit protocol, checksums, lock (a lease on an
object store) and verification as the catalog front end, and the same
layout, so ``restartable ls`` / ``verify`` / ``show`` / ``push`` / ``pull``
work on it.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .. import codec
from ..errors import CheckpointCleanupWarning, CheckpointCorruptError, CheckpointFallbackWarning
from ..store import Row, RowStore, RowWriter, Snapshot, open_row, open_store
from ..store._layout import is_url
from ..store.background import BackgroundPersist, HostBufferPool

__all__ = ["EngineHandler", "IteratorCheckpointHandler", "is_url"]

# Marks rows written by the iterator front end, and names its state record.
FRONT_END = "iterator"
STATE_ID = "iterator"
_READ_ATTEMPTS = 5


@runtime_checkable
class IteratorCheckpointHandler(Protocol):
    """The storage side of :class:`~restartable.iterators.IteratorCheckpoint` (see the module docs)."""

    def save(
        self,
        directory: Any,
        state: Any,
        *,
        step: int,
        keep: int | None,
        overwrite: bool,
        metadata: dict[str, int | str | float | bool],
    ) -> str: ...

    def restore(self, directory: Any, step: int | None = None) -> Any: ...

    def list_checkpoints(self, directory: Any) -> dict[int, str]: ...


@dataclass(frozen=True)
class _Saved:
    step: int
    sequence: int
    name: str
    path: Any  # Path, or UrlPath on an object store


class _Retired(Exception):
    """The row vanished while being read: retired by its writer, not damaged."""


class EngineHandler:
    """Iterator states as rows of restartable's storage engine (the default handler).

    Each save is one row of ``directory`` (``commits/<sequence>-<uuid>/``):
    the state is encoded pickle-free by :mod:`restartable.codec` (arrays
    and tensors become checksummed ``.npy`` payloads), the step is recorded
    in the manifest, and the row is published by rename after every file is
    fsynced. The writer lock is taken for each save (and held until the
    save is durable), so two processes never write one directory at once,
    and no lock stays held between saves.

    Retention is by step: after the new row is durable, the rows of the
    step it replaces (``overwrite=True``) and the rows beyond the ``keep``
    newest steps, counting the new one, are retired (rows whose manifest is
    damaged go first). A save that fails retires nothing.

    Reading trusts nothing: rows whose manifest or file sizes are wrong are
    skipped with a :class:`CheckpointFallbackWarning`; a restore reads every
    payload and checks its checksum before the state is decoded.

    Parameters
    ----------
    async_checkpointing:
        Persist on a background thread (:class:`BackgroundPersist`): ``save``
        returns once the state is encoded and its arrays copied into reused
        host buffers. One save is in flight at a time; the next call waits
        for it, and raises its failure as :class:`CheckpointWriteError`.
    durable:
        fsync every file and directory (turn off only for throw-away data).
    storage_options:
        fsspec options for directories that are URLs (credentials, endpoint);
        by default the usual configuration (``AWS_*``, ``~/.aws``).
    """

    def __init__(
        self, async_checkpointing: bool = False, *, durable: bool = True, storage_options: dict[str, Any] | None = None
    ) -> None:
        self.async_checkpointing = bool(async_checkpointing)
        self.durable = bool(durable)
        self.storage_options = storage_options
        self._sources: dict[str, RowStore] = {}
        self._background = BackgroundPersist("iterator checkpoint") if self.async_checkpointing else None
        self._buffers = HostBufferPool()
        # Row directory name -> step (None: not an iterator row). Rows are
        # immutable and their names unique, so this never goes stale; it
        # keeps the cost of a save from growing with the number of rows.
        self._steps: dict[str, int | None] = {}
        self._damaged: set[str] = set()
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def _rows(self, directory: Any) -> RowStore:
        key = str(directory)
        store = self._sources.get(key)
        if store is None:
            store = open_store(directory, self.storage_options, durable=self.durable)
            self._sources[key] = store
        return store

    def _settle(self) -> None:
        if self._background is not None:
            self._background.wait()

    def _warn_damaged(self, directory: Any, name: str, reason: str) -> None:
        if name in self._warned:
            return
        self._warned.add(name)
        warnings.warn(
            f"skipping damaged iterator checkpoint row {name} of {directory}: {reason}",
            CheckpointFallbackWarning,
            stacklevel=5,
        )

    def _index(self, directory: RowStore, warn: bool) -> tuple[list[_Saved], list[Any]]:
        """Iterator rows by (step, sequence), oldest first; damaged rows newest first."""
        saved: list[_Saved] = []
        damaged: list[Any] = []
        listed = directory.list_rows()
        names = {name for _, name in listed}
        self._steps = {name: step for name, step in self._steps.items() if name in names}
        for sequence, name in listed:
            path = directory.row_path(name)
            if name in self._damaged:
                damaged.append(path)
                continue
            if name in self._steps:
                step = self._steps[name]
            else:
                try:
                    row = open_row(directory, name, sequence)
                except CheckpointCorruptError as exc:
                    if not directory.row_exists(name):
                        continue  # retired while we read it: not damage
                    damaged.append(path)
                    if warn:
                        self._warn_damaged(directory, name, str(exc))
                    continue
                step = _step_of(row)
                self._steps[name] = step
            if step is not None:
                saved.append(_Saved(step, sequence, name, path))
        saved.sort(key=lambda s: (s.step, s.sequence))
        damaged.reverse()
        return saved, damaged

    @staticmethod
    def _newest_per_step(saved: list[_Saved]) -> dict[int, _Saved]:
        by_step: dict[int, _Saved] = {}
        for entry in saved:  # sorted by (step, sequence): the newest row of a step wins
            by_step[entry.step] = entry
        return by_step

    # ------------------------------------------------------------------ protocol

    def save(
        self,
        directory: Any,
        state: Any,
        *,
        step: int,
        keep: int | None,
        overwrite: bool,
        metadata: dict[str, int | str | float | bool],
    ) -> str:
        """Commit ``state`` as ``step``; return the row directory (published once durable)."""
        directory = self._rows(directory)
        self._settle()
        background = self._background
        buffers = self._buffers.take() if background is not None else None
        encoded = codec.encode(state, root="state", copy=buffers or False)

        def release() -> None:
            # Only copies taken from the pool go back to it, never the caller's arrays.
            if buffers is not None:
                buffers.release()

        try:
            metadata_doc = codec.encode(dict(metadata), root="metadata").document
            writer = RowWriter(directory, keep=None)
        except BaseException:
            release()
            raise
        try:
            saved, damaged = self._index(directory, warn=False)
            replaced = [entry.path for entry in saved if entry.step == step]
            if replaced and not overwrite:
                raise ValueError(
                    f"step {step} is already saved in {directory} ({replaced[-1].name}); "
                    "pass overwrite=True to replace it"
                )
            # Newest steps first, damaged rows last: the tail falls out of `keep`.
            others = [entry.path for entry in reversed(saved) if entry.step != step] + damaged
            retire = replaced + (others[keep - 1 :] if keep is not None else [])
            body = {
                "checkpoint": directory.location.rstrip("/").rsplit("/", 1)[-1],
                "front_end": FRONT_END,
                "rank": 0,
                "world_size": 1,
                "level": 1,
                "mode": "steps",
                "write_count": 0,
                "step": step,
                "metadata": metadata_doc,
                "states": [{"id": STATE_ID, "schema": "", "level": 1, "value": encoded.document}],
            }
            snapshot = Snapshot(body=body, payloads=encoded.payloads)
            uid = uuid.uuid4().hex
            path = writer.row_path(uid)
        except BaseException:
            writer.close()
            release()
            raise

        def job() -> tuple[Row, list[tuple[Any, OSError]]]:
            row = writer.persist(snapshot, uid=uid)
            # Only now, with the new row durable, may older rows go.
            return row, writer.retire(retire)

        def done(result: tuple[Row, list[tuple[Any, OSError]]]) -> None:
            row, failures = result
            self._steps[row.name] = step
            for failed, exc in failures:
                warnings.warn(
                    f"could not retire old iterator checkpoint row {failed}: {exc}",
                    CheckpointCleanupWarning,
                    stacklevel=4,
                )

        if background is None:
            try:
                result = job()
            finally:
                writer.close()
            done(result)
            return str(result[0].path)

        def cleanup() -> None:
            release()
            writer.close()

        background.name = str(directory)
        background.submit(job, done, cleanup)
        return str(path)

    def restore(self, directory: Any, step: int | None = None) -> Any:
        """The state of ``step`` (``None``: the newest whole step, falling back past damaged ones)."""
        directory = self._rows(directory)
        self._settle()
        for _attempt in range(_READ_ATTEMPTS):
            candidates = self._candidates(directory, step)
            for index, entry in enumerate(candidates):
                try:
                    return self._load_state(directory, entry)
                except _Retired:
                    break  # a writer retired it meanwhile; read the listing again
                except CheckpointCorruptError as exc:
                    self._damaged.add(entry.name)
                    if step is not None:
                        raise
                    following = candidates[index + 1] if index + 1 < len(candidates) else None
                    target = f"step {following.step}" if following is not None else "nothing: no whole step is left"
                    warnings.warn(
                        f"iterator checkpoint step {entry.step} ({entry.name}) of {directory} is damaged ({exc}); "
                        f"falling back to {target}",
                        CheckpointFallbackWarning,
                        stacklevel=4,
                    )
            else:
                raise CheckpointCorruptError(
                    f"no whole iterator checkpoint is left in {directory}: every saved step is damaged"
                )
        raise CheckpointCorruptError(f"the rows of {directory} kept being retired while reading them; try again")

    def read_metadata(self, directory: Any, step: int | None = None) -> dict[str, Any]:
        """The metadata saved with ``step`` (``None``: the newest step)."""
        directory = self._rows(directory)
        self._settle()
        for _attempt in range(_READ_ATTEMPTS):
            entry = self._candidates(directory, step)[0]
            try:
                row = self._open(directory, entry)
            except _Retired:
                continue
            try:
                metadata: dict[str, Any] = codec.decode(row.body["metadata"], row.read_payload, root="metadata")
                return metadata
            except (KeyError, TypeError) as exc:
                raise CheckpointCorruptError(f"{row.path} lacks valid metadata ({exc!r})", row=str(row.path)) from exc
        raise CheckpointCorruptError(f"the rows of {directory} kept being retired while reading them; try again")

    def list_checkpoints(self, directory: Any) -> dict[int, str]:
        """Steps whose row is whole (manifest and file sizes checked), ascending, mapped to the row directory."""
        directory = self._rows(directory)
        self._settle()
        saved, _ = self._index(directory, warn=True)
        return {step: str(entry.path) for step, entry in self._newest_per_step(saved).items()}

    def wait_until_finished(self) -> None:
        """Block until the save in flight is durable; raise its failure as :class:`CheckpointWriteError`."""
        self._settle()

    def close(self) -> None:
        """Wait for the save in flight (raising its failure) and drop the reusable host buffers."""
        try:
            self._settle()
        finally:
            self._buffers.clear()

    # ------------------------------------------------------------------ reading

    def _candidates(self, directory: RowStore, step: int | None) -> list[_Saved]:
        saved, damaged = self._index(directory, warn=True)
        note = f" ({len(damaged)} damaged row(s) skipped)" if damaged else ""
        if not saved:
            raise ValueError(f"no iterator checkpoint to restore in {directory}{note}")
        if step is None:
            return list(reversed(saved))  # newest step first, then older rows
        by_step = self._newest_per_step(saved)
        if step not in by_step:
            steps = ", ".join(str(s) for s in by_step)
            raise ValueError(f"no iterator checkpoint for step {step} in {directory}; saved steps: {steps}{note}")
        return [by_step[step]]

    def _open(self, directory: RowStore, entry: _Saved) -> Row:
        try:
            return open_row(directory, entry.name, entry.sequence)
        except CheckpointCorruptError as exc:
            if not directory.row_exists(entry.name):
                raise _Retired(entry.name) from exc
            raise

    def _load_state(self, directory: RowStore, entry: _Saved) -> Any:
        row = self._open(directory, entry)  # the manifest is read again: it may have been damaged since it was listed
        states = row.body.get("states")
        records = states if isinstance(states, list) else []
        record = next((r for r in records if isinstance(r, dict) and r.get("id") == STATE_ID), None)
        if record is None or "value" not in record:
            raise CheckpointCorruptError(f"{row.path / 'manifest.json'} holds no iterator state", row=str(row.path))
        try:
            loader = row.load_all_payloads()  # every payload read and its checksum checked
        except CheckpointCorruptError as exc:
            if not row.exists():
                raise _Retired(entry.name) from exc
            raise
        return codec.decode(record["value"], loader, root="state")


def _step_of(row: Row) -> int | None:
    body = row.body
    step = body.get("step")
    if body.get("front_end") != FRONT_END or type(step) is not int:
        return None
    return step
