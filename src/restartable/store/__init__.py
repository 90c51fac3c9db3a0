"""The storage engine: commit protocol, rows, lock, retention and verification.

Nothing here knows about sessions, workflows or bound state; the front ends
(:mod:`restartable.checkpoint` and later ones) build on it.
"""

from .rows import Problem, Row, Scan, list_row_dirs, open_row, scan_rows, verify_row
from .writer import RowWriter, Snapshot, WriterLock, clean_leftovers

__all__ = [
    "Problem",
    "Row",
    "RowWriter",
    "Scan",
    "Snapshot",
    "WriterLock",
    "clean_leftovers",
    "list_row_dirs",
    "open_row",
    "scan_rows",
    "verify_row",
]
