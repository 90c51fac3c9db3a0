"""Compatibility alias: the catalog front end lives in :mod:`restartable.catalog`."""

from .catalog import (
    Checkpoint,
    CheckpointEntry,
    CheckpointSession,
    NullCheckpoint,
    default_checkpoint_path,
    entries_table,
    entry_from_row,
    format_table,
    resolve_device,
)

_entry_from_row = entry_from_row  # the old private name, for old callers (restartable.cli)

__all__ = [
    "Checkpoint",
    "CheckpointEntry",
    "CheckpointSession",
    "NullCheckpoint",
    "default_checkpoint_path",
    "entries_table",
    "format_table",
    "resolve_device",
]
