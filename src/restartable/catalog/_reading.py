"""Reading one rank folder's catalog: whole rows, with fallback past damaged ones.

:class:`CatalogReader` keeps the catalog as last read (entries and their
rows), lists it again when a writer retires a row while it is being read,
warns once about each damaged row (:class:`~restartable.errors.CheckpointFallbackWarning`)
and leaves it out from then on, and opens a row by reading and verifying
every file of it.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import CheckpointCorruptError, CheckpointFallbackWarning
from ..store import Row, RowStore, Scan, scan_rows
from ._entries import CheckpointEntry, entry_from_row

# A reader without the lock may see a row retired between listing and
# reading it; it re-reads the catalog this many times before giving up.
SELECT_ATTEMPTS = 5


class RowRetired(Exception):
    """The row directory vanished: retired by its writer, not damaged."""


class CatalogReader:
    """The catalog of one rank's store, as last read.

    The owner decides what a listing becomes: :meth:`read` lists and decodes
    the rows, :meth:`keep` makes a (vetted) listing the current one.

    Warnings name the frame that called the owner's method; their
    ``stacklevel`` counts the owner's frame in between.
    """

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.location = store.location
        self.entries: list[CheckpointEntry] = []
        self.rows: dict[str, Row] = {}
        self.damaged: set[str] = set()  # rows that failed verification: left out from now on
        self.warned: set[str] = set()  # rows already warned about

    # ------------------------------------------------------------------ listing

    def read(self) -> tuple[list[CheckpointEntry], dict[str, Row]]:
        """List and decode the whole rows, oldest first, listing again if a row is retired meanwhile.

        Rows whose manifest is missing or damaged, or whose files have the
        wrong size, are left out with a :class:`CheckpointFallbackWarning`.
        """
        for _attempt in range(SELECT_ATTEMPTS):
            scan = scan_rows(self.store)
            entries, rows, retired = self._entries_of(scan)
            if not retired:
                break
        for problem in scan.problems:
            self._warn_damaged(str(problem.row).rstrip("/").rsplit("/", 1)[-1], problem.reason)
        return entries, rows

    def keep(self, entries: list[CheckpointEntry], rows: dict[str, Row]) -> None:
        """Make ``entries`` (and their ``rows``) the catalog as last read."""
        self.entries, self.rows = entries, rows

    def remember(self, entry: CheckpointEntry, row: Row) -> None:
        """A row this process just committed: it can be opened before the next read."""
        self.rows[entry.commit_id] = row

    def _entries_of(self, scan: Scan) -> tuple[list[CheckpointEntry], dict[str, Row], bool]:
        entries, rows, retired = [], {}, False
        for row in scan.rows:
            if row.commit_id in self.damaged:
                continue
            try:
                entry = entry_from_row(row)
            except CheckpointCorruptError as exc:
                if not row.exists():
                    retired = True  # retired by the writer while we read it: rescan
                    continue
                self._warn_damaged(row.commit_id, str(exc))
                continue
            entries.append(entry)
            rows[row.commit_id] = row
        return entries, rows, retired

    def _warn_damaged(self, commit_id: str, reason: str) -> None:
        if commit_id in self.warned:
            return
        self.warned.add(commit_id)
        warnings.warn(
            f"skipping damaged checkpoint row {commit_id} of {self.location}: {reason}",
            CheckpointFallbackWarning,
            stacklevel=5,  # _warn_damaged, (_entries_of,) read, the owner's refresh, its caller
        )

    # ------------------------------------------------------------------ opening

    def load(self, entry: CheckpointEntry) -> tuple[Row, Any]:
        """Read and verify every file of ``entry``'s row: the row and its payload loader.

        Raises
        ------
        RowRetired
            The row vanished while it was read (its writer retired it).
        CheckpointCorruptError
            The row is damaged; it is left out of later reads.
        """
        stored = self.rows[entry.commit_id]
        try:
            loader = stored.load_all_payloads()
        except CheckpointCorruptError as exc:
            if not stored.exists():
                raise RowRetired(entry.commit_id) from exc
            self.damaged.add(entry.commit_id)
            raise
        return stored, loader

    def open_latest(self) -> tuple[CheckpointEntry, Row, Any] | None:
        """The newest row that verifies, falling back to older ones with a warning; ``None`` if none does."""
        for entry in reversed(list(self.entries)):
            try:
                return (entry, *self.load(entry))
            except RowRetired:
                continue
            except CheckpointCorruptError as exc:
                self.warned.add(entry.commit_id)
                warnings.warn(
                    f"checkpoint row {entry.commit_id} of {self.location} is damaged ({exc}); "
                    "falling back to the previous row",
                    CheckpointFallbackWarning,
                    stacklevel=4,  # open_latest, the owner's _open_latest, its __enter__, the caller
                )
        if self.damaged:
            warnings.warn(
                f"no whole row is left in {self.location}; starting a new session",
                CheckpointFallbackWarning,
                stacklevel=4,
            )
        return None
