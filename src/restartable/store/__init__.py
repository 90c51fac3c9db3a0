"""The storage engine: rows, the commit protocol, retention and verification, over one store abstraction.

A :class:`RowStore` keeps one rank's committed rows. Its implementations
differ in how they publish a row and exclude a second writer (see
:class:`Capabilities`); everything above them is written once:

- :mod:`~restartable.store.rows`: reading (:func:`scan_rows`,
  :func:`open_row`, :func:`verify_row`, :class:`Row`);
- :mod:`~restartable.store.writer`: committing (:class:`RowWriter`,
  :class:`Snapshot`) and retention;
- stores: :class:`LocalRowStore` (a directory: staged, fsynced, renamed),
  :class:`FsspecRowStore` (any fsspec URL: payloads first, create-only
  manifest last, a lease), :class:`MemoryRowStore` (tests) and
  :class:`FaultyRowStore` (fails or crashes at operation *k*);
- :func:`open_store`: the one place where a path or URL becomes a store.

Nothing here knows about sessions, workflows or bound state; the front ends
(:mod:`restartable.catalog`, :mod:`restartable.iterators`,
:mod:`restartable.remote`) build on it.
"""

from ._base import Capabilities, Draft, Exclusion, RowPath, RowStore, UrlPath
from ._faults import FaultyRowStore, SimulatedCrash
from ._fsspec import FsspecRowStore, Lease
from ._local import LocalRowStore, WriterLock
from ._memory import MemoryRowStore
from ._open import open_store, rank_stores
from .rows import Problem, Row, Scan, list_row_dirs, open_row, scan_rows, verify_row
from .writer import RowWriter, Snapshot, clean_leftovers

__all__ = [
    "Capabilities",
    "Draft",
    "Exclusion",
    "FaultyRowStore",
    "FsspecRowStore",
    "Lease",
    "LocalRowStore",
    "MemoryRowStore",
    "Problem",
    "Row",
    "RowPath",
    "RowStore",
    "RowWriter",
    "Scan",
    "SimulatedCrash",
    "Snapshot",
    "UrlPath",
    "WriterLock",
    "clean_leftovers",
    "list_row_dirs",
    "open_row",
    "open_store",
    "rank_stores",
    "scan_rows",
    "verify_row",
]
