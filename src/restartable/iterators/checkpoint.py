"""The datarax-style front end: :class:`IteratorCheckpoint` and :class:`PipelineCheckpoint`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .handler import EngineHandler, IteratorCheckpointHandler, is_url
from .protocol import CheckpointableIterator, state_getter, state_setter

__all__ = ["IteratorCheckpoint", "PipelineCheckpoint"]

T_co = TypeVar("T_co", covariant=True)
MetadataValue = int | str | float | bool


def _step(value: Any, name: str = "step") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _keep(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        # keep=0 would delete every step, the new one included.
        raise ValueError(f"keep must be a positive integer (or None to keep every step), got {value!r}")
    return int(value)


def _metadata(metadata: Any) -> dict[str, MetadataValue]:
    """Metadata as a plain dict of str to int/str/float/bool (numpy scalars of those kinds converted)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"metadata must be a dict of str to int, str, float or bool, got {type(metadata).__qualname__}"
        )
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be str, got {key!r}")
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[key] = float(value)
        elif isinstance(value, str):
            out[key] = str(value)
        else:
            raise ValueError(
                f"metadata[{key!r}] is a {type(value).__qualname__}; metadata values must be int, str, float or bool"
            )
    return out


class IteratorCheckpoint:
    """Save and restore the state of iterators by step (datarax's ``IteratorCheckpoint``).

    Parameters
    ----------
    base_dir:
        Directory of the checkpoints (created on the first save). With the
        default handler it is one rank directory of restartable's engine:
        each save is a row under ``base_dir/commits/``. Give each rank of a
        distributed job its own ``base_dir``. A URL (``s3://bucket/run/it``,
        any fsspec URL) puts the rows on an object store, with the same
        protocol as a catalog there: payloads first, the manifest last, a
        writer lease.
    handler:
        The storage: any object implementing the small protocol described in
        :mod:`restartable.iterators.handler` (``save``, ``restore``,
        ``list_checkpoints``; optionally ``read_metadata``,
        ``wait_until_finished``, ``close``). Default: an
        :class:`~restartable.iterators.EngineHandler`, restartable's engine.
    async_checkpointing:
        With the default handler, persist in a background thread: saves
        return once the state is encoded and copied, one save is in flight
        at a time, :meth:`wait_until_finished` (and every other call, and
        :meth:`close`) waits for it, and a background failure is raised as
        :class:`~restartable.CheckpointWriteError` at that next call. Ignored
        when a ``handler`` is given (configure the handler instead).
    storage_options:
        fsspec options for a ``base_dir`` that is a URL (credentials,
        endpoint). Ignored when a ``handler`` is given.

    Iterators are objects with ``get_state()``/``set_state(state)``
    (:class:`CheckpointableIterator`), or with torch's
    ``state_dict()``/``load_state_dict()``, used through
    :class:`~restartable.iterators.StateDictAdapter` without a wrapper. The
    state is stored without pickle (see :mod:`restartable.codec` for the
    values allowed).

    Example
    -------
    >>> import tempfile, numpy as np
    >>> from restartable.iterators import IteratorCheckpoint, ShuffledArrayIterator
    >>> it = ShuffledArrayIterator(np.arange(100), batch_size=8, seed=1)
    >>> ckpt = IteratorCheckpoint(tempfile.mkdtemp())
    >>> _ = next(it)
    >>> _ = ckpt.save_to_directory(it)               # step 0
    >>> expected = next(it)
    >>> fresh = ckpt.restore_latest(ShuffledArrayIterator(np.arange(100), batch_size=8, seed=1))
    >>> bool((next(fresh) == expected).all()), ckpt.get_latest_step()
    (True, 0)
    """

    def __init__(
        self,
        base_dir: str | Path,
        handler: IteratorCheckpointHandler | None = None,
        async_checkpointing: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        text = os.fspath(base_dir)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        self.base_dir: str | Path = text if is_url(text) else Path(text).expanduser()
        self.async_checkpointing = bool(async_checkpointing)
        self.handler = (
            handler
            if handler is not None
            else EngineHandler(async_checkpointing=self.async_checkpointing, storage_options=storage_options)
        )

    # ------------------------------------------------------------------ saving

    def save_to_directory(
        self,
        iterator: CheckpointableIterator[T_co] | Any,
        step: int | None = None,
        keep: int = 1,
        overwrite: bool = False,
        metadata: dict[str, int | str | float | bool] | None = None,
    ) -> str:
        """Save the state of ``iterator`` as ``step``.

        Parameters
        ----------
        iterator:
            The iterator (or any object with ``get_state`` or ``state_dict``).
        step:
            The step to save as; ``None`` means the step after the latest
            saved one (``0`` when none is).
        keep:
            Number of steps to keep, the new one included (``None``: all).
            Older steps are deleted only after the new one is durable, so a
            failed save never leaves fewer steps than before.
        overwrite:
            Replace ``step`` if it is already saved (the old copy is deleted
            once the new one is durable).
        metadata:
            A dict of str to int, str, float or bool, saved with the step
            (read back with :meth:`get_metadata`).

        Returns
        -------
        str
            The directory of the saved checkpoint (with
            ``async_checkpointing`` it appears once the save is durable).

        Raises
        ------
        ValueError
            The iterator does not implement ``get_state`` (nor
            ``state_dict``); ``step`` is already saved and ``overwrite`` is
            false; ``step``, ``keep`` or ``metadata`` is invalid.
        CheckpointSerializationError
            The state holds a value that cannot be stored without pickle
            (also a ``TypeError``); the message names it.
        CheckpointWriteError
            The save could not be made durable; earlier steps are intact.
        """
        get_state = state_getter(iterator)
        keep_steps = _keep(keep)
        values = _metadata(metadata)
        overwrite = bool(overwrite)
        saved = self.handler.list_checkpoints(self.base_dir)
        if step is None:
            step = max(saved) + 1 if saved else 0
        else:
            step = _step(step)
            if step in saved and not overwrite:
                raise ValueError(
                    f"step {step} is already saved in {self.base_dir} ({saved[step]}); "
                    "pass overwrite=True to replace it"
                )
        state = get_state()
        return self.handler.save(self.base_dir, state, step=step, keep=keep_steps, overwrite=overwrite, metadata=values)

    # ------------------------------------------------------------------ restoring

    def restore(self, iterator: CheckpointableIterator[T_co] | Any, step: int | None = None) -> Any:
        """Restore the state of ``iterator`` from ``step`` and return the iterator.

        ``step=None`` restores the latest step; if its files are damaged, the
        previous step is restored instead, with a
        :class:`~restartable.CheckpointFallbackWarning`.

        Raises
        ------
        ValueError
            The iterator does not implement ``set_state`` (nor
            ``load_state_dict``); nothing is saved; ``step`` is not saved.
        CheckpointCorruptError
            The explicitly requested ``step`` is damaged (also a ``ValueError``).
        """
        set_state = state_setter(iterator)
        if step is not None:
            step = _step(step)
        state = self.handler.restore(self.base_dir, step=step)
        set_state(state)
        return iterator

    def restore_latest(self, iterator: CheckpointableIterator[T_co] | Any) -> Any:
        """Restore from the latest step that can be read (see :meth:`restore`); ``ValueError`` if none is saved."""
        return self.restore(iterator, step=None)

    # ------------------------------------------------------------------ listing

    def get_latest_step(self) -> int | None:
        """The latest saved step, or ``None`` if no step is saved."""
        steps = self.handler.list_checkpoints(self.base_dir)
        return max(steps) if steps else None

    def list_checkpoints(self) -> dict[int, str]:
        """Every saved step mapped to its checkpoint directory, in ascending step order.

        ``list(ckpt.list_checkpoints())`` is the sorted list of steps (as in
        datarax, whose ``list_checkpoints`` returns the same mapping).
        """
        return dict(sorted(self.handler.list_checkpoints(self.base_dir).items()))

    def has_checkpoint(self) -> bool:
        """Whether any step is saved."""
        return bool(self.handler.list_checkpoints(self.base_dir))

    def get_metadata(self, step: int | None = None) -> dict[str, Any]:
        """The metadata saved with ``step`` (``None``: the latest step); ``ValueError`` if it is not saved."""
        read = getattr(self.handler, "read_metadata", None)
        if read is None:
            raise NotImplementedError(
                f"{type(self.handler).__qualname__} cannot read metadata (no read_metadata method)"
            )
        metadata: dict[str, Any] = read(self.base_dir, step=None if step is None else _step(step))
        return metadata

    # ------------------------------------------------------------------ lifetime

    def wait_until_finished(self) -> None:
        """Block until an asynchronous save is durable.

        Raises its failure (:class:`~restartable.CheckpointWriteError`).
        """
        wait = getattr(self.handler, "wait_until_finished", None)
        if wait is not None:
            wait()

    def close(self) -> None:
        """Wait for a save in flight (raising its failure) and release the handler's resources."""
        close = getattr(self.handler, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> IteratorCheckpoint:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.base_dir)!r}, async_checkpointing={self.async_checkpointing})"


class PipelineCheckpoint(IteratorCheckpoint):
    """An :class:`IteratorCheckpoint` that saves a data stream every ``interval`` steps.

    As datarax's ``PipelineCheckpoint``.
    """

    def save_to_step(
        self,
        data_stream: CheckpointableIterator[T_co] | Any,
        step: int,
        interval: int = 1000,
        keep: int = 5,
        overwrite: bool = False,
        metadata: dict[str, int | str | float | bool] | None = None,
    ) -> str | None:
        """Save ``data_stream`` as ``step`` when ``step`` is a multiple of ``interval``.

        Returns the checkpoint directory, or ``None`` when this step is not
        saved. The stream is checked for ``get_state`` (or ``state_dict``)
        at every call, so a stream that cannot be saved fails at once rather
        than at the first due step. Otherwise as :meth:`save_to_directory`.
        """
        if (
            type(step) is int
            and type(interval) is int
            and step >= 0
            and interval >= 1
            and step % interval
            and ((type(keep) is int and keep >= 1) or keep is None)
            and metadata is None
            and (
                callable(getattr(data_stream, "get_state", None)) or callable(getattr(data_stream, "state_dict", None))
            )
        ):
            return None  # the common case, checked cheaply: called at every step of a pipeline
        state_getter(data_stream)
        step = _step(step)
        _keep(keep)
        _metadata(metadata)
        if isinstance(interval, (bool, np.bool_)) or not isinstance(interval, (int, np.integer)) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if step % int(interval) != 0:
            return None
        return self.save_to_directory(data_stream, step=step, keep=keep, overwrite=overwrite, metadata=metadata)
