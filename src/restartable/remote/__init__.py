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
'restartable[remote]'``.
"""

from .task import RemoteCheckpoint, SaveRecord

__all__ = ["RemoteCheckpoint", "SaveRecord"]
