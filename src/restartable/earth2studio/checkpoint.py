"""restartable's implementation under earth2studio's names.

After :func:`restartable.earth2studio.install`, ``earth2studio.utils.checkpoint``
*is* this module: earth2studio's workflows, its components (``Persistence``,
``FCN``, the ``Gaussian`` perturbation) and every user model that binds state
through ``bind_checkpoint_state`` run on restartable's engine. The classes are
restartable's own, so ``isinstance`` checks agree across both names; only
the default store moves to earth2studio's cache,
``$EARTH2STUDIO_CACHE/checkpoints/<name>`` (else
``~/.cache/earth2studio/checkpoints/<name>``), where an earth2studio user
looks for it.

This module imports nothing from earth2studio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from .. import catalog as _engine
from ..catalog import CheckpointEntry, CheckpointSession, NullCheckpoint
from ..errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointLateBindWarning,
    CheckpointLockedError,
    CheckpointRemoteError,
    CheckpointSerializationError,
    CheckpointStateCollision,
    CheckpointStateSchemaError,
    CheckpointWarning,
    CheckpointWorldSizeError,
    CheckpointWriteError,
)
from ..state import CheckpointState, PendingState, bind_checkpoint_state

__all__ = [
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointLateBindWarning",
    "CheckpointLevel",
    "CheckpointLockedError",
    "CheckpointRemoteError",
    "CheckpointSerializationError",
    "CheckpointSession",
    "CheckpointState",
    "CheckpointStateCollision",
    "CheckpointStateSchemaError",
    "CheckpointWarning",
    "CheckpointWorldSizeError",
    "CheckpointWriteError",
    "NullCheckpoint",
    "PendingCheckpointState",
    "bind_checkpoint_state",
    "default_checkpoint_path",
]

CheckpointLevel = Literal[0, 1, 2]
# earth2studio's name for a state bound before its session opened.
PendingCheckpointState = PendingState


def default_checkpoint_path(name: str) -> Path:
    """earth2studio's default store: ``$EARTH2STUDIO_CACHE/checkpoints/<name>``.

    Without ``EARTH2STUDIO_CACHE``: ``~/.cache/earth2studio/checkpoints/<name>``.
    """
    base = os.environ.get("EARTH2STUDIO_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "earth2studio"
    return root / "checkpoints" / name


class Checkpoint(_engine.Checkpoint):
    """restartable's :class:`~restartable.Checkpoint` as earth2studio's ``Checkpoint`` behaves.

    Every argument of earth2studio's ``Checkpoint`` means the same here, and
    restartable's own keywords (``async_commit``, ``durable``, URLs as
    ``path``, ``consistent``...) are available too. Where the two differ,
    this class does what earth2studio does:

    - the default store is earth2studio's cache (:func:`default_checkpoint_path`);
    - rank detection initialises PhysicsNeMo's ``DistributedManager`` when
      it is installed and not yet initialised;
    - dictionaries in state and metadata must have ``str`` keys
      (restartable also accepts ``int`` keys);
    - a saved dataclass is restored as a dataclass only into a field that
      holds one; elsewhere (an untyped field, a list item) it comes back as
      a ``dict`` of its fields (restartable restores the class);
    - a one-element array or tensor in metadata is recorded as its element,
      under every key (restartable does so for ``lead_time`` only);
    - ``mode="overwrite"`` with a ``history_size`` ignores it silently
      (restartable warns).
    """

    _default_path = staticmethod(default_checkpoint_path)
    _initialize_physicsnemo = True
    _int_keys = False
    _nested_dataclasses = "in_place"
    _unwrap_one_element_metadata = True
    _warn_ignored_history_size = False
