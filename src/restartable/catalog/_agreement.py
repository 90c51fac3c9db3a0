"""Ranks of one store: the world-size guard, and the agreement on one restart row.

:class:`RankAgreement` answers two questions about the rank folders of a
store. Was it written by a run with this number of ranks
(:meth:`~RankAgreement.check_world_size`)? And, for a consistent multi-rank
checkpoint, which row does every rank resume from: the newest sequence
number every rank committed whole (:meth:`~RankAgreement.open_common`)?
With an initialised ``torch.distributed`` process group of the same size
the ranks exchange what they have by collectives; otherwise each rank reads
the other ranks' folders on the shared path, or their prefixes on the object
store: every question here is asked of the ranks' stores, so a catalog at a
URL gets the same guarantee as one on a shared filesystem. Between commits,
:meth:`~RankAgreement.floor` (read from the ranks' HEADs) tells retention
which rows every rank still needs.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from ..distributed import all_gather, process_group_size
from ..errors import CheckpointCorruptError, CheckpointFallbackWarning, CheckpointWorldSizeError
from ..store import Row, RowStore, open_row, scan_rows
from ..store._layout import rank_folder_name, rank_of_folder, sequence_of
from ._entries import CheckpointEntry
from ._reading import RowRetired


class RankAgreement:
    """What the ranks of store ``root`` agree on, seen from ``rank`` of ``world_size``.

    ``root`` holds the ranks' stores (``rank_000000`` ...; with one rank, the
    rows themselves). :attr:`agreed` is the restart sequence every rank
    agreed on, once :meth:`open_common` has run.

    Warnings name the frame that called the owner's method; their
    ``stacklevel`` counts the owner's frame in between.
    """

    def __init__(self, name: str, root: RowStore, rank: int, world_size: int) -> None:
        self.name = name
        self.root = root
        self.path = root.location
        self.rank = rank
        self.world_size = world_size
        self.agreed: int | None = None

    def rank_store(self, rank: int) -> RowStore:
        return self.root.child(rank_folder_name(rank))

    # ------------------------------------------------------------------ world size

    def check_world_size(self, entries: list[CheckpointEntry]) -> None:
        """Refuse a store written by a run with another number of ranks."""
        other = sorted({entry.world_size for entry in entries if entry.world_size != self.world_size})
        on_disk: str | None = f"{other[0]}" if other else None
        folders: list[str] = []
        if on_disk is None:
            folders = self.root.rank_folders()
            ranks = sorted(rank for name in folders if (rank := rank_of_folder(name)) is not None)
            if self.world_size == 1 and ranks:
                names = f"{rank_folder_name(ranks[0])}..{rank_folder_name(ranks[-1])}"
                on_disk = f"at least {ranks[-1] + 1} (folders {names})"
            elif self.world_size > 1 and self.root.list_rows():
                on_disk = "1 (rows directly in commits/)"
            elif self.world_size > 1 and ranks and ranks[-1] >= self.world_size:
                on_disk = f"at least {ranks[-1] + 1} (folder {rank_folder_name(ranks[-1])})"
        if on_disk is None and self.world_size > 1 and not entries and folders:
            # A rank new to this store (more ranks than before): ask another rank's newest row.
            on_disk = self._world_size_of_other_ranks(folders)
        if on_disk is not None:
            raise CheckpointWorldSizeError(
                f"{self.path} was written by a run with world_size {on_disk}, but this run has world_size "
                f"{self.world_size}; resume with the same number of ranks, or use another path"
            )

    def _world_size_of_other_ranks(self, folders: list[str]) -> str | None:
        for name in folders:
            if rank_of_folder(name) in (None, self.rank):
                continue
            store = self.root.child(name)
            for sequence, row_name in reversed(store.list_rows()):
                try:
                    written = int(open_row(store, row_name, sequence).body["world_size"])
                except (CheckpointCorruptError, KeyError, TypeError, ValueError):
                    continue
                return None if written == self.world_size else f"{written} (rows of {name})"
        return None

    # ------------------------------------------------------------------ agreement

    def flag_common(self, entries: list[CheckpointEntry]) -> list[CheckpointEntry]:
        """Mark entries whose sequence every rank's folder holds (names only: cheap)."""
        present = None
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            names = {sequence for sequence, _ in self.rank_store(rank).list_rows()}
            present = names if present is None else present & names
        return [dataclasses.replace(entry, all_ranks=entry.sequence in (present or set())) for entry in entries]

    def floor(self) -> int | None:
        """The newest sequence every rank has committed, as far as the ranks' HEAD files tell."""
        heads = []
        for rank in range(self.world_size):
            head = self.rank_store(rank).read_head()
            heads.append(head if head is not None else (self.agreed or 0))
        return min(heads)

    def open_common(
        self,
        entries: list[CheckpointEntry],
        load: Callable[[CheckpointEntry], tuple[Row, Any]],
        position: int | None = None,
    ) -> tuple[CheckpointEntry, Row, Any] | None:
        """The newest row every rank has whole (or the one at ``position`` among them), opened by ``load``.

        ``entries`` are this rank's whole rows; ``load`` reads and verifies
        one (raising :class:`RowRetired` or ``CheckpointCorruptError``).
        Returns ``(entry, row, payloads)``, or ``None`` when no row is common
        to every rank (a new session); sets :attr:`agreed`.
        """
        common, peers = self._common_sequences(entries)
        by_sequence = {entry.sequence: entry for entry in entries}
        if position is not None:
            if not common:
                raise IndexError(f"checkpoint {self.name!r} has no row that every rank committed, in {self.path}")
            try:
                chosen = common[position]
            except IndexError:
                raise IndexError(
                    f"row {position} is out of range: {len(common)} row(s) of {self.path} are common to every rank"
                ) from None
            entry = by_sequence[chosen]
            row, payloads = load(entry)
            self.agreed = chosen
            return entry, row, payloads
        vanished: set[int] = set()
        for sequence in reversed(common):
            opened: tuple[CheckpointEntry, Row, Any] | None = None
            try:
                entry = by_sequence[sequence]
                opened = (entry, *load(entry))
            except (CheckpointCorruptError, RowRetired):
                opened = None
            failed, retired = self._verified_everywhere(sequence, opened is not None, peers)
            if not failed and not retired:
                assert opened is not None
                self.agreed = sequence
                return opened
            vanished.update(retired)
            if not failed:
                continue
            warnings.warn(
                f"row {sequence} of {', '.join(f'rank {rank}' for rank in failed)} in {self.path} is damaged; "
                "every rank falls back to the previous row common to all ranks",
                CheckpointFallbackWarning,
                stacklevel=4,  # open_common, the owner's _open_common, its __enter__ or select, the caller
            )
        if vanished:
            # A rank retiring newer rows after agreeing on an older one never
            # removes every common row: something else removed them.
            warnings.warn(
                f"the rows common to every rank vanished from {', '.join(f'rank {rank}' for rank in sorted(vanished))} "
                f"of {self.path} while they were read; starting a new session",
                CheckpointFallbackWarning,
                stacklevel=4,
            )
        self.agreed = 0
        return None

    def _collective(self) -> bool:
        return process_group_size() == self.world_size

    def _rank_views(
        self, entries: list[CheckpointEntry]
    ) -> tuple[list[tuple[set[int], set[int]]], dict[int, dict[int, Row]]]:
        """(whole sequences, listed sequences) of every rank, by collective or from the shared path,
        and the other ranks' whole rows by sequence (read from the shared path; empty under a collective)."""
        own_whole = {entry.sequence for entry in entries}
        own_listed = {sequence for sequence, _ in self.rank_store(self.rank).list_rows()}
        if self._collective():
            gathered = all_gather([sorted(own_whole), sorted(own_listed)], self.world_size)
            return [(set(whole), set(listed)) for whole, listed in gathered], {}
        views = []
        peers: dict[int, dict[int, Row]] = {}
        for rank in range(self.world_size):
            if rank == self.rank:
                views.append((own_whole, own_listed))
                continue
            # One listing for both sets: a row the rank commits meanwhile must
            # not look listed but not whole (that reads as damage).
            scan = scan_rows(self.rank_store(rank))
            peers[rank] = {row.sequence: row for row in scan.rows}
            whole = set(peers[rank])
            damaged = {
                sequence
                for problem in scan.problems
                if (sequence := sequence_of(problem.row.rstrip("/").rsplit("/", 1)[-1])) is not None
            }
            views.append((whole, whole | damaged))
        return views, peers

    def _verified_everywhere(
        self, sequence: int, own_ok: bool, peers: dict[int, dict[int, Row]]
    ) -> tuple[list[int], list[int]]:
        """The ranks whose row ``sequence`` fails verification, and those that retired it meanwhile.

        Every rank gets the same answer under a collective. On a shared path,
        the other ranks' rows are those the agreement read (``peers``); a row
        that vanished while it was read was retired by its rank, which had
        agreed on an older row already: it is no restart point any more, but
        no damage either.
        """
        if self._collective():
            oks = all_gather(own_ok, self.world_size)
            return [rank for rank, ok in enumerate(oks) if not ok], []
        failed = [] if own_ok else [self.rank]
        retired = []
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            row = peers.get(rank, {}).get(sequence)
            try:
                if row is None:
                    raise CheckpointCorruptError(f"rank {rank} has no row {sequence}")
                row.load_all_payloads()
            except CheckpointCorruptError:
                if row is not None and not row.exists():
                    retired.append(rank)
                else:
                    failed.append(rank)
        return sorted(failed), retired

    def _common_sequences(self, entries: list[CheckpointEntry]) -> tuple[list[int], dict[int, dict[int, Row]]]:
        """Sequences every rank committed whole, oldest first (warning about gaps above the newest),
        and the other ranks' rows as read for it."""
        views, peers = self._rank_views(entries)
        common = set.intersection(*(whole for whole, _ in views))
        newest_common = max(common, default=0)
        lacking = []
        for sequence in sorted(set.union(*(whole for whole, _ in views))):
            if sequence <= newest_common:
                continue
            for rank, (whole, listed) in enumerate(views):
                # A gap (the rank went past it) or a damaged row, not a rank that simply stopped earlier.
                if sequence not in whole and (sequence in listed or sequence < max(listed, default=0)):
                    lacking.append(f"rank {rank} row {sequence}")
        if lacking:
            warnings.warn(
                f"{', '.join(lacking)} of {self.path} is damaged or missing; every rank falls back to "
                + (
                    f"row {newest_common}, the newest every rank has whole"
                    if common
                    else "a new session (no row is common to every rank)"
                ),
                CheckpointFallbackWarning,
                # _common_sequences, open_common, the owner's _open_common, its __enter__ or select, the caller
                stacklevel=5,
            )
        return sorted(common), peers
