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
:mod:`restartable.store` before it is listed. One private module per job:

- ``_paths``: the default store path and the ``rank_<rank:06d>`` folders;
- ``_entries``: :class:`CheckpointEntry`, read from a row's manifest;
- ``_table``: the catalog table of ``print(checkpoint)`` and ``restartable ls``;
- ``_snapshot``: encoding a session's metadata and bound states for a commit;
- ``_reading``: reading this rank's rows, with fallback past damaged ones;
- ``_agreement``: the world-size guard, and ranks agreeing on one restart row;
- ``_checkpoint``: :class:`Checkpoint`, which owns the above and the writer;
- ``_session``: :class:`CheckpointSession`, bound states and commits of one row;
- ``_null``: :class:`NullCheckpoint`, the session of a run without a checkpoint.

:mod:`restartable.checkpoint` is an alias of this package, for old imports.
"""

from .._device import resolve_device
from ._checkpoint import Checkpoint
from ._entries import CheckpointEntry, entry_from_row
from ._null import NullCheckpoint
from ._paths import default_checkpoint_path
from ._session import CheckpointSession
from ._table import entries_table, format_table

__all__ = [
    "Checkpoint",
    "CheckpointEntry",
    "CheckpointSession",
    "NullCheckpoint",
    "default_checkpoint_path",
    "entries_table",
    "entry_from_row",
    "format_table",
    "resolve_device",
]
