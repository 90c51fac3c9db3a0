"""restartable: crash-safe, verifiable, pickle-free restart checkpoints.

A drop-in replacement for ``earth2studio.utils.checkpoint``::

    from restartable import Checkpoint, bind_checkpoint_state

``import restartable`` needs numpy only; torch is used when the values you
checkpoint are tensors.
"""

from ._version import __version__
from .catalog import (
    Checkpoint,
    CheckpointEntry,
    CheckpointSession,
    NullCheckpoint,
    default_checkpoint_path,
)
from .errors import (
    CheckpointCleanupWarning,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointFallbackWarning,
    CheckpointLateBindWarning,
    CheckpointLockedError,
    CheckpointRemoteError,
    CheckpointSerializationError,
    CheckpointStateCollision,
    CheckpointStateSchemaError,
    CheckpointUnsafeArchiveError,
    CheckpointWarning,
    CheckpointWorldSizeError,
    CheckpointWriteError,
)
from .state import CheckpointState, bind_checkpoint_state

__all__ = [
    "Checkpoint",
    "CheckpointCleanupWarning",
    "CheckpointCorruptError",
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointLateBindWarning",
    "CheckpointLockedError",
    "CheckpointRemoteError",
    "CheckpointSerializationError",
    "CheckpointSession",
    "CheckpointState",
    "CheckpointStateCollision",
    "CheckpointStateSchemaError",
    "CheckpointUnsafeArchiveError",
    "CheckpointWarning",
    "CheckpointWorldSizeError",
    "CheckpointWriteError",
    "NullCheckpoint",
    "__version__",
    "bind_checkpoint_state",
    "default_checkpoint_path",
]
