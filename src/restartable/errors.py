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

The classes, as a tree. A name in brackets is a base class beyond the one the
tree shows; each line ends with when the class is raised or issued
(``tests/test_errors_tree.py`` checks the drawing against the classes).

Exceptions::

    CheckpointError (RuntimeError)                 base class; ``except CheckpointError`` catches every one below
    ├── CheckpointStateCollision                   one dataclass type is bound twice in one checkpoint session
    ├── CheckpointSerializationError (TypeError)   a state, metadata value or label cannot be stored without pickle
    ├── CheckpointStateSchemaError (ValueError)    a saved dataclass no longer matches its type's definition
    ├── CheckpointCorruptError (ValueError)        a committed row is damaged: a file is missing, truncated or altered
    ├── CheckpointLockedError                      another writer holds the lock on the checkpoint directory
    ├── CheckpointWriteError                       a commit cannot be made durable (disk full, I/O error, permissions)
    ├── CheckpointWorldSizeError (ValueError)      a store is resumed by a run with another number of ranks
    ├── CheckpointRemoteError                      an object store is unreachable, refuses access, or keeps failing
    └── CheckpointUnsafeArchiveError (ValueError)  an archive member would land outside its target or is not plain data

Warning categories::

    CheckpointWarning (UserWarning)                base category; filter it to act on every one below
    ├── CheckpointFallbackWarning                  a damaged or incomplete row is skipped in favour of an older one
    ├── CheckpointLateBindWarning                  state bound before its session opened is restored late
    └── CheckpointCleanupWarning                   an interrupted commit's leftovers are removed, or a tidy-up fails
"""

from __future__ import annotations

__all__ = [
    "CheckpointCleanupWarning",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "CheckpointLateBindWarning",
    "CheckpointLockedError",
    "CheckpointRemoteError",
    "CheckpointSerializationError",
    "CheckpointStateCollision",
    "CheckpointStateSchemaError",
    "CheckpointUnsafeArchiveError",
    "CheckpointWarning",
    "CheckpointWorldSizeError",
    "CheckpointWriteError",
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


class CheckpointWorldSizeError(CheckpointError, ValueError):
    """The store was written by a run with another number of ranks.

    Resuming with a different world size would silently mix the folders of
    two layouts; the message names both sizes.
    """


class CheckpointRemoteError(CheckpointError):
    """An object store could not be reached, refused access, or kept failing.

    Raised after bounded retries with backoff for transient failures
    (connection errors, timeouts, throttling, server errors) and at once for
    permanent ones (permission denied, missing bucket). :attr:`url` is the
    object or prefix at fault and ``__cause__`` the original error.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class CheckpointUnsafeArchiveError(CheckpointError, ValueError):
    """An archive holds a member that would land outside its target or is not plain data.

    Absolute paths, ``..`` components, links escaping the target, device
    files and oversized members are refused before anything is extracted.
    :attr:`member` names the offending member.
    """

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class CheckpointWarning(UserWarning):
    """Base category of every warning issued by restartable."""


class CheckpointFallbackWarning(CheckpointWarning):
    """A damaged or incomplete row was skipped in favour of an older one."""


class CheckpointLateBindWarning(CheckpointWarning):
    """State was bound before its session opened and was restored late."""


class CheckpointCleanupWarning(CheckpointWarning):
    """Leftovers of an interrupted commit were removed."""
