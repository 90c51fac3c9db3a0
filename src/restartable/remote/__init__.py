"""Checkpoints on object stores.

:class:`RemoteCheckpoint` is the task-retry front end (flyte semantics): an
attempt saves bytes, a file or a directory to its own prefix, and the next
attempt loads the newest valid save of any earlier attempt. Catalogs at URLs
(``Checkpoint(name, path="s3://bucket/prefix")``) use the engine's object
store rows directly; :func:`push` and :func:`pull` copy committed rows
between a local store and a URL.

fsspec (and s3fs for ``s3://``) are needed only here: ``pip install
'restartable[remote]'``.
"""

from .task import RemoteCheckpoint, SaveRecord

__all__ = ["RemoteCheckpoint", "SaveRecord"]
