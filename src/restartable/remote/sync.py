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
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointCorruptError
from ..store import Exclusion, Row, RowStore, open_row, open_store, scan_rows, verify_row
from ..store._fsspec import FsspecRowStore
from ..store._layout import MANIFEST_NAME
from ..store._open import rank_names
from ..store.files import new_hasher
from ..store.manifest import dump_manifest
from ..store.objects import RetryPolicy
from ..store.writer import clean_leftovers

__all__ = ["SyncReport", "copy_rows", "pull", "push"]


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


def _verified_chunks(row: Row, entry: dict[str, Any], failures: list[str]) -> Callable[[], Iterator[bytes]]:
    """A chunk stream of a row's file that records a size or checksum mismatch."""
    where = row.store.file_location(row.name, entry["name"])

    def chunks() -> Iterator[bytes]:
        failures.clear()
        hasher, seen = new_hasher(), 0
        for chunk in row.store.read_chunks(row.name, entry["name"]):
            hasher.update(chunk)
            seen += len(chunk)
            yield chunk
        if seen != entry["size"]:
            failures.append(f"{where} is {seen} bytes, the manifest says {entry['size']}")
        elif hasher.hexdigest() != entry["checksum"]:
            failures.append(f"{where} has checksum {hasher.hexdigest()}, the manifest says {entry['checksum']}")

    return chunks


def copy_row(row: Row, destination: RowStore, exclusion: Exclusion, *, replace: bool = False) -> int:
    """Commit ``row`` into ``destination`` under its own name; return the bytes copied.

    Every file is checked against the manifest while it is copied
    (:class:`CheckpointCorruptError` if one fails, and nothing is published).
    With ``replace`` (stores with rename only), the destination's row of that
    name is retired just before the copy is published: a copy that fails its
    checks never costs the row it was to replace.
    """
    draft = destination.stage(row.name)
    try:
        for entry in row.files:
            failures: list[str] = []
            draft.write_stream(entry["name"], _verified_chunks(row, entry, failures))
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
    source_root: RowStore, destination_root: RowStore, *, check_present: bool = False, verify: bool = False
) -> SyncReport:
    """Copy every whole row of every rank of ``source_root`` that ``destination_root`` lacks.

    Each rank goes to the same relative folder or prefix, under the
    destination's exclusion (a running writer there is not raced:
    :class:`CheckpointLockedError`). Damaged source rows are reported in
    :attr:`SyncReport.damaged` and not copied. With ``check_present``, rows
    the destination has are checked (``verify``: every checksum) and, where
    damaged, replaced if the destination can do so atomically.
    """
    report = SyncReport()
    for rank in rank_names(source_root):
        source = source_root.child(rank) if rank else source_root
        destination = destination_root.child(rank) if rank else destination_root
        scan = scan_rows(source)
        for problem in scan.problems:
            report.damaged.append((_label(rank, problem.row.rstrip("/").rsplit("/", 1)[-1]), problem.reason))
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
                replace = False
                if row.name in present or row.name in damaged_there:
                    damage = damaged_there.get(row.name)
                    if damage is None and check_present:
                        damage = _damage_of_copy(destination, row, verify)
                    if damage is None:
                        report.present.append(label)
                        continue
                    if not (check_present and destination.capabilities.rename):
                        # Never overwrite a committed (if damaged) row in place:
                        # its manifest stays, and our payloads would only mix with its own.
                        report.damaged.append(
                            (
                                label,
                                f"the destination holds a damaged copy of this row ({damage}); "
                                "delete it there to copy it again",
                            )
                        )
                        continue
                    replace = True
                try:
                    report.bytes_copied += copy_row(row, destination, exclusion, replace=replace)
                except CheckpointCorruptError as exc:
                    if replace:
                        exc_text = f"the local copy is damaged ({damage}) and so is the source's: {exc}"
                        report.damaged.append((label, exc_text))
                    else:
                        report.damaged.append((label, str(exc)))
                    continue
                except FileExistsError:
                    report.damaged.append((label, "another writer published this row at the destination meanwhile"))
                    continue
                (report.repaired if replace else report.copied).append(label)
        finally:
            exclusion.release()
    return report


def push(
    local: str | os.PathLike[str],
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> SyncReport:
    """Upload every committed row of the local store ``local`` that ``url`` lacks.

    Each rank folder goes to the same relative prefix. The destination's
    writer lease is held while rows are added, so a running writer there is
    not raced (:class:`CheckpointLockedError`). Damaged local rows are
    reported in :attr:`SyncReport.damaged` and not uploaded.
    """
    return copy_rows(open_store(local), FsspecRowStore(url, storage_options, retry=retry))


def pull(
    url: str,
    local: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
    verify: bool = False,
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
    return copy_rows(source, open_store(local), check_present=True, verify=verify)
