"""Exceptions and warning categories raised by restartable.

Every exception derives from :class:`CheckpointError`. Where earth2studio's
users already catch a builtin (``TypeError`` for unsupported values,
``ValueError`` for schema changes and damaged data), the matching class also
derives from that builtin, so existing ``except`` clauses keep working.

Warnings go through :func:`warnings.warn` with a category derived from
:class:`CheckpointWarning`, so they can be filtered or promoted to errors::

    import warnings
    from restartable import CheckpointFallbackWarning

    warnings.simplefilter("error", CheckpointFallbackWarning)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointStateCollision",
    "CheckpointSerializationError",
    "CheckpointStateSchemaError",
    "CheckpointCorruptError",
    "CheckpointLockedError",
    "CheckpointWriteError",
    "CheckpointWarning",
    "CheckpointFallbackWarning",
    "CheckpointLateBindWarning",
    "CheckpointCleanupWarning",
]


class CheckpointError(RuntimeError):
    """Base class of every error raised by restartable."""


class CheckpointStateCollision(CheckpointError):
    """The same dataclass type was bound twice in one checkpoint session."""


class CheckpointSerializationError(CheckpointError, TypeError):
    """A value cannot be stored without pickle.

    The message names the path to the offending value, for example
    ``state.history[3].rng``; the path is also available as :attr:`path`.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class CheckpointStateSchemaError(CheckpointError, ValueError):
    """A saved dataclass does not match the current definition of its type."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A committed row is damaged: a file is missing, truncated or altered.

    :attr:`row` is the row directory and :attr:`file` the damaged file, when
    known.
    """

    def __init__(self, message: str, row: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.file = file


class CheckpointLockedError(CheckpointError):
    """Another writer holds the lock on this checkpoint directory."""


class CheckpointWriteError(CheckpointError):
    """A commit could not be made durable (disk full, I/O error, permissions).

    The previous rows are untouched. :attr:`errno` carries the operating
    system's error number and ``__cause__`` the original :class:`OSError`.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CheckpointWarning(UserWarning):
    """Base category of every warning issued by restartable."""


class CheckpointFallbackWarning(CheckpointWarning):
    """A damaged or incomplete row was skipped in favour of an older one."""


class CheckpointLateBindWarning(CheckpointWarning):
    """State was bound before its session opened and was restored late."""


class CheckpointCleanupWarning(CheckpointWarning):
    """Leftovers of an interrupted commit were removed."""
