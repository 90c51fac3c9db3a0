"""Copy committed rows between two stores: :func:`push` and :func:`pull`.

:func:`push` uploads the rows of a local store that a URL lacks; :func:`pull`
downloads the rows a local store lacks. Both are :func:`copy_rows` between
two :class:`~restartable.store.RowStore`\\ s, which copies whole rows by
commit id with the destination's own commit protocol (payloads first,
manifest last; locally a staging directory renamed into ``commits/``),
verifies every file's checksum on the way, and never copies a damaged row:
it is reported and skipped. Rows the destination already has are skipped
without being read; with ``check_present`` they are checked (manifest and
file sizes, or every checksum with ``verify=True``) and, if damaged and the
destination can replace a row atomically, replaced by the source's copy.

With ``verbose=True`` each row is reported as it is done (a bar on a
terminal, otherwise a line per row through the ``restartable.remote.sync``
logger at a bounded rate, see :mod:`restartable._progress`), and a large
file's bytes while it is copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._progress import Progress, human_bytes
from ..errors import CheckpointCorruptError
from ..store import Exclusion, Row, RowStore, Scan, open_row, open_store, scan_rows, verify_row
from ..store._fsspec import FsspecRowStore
from ..store._layout import MANIFEST_NAME
from ..store._open import rank_names
from ..store.files import new_hasher
from ..store.manifest import dump_manifest
from ..store.objects import STREAM_BYTES, RetryPolicy
from ..store.writer import clean_leftovers

__all__ = ["SyncReport", "copy_rows", "pull", "push"]

LOGGER = logging.getLogger(__name__)
#: Files larger than this report their bytes while they are copied.
LARGE_FILE_BYTES = STREAM_BYTES


@dataclass
class SyncReport:
    """What a :func:`push` or :func:`pull` did, rank by rank."""

    copied: list[str] = field(default_factory=list)
    """Rows copied, as ``<rank>/<commit id>`` (``<commit id>`` for a single-rank store)."""
    present: list[str] = field(default_factory=list)
    """Rows skipped because the destination already had them."""
    damaged: list[tuple[str, str]] = field(default_factory=list)
    """Rows not copied because a file failed its check, with the reason."""
    repaired: list[str] = field(default_factory=list)
    """Rows whose copy at the destination was damaged and was replaced (:func:`pull` only)."""
    bytes_copied: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "present": self.present,
            "repaired": self.repaired,
            "damaged": [{"row": row, "reason": reason} for row, reason in self.damaged],
            "bytes_copied": self.bytes_copied,
        }


def _label(rank: str, commit_id: str) -> str:
    return f"{rank}/{commit_id}" if rank else commit_id


def _verified_chunks(
    row: Row, entry: dict[str, Any], failures: list[str], on_bytes: Callable[[int], None] | None = None
) -> Callable[[], Iterator[bytes]]:
    """A chunk stream of a row's file that records a size or checksum mismatch.

    ``on_bytes`` is told the bytes read so far after every chunk.
    """
    where = row.store.file_location(row.name, entry["name"])

    def chunks() -> Iterator[bytes]:
        failures.clear()
        hasher, seen = new_hasher(), 0
        for chunk in row.store.read_chunks(row.name, entry["name"]):
            hasher.update(chunk)
            seen += len(chunk)
            if on_bytes is not None:
                on_bytes(seen)
            yield chunk
        if seen != entry["size"]:
            failures.append(f"{where} is {seen} bytes, the manifest says {entry['size']}")
        elif hasher.hexdigest() != entry["checksum"]:
            failures.append(f"{where} has checksum {hasher.hexdigest()}, the manifest says {entry['checksum']}")

    return chunks


def copy_row(
    row: Row,
    destination: RowStore,
    exclusion: Exclusion,
    *,
    replace: bool = False,
    progress: Progress | None = None,
    label: str = "",
) -> int:
    """Commit ``row`` into ``destination`` under its own name; return the bytes copied.

    Every file is checked against the manifest while it is copied
    (:class:`CheckpointCorruptError` if one fails, and nothing is published).
    With ``replace`` (stores with rename only), the destination's row of that
    name is retired just before the copy is published: a copy that fails its
    checks never costs the row it was to replace. ``progress`` is told the
    bytes of files over :data:`LARGE_FILE_BYTES` as they are copied.
    """
    draft = destination.stage(row.name)
    try:
        for entry in row.files:
            failures: list[str] = []
            draft.write_stream(
                entry["name"], _verified_chunks(row, entry, failures, _byte_notes(progress, label, entry))
            )
            if failures:
                where = row.store.file_location(row.name, entry["name"])
                raise CheckpointCorruptError(failures[0], row=str(row.path), file=where)
        draft.finish_payloads()
        exclusion.check()
        retired = None
        if replace:
            with contextlib.suppress(FileNotFoundError):
                retired = destination.retire(row.name)
        draft.publish(dump_manifest(row.body))
    except FileExistsError:
        if destination.capabilities.rename:
            draft.abandon()
        # Without rename the row exists there now: its payloads are no longer ours to delete.
        raise
    except BaseException:
        draft.abandon()
        raise
    draft.settle()
    if retired is not None:
        destination.delete_retired([retired])
    return sum(int(f["size"]) for f in row.files)


def _byte_notes(progress: Progress | None, label: str, entry: dict[str, Any]) -> Callable[[int], None] | None:
    size = int(entry["size"])
    if progress is None or size <= LARGE_FILE_BYTES:
        return None
    total = human_bytes(size)

    def note(seen: int) -> None:
        progress.note(f"{label}/{entry['name']}: {human_bytes(seen)} of {total} ({seen * 100 // size}%)")

    return note


def _describe(where: str, reason: str) -> str:
    return reason if where in reason else f"{where} {reason}"


def _damage_of_copy(destination: RowStore, source: Row, verify: bool) -> str | None:
    """Why the destination's copy of ``source`` cannot be trusted, or ``None`` if it is whole."""
    if verify:
        problems = verify_row(destination, source.name)
        if problems:
            return "; ".join(_describe(problem.file or problem.row, problem.reason) for problem in problems)
    try:
        copy = open_row(destination, source.name)
    except CheckpointCorruptError as exc:
        return str(exc)
    if copy.body != source.body:
        return (
            f"{destination.file_location(source.name, MANIFEST_NAME)} "
            "differs from the source's manifest of the same row"
        )
    return None


def copy_rows(
    source_root: RowStore,
    destination_root: RowStore,
    *,
    check_present: bool = False,
    verify: bool = False,
    verbose: bool = False,
    desc: str = "copy",
) -> SyncReport:
    """Copy every whole row of every rank of ``source_root`` that ``destination_root`` lacks.

    Each rank goes to the same relative folder or prefix, under the
    destination's exclusion (a running writer there is not raced:
    :class:`CheckpointLockedError`). Damaged source rows are reported in
    :attr:`SyncReport.damaged` and not copied. With ``check_present``, rows
    the destination has are checked (``verify``: every checksum) and, where
    damaged, replaced if the destination can do so atomically.

    ``verbose``: report every source row as it is done, as ``desc: 3/6 rows
    (50%), <row> copied (1.2 MiB)`` (see :mod:`restartable._progress`).
    """
    report = SyncReport()
    ranks = [(rank, scan_rows(source_root.child(rank) if rank else source_root)) for rank in rank_names(source_root)]
    total = sum(len(scan.rows) + len(scan.problems) for _, scan in ranks)
    with Progress(desc, total, unit="rows", verbose=verbose, logger=LOGGER) as progress:
        for rank, scan in ranks:
            _copy_rank(rank, scan, destination_root, report, progress, check_present, verify)
    return report


def _copy_rank(
    rank: str,
    scan: Scan,
    destination_root: RowStore,
    report: SyncReport,
    progress: Progress,
    check_present: bool,
    verify: bool,
) -> None:
    """Copy the rows of one rank's ``scan`` that its destination lacks, into ``report``."""
    destination = destination_root.child(rank) if rank else destination_root
    for problem in scan.problems:
        label = _label(rank, problem.row.rstrip("/").rsplit("/", 1)[-1])
        report.damaged.append((label, problem.reason))
        progress.update(1, f"{label} damaged, skipped")
    destination.prepare()
    exclusion = destination.exclusion()
    exclusion.acquire()
    try:
        clean_leftovers(destination, warn=False)
        there = scan_rows(destination)
        present = {row.name for row in there.rows}
        damaged_there = {problem.row.rstrip("/").rsplit("/", 1)[-1]: problem.reason for problem in there.problems}
        for row in scan.rows:
            label = _label(rank, row.name)
            event = _copy_one(
                row, label, destination, exclusion, report, progress, present, damaged_there, check_present, verify
            )
            progress.update(1, event)
    finally:
        exclusion.release()


def _copy_one(
    row: Row,
    label: str,
    destination: RowStore,
    exclusion: Exclusion,
    report: SyncReport,
    progress: Progress,
    present: set[str],
    damaged_there: dict[str, str],
    check_present: bool,
    verify: bool,
) -> str:
    """Copy ``row`` unless the destination has it whole; record the outcome in ``report`` and say it."""
    replace = False
    damage = None
    if row.name in present or row.name in damaged_there:
        damage = damaged_there.get(row.name)
        if damage is None and check_present:
            damage = _damage_of_copy(destination, row, verify)
        if damage is None:
            report.present.append(label)
            return f"{label} already there"
        if not (check_present and destination.capabilities.rename):
            # Never overwrite a committed (if damaged) row in place:
            # its manifest stays, and our payloads would only mix with its own.
            report.damaged.append(
                (
                    label,
                    f"the destination holds a damaged copy of this row ({damage}); delete it there to copy it again",
                )
            )
            return f"{label} damaged at the destination, skipped"
        replace = True
    try:
        copied = copy_row(row, destination, exclusion, replace=replace, progress=progress, label=label)
    except CheckpointCorruptError as exc:
        if replace:
            report.damaged.append((label, f"the local copy is damaged ({damage}) and so is the source's: {exc}"))
        else:
            report.damaged.append((label, str(exc)))
        return f"{label} damaged, skipped"
    except FileExistsError:
        report.damaged.append((label, "another writer published this row at the destination meanwhile"))
        return f"{label} published at the destination meanwhile, skipped"
    report.bytes_copied += copied
    (report.repaired if replace else report.copied).append(label)
    return f"{label} {'repaired' if replace else 'copied'} ({human_bytes(copied)})"


def push(
    local: str | os.PathLike[str],
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    verbose: bool = False,
) -> SyncReport:
    """Upload every committed row of the local store ``local`` that ``url`` lacks.

    Each rank folder goes to the same relative prefix. The destination's
    writer lease is held while rows are added, so a running writer there is
    not raced (:class:`CheckpointLockedError`). Damaged local rows are
    reported in :attr:`SyncReport.damaged` and not uploaded. ``verbose``
    reports each row as it is done (``push: 2/6 rows (33%), <row> copied
    (1.2 MiB)``) and the bytes of a large file while it is uploaded.

    Example
    -------
    >>> report = push("/scratch/run", "s3://bucket/run", verbose=True)  # doctest: +SKIP
    >>> report.copied, report.present, report.damaged  # doctest: +SKIP
    """
    return copy_rows(open_store(local), FsspecRowStore(url, storage_options, retry=retry), verbose=verbose, desc="push")


def pull(
    url: str,
    local: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    verify: bool = False,
    verbose: bool = False,
) -> SyncReport:
    """Download every committed row under ``url`` that the local store ``local`` lacks.

    Rows arrive the way a local writer commits them (staging directory,
    fsync, rename), under the local writer lock, so a reader never sees a
    partial row. Damaged remote rows are reported and not copied.

    A row the local store already has is checked: its manifest and file
    sizes, and with ``verify=True`` every file's checksum too (which reads
    the whole local store). A damaged local copy is replaced by the remote
    one, once that one has passed its own checks, and listed in
    :attr:`SyncReport.repaired`; if the remote copy is damaged too, the
    local copy is left as it was and the row is reported damaged.

    ``verbose`` reports each row as it is done (``pull: 2/6 rows (33%),
    <row> copied (1.2 MiB)``) and the bytes of a large file while it is
    downloaded.

    Example
    -------
    >>> report = pull("s3://bucket/run", "/scratch/run", verify=True)  # doctest: +SKIP
    >>> report.copied, report.repaired, report.damaged  # doctest: +SKIP
    """
    source = FsspecRowStore(url, storage_options, retry=retry)
    try:
        rank_names(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url} holds no restartable checkpoint rows") from None
    return copy_rows(source, open_store(local), check_present=True, verify=verify, verbose=verbose, desc="pull")
