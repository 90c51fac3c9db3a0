"""Checkpoints on object stores.

:class:`RemoteCheckpoint` is the task-retry front end, with the API of
flyte's ``flyte.Checkpoint``: an attempt saves bytes, a file or a directory
to its own prefix, and the next attempt loads the newest valid save of any
earlier attempt, including a checkpoint that flyte itself saved. Inside a
flyte task, ``RemoteCheckpoint.from_flyte_context()`` takes both paths from
the task context (flyte is optional and imported only there). Catalogs at
URLs (``Checkpoint(name, path="s3://bucket/prefix")``) use the engine's
object store rows directly; :func:`push` and :func:`pull` copy committed
rows between a local store and a URL.

fsspec (and s3fs for ``s3://``) are needed only here: ``pip install
'restartable[remote]'``. Without fsspec, ``from restartable.remote import
RemoteCheckpoint`` raises a :class:`ModuleNotFoundError` that says so; an
``s3://`` URL without s3fs raises one when the URL is first opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._extras import require

if TYPE_CHECKING:
    from .task import RemoteCheckpoint, SaveRecord

__all__ = ["RemoteCheckpoint", "SaveRecord"]


def __getattr__(name: str) -> Any:
    # Loaded on first use rather than at import: restartable.remote.sync's
    # copy_rows also serves local and in-memory stores, without fsspec, and
    # importing it imports this package.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require("fsspec", extra="remote", feature=f"restartable.remote.{name}")
    from . import task

    value = getattr(task, name)
    globals()[name] = value
    return value
