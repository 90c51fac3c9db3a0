"""Copy committed catalog rows between a local store and an object store.

:func:`push` uploads the local rows a URL lacks; :func:`pull` downloads the
rows a local store lacks. Both copy whole rows by commit id, with the same
protocol a writer uses (payloads first, manifest last; locally a staging
directory renamed into ``commits/``), verify every file's checksum on the
way, and never copy a damaged row: it is reported and skipped. Rows
already present remotely are skipped without being read; a row already
present locally is checked (manifest and file sizes, or every checksum with
``verify=True``) and, if damaged, replaced by the remote copy.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointCorruptError
from ..store import WriterLock, clean_leftovers, list_row_dirs, scan_rows, verify_row
from ..store.files import CHUNK_BYTES, fsync_dir, new_hasher, write_bytes
from ..store.manifest import MANIFEST_NAME, dump_manifest
from ..store.object_rows import Lease, ObjectRow, scan_object_rows
from ..store.objects import ObjectStore, RetryPolicy, join_url
from ..store.rows import COMMITS_DIR, STAGING_PREFIX, TRASH_PREFIX, Row, open_row

_RANK = re.compile(r"^rank_\d{6}$")


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
    """Rows whose local copy was damaged and was replaced by the remote one (:func:`pull` only)."""
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


def local_ranks(path: Path) -> list[str]:
    """Relative rank folders of a local store: ``""`` (single rank) and/or ``rank_*``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    ranks = sorted(p.name for p in path.iterdir() if p.is_dir() and _RANK.match(p.name))
    if (path / COMMITS_DIR).is_dir():
        ranks.insert(0, "")
    if not ranks:
        raise FileNotFoundError(f"{path} is not a restartable checkpoint (no commits/ folder and no rank_* folders)")
    return ranks


def remote_ranks(store: ObjectStore) -> list[str]:
    """Relative rank prefixes under a URL that hold committed rows."""
    ranks: set[str] = set()
    for key in store.list(""):
        parts = key.split("/")
        if parts[0] == COMMITS_DIR:
            ranks.add("")
        elif len(parts) > 1 and _RANK.match(parts[0]) and parts[1] == COMMITS_DIR:
            ranks.add(parts[0])
    return sorted(ranks)


def _verified_chunks(path: Path, size: int, checksum: str, failures: list[str]) -> Callable[[], Iterator[bytes]]:
    """A chunk stream of a local file that records a size or checksum mismatch."""

    def chunks() -> Iterator[bytes]:
        failures.clear()
        hasher, seen = new_hasher(), 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                hasher.update(chunk)
                seen += len(chunk)
                yield chunk
        if seen != size:
            failures.append(f"{path} is {seen} bytes, the manifest says {size}")
        elif hasher.hexdigest() != checksum:
            failures.append(f"{path} has checksum {hasher.hexdigest()}, the manifest says {checksum}")

    return chunks


def _push_row(row: Row, store: ObjectStore, lease: Lease) -> int:
    key = f"{COMMITS_DIR}/{row.commit_id}"
    uploaded: list[str] = []
    try:
        for entry in row.files:
            failures: list[str] = []
            target = f"{key}/{entry['name']}"
            store.put_stream(target, _verified_chunks(Path(row.path) / entry["name"], int(entry["size"]), entry["checksum"], failures))
            uploaded.append(target)
            if failures:
                raise CheckpointCorruptError(failures[0], row=str(row.path), file=str(Path(row.path) / entry["name"]))
        lease.check()
        store.put_bytes(f"{key}/{MANIFEST_NAME}", dump_manifest(row.body), create=True)
    except FileExistsError:
        raise  # the row exists there now: its payloads are no longer ours to delete
    except BaseException:
        store.delete(uploaded)  # manifest-less uploads are not a row; do not leave them behind
        raise
    return sum(int(f["size"]) for f in row.files)


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
    report = SyncReport()
    base = Path(local).expanduser()
    for rank in local_ranks(base):
        rank_path = base / rank if rank else base
        store = ObjectStore(join_url(url, rank), storage_options, retry)
        scan = scan_rows(rank_path)
        for problem in scan.problems:
            report.damaged.append((_label(rank, Path(problem.row).name), problem.reason))
        lease = Lease(store)
        lease.acquire()
        try:
            remote = scan_object_rows(store)
            present = {row.commit_id for row in remote.rows}
            damaged_there = {problem.row.rstrip("/").rsplit("/", 1)[-1]: problem.reason for problem in remote.problems}
            for row in scan.rows:
                label = _label(rank, row.commit_id)
                if row.commit_id in present:
                    report.present.append(label)
                    continue
                if row.commit_id in damaged_there:
                    # Never overwrite a committed (if damaged) row: its manifest
                    # stays, and our payloads would only mix with its own.
                    report.damaged.append(
                        (label, f"the destination holds a damaged copy of this row ({damaged_there[row.commit_id]}); "
                         "delete it there to push it again")
                    )
                    continue
                try:
                    report.bytes_copied += _push_row(row, store, lease)
                except CheckpointCorruptError as exc:
                    report.damaged.append((label, str(exc)))
                    continue
                except FileExistsError:
                    report.damaged.append((label, "another writer published this row at the destination meanwhile"))
                    continue
                report.copied.append(label)
        finally:
            lease.release()
    return report


def _pull_row(row: ObjectRow, rank_path: Path) -> int:
    assert row.store is not None
    staging = rank_path / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for entry in row.files:
            target = staging / entry["name"]
            size, digest = row.store.get_file(f"{row.key}/{entry['name']}", target)
            url = str(row.path / entry["name"])
            if size != entry["size"]:
                raise CheckpointCorruptError(f"{url} is {size} bytes, the manifest says {entry['size']}", row=str(row.path), file=url)
            if digest != entry["checksum"]:
                raise CheckpointCorruptError(
                    f"{url} has checksum {digest}, the manifest says {entry['checksum']}", row=str(row.path), file=url
                )
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        write_bytes(staging / MANIFEST_NAME, dump_manifest(row.body))
        fsync_dir(staging)
        commits = rank_path / COMMITS_DIR
        os.rename(staging, commits / row.commit_id)
        fsync_dir(commits)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sum(int(f["size"]) for f in row.files)


def _describe(where: str, reason: str) -> str:
    return reason if where in reason else f"{where} {reason}"


def _local_damage(path: Path, remote: ObjectRow, verify: bool) -> str | None:
    """Why the local copy of ``remote`` at ``path`` cannot be trusted, or ``None`` if it is whole."""
    if verify:
        problems = verify_row(path)
        if problems:
            return "; ".join(_describe(problem.file or problem.row, problem.reason) for problem in problems)
    try:
        row = open_row(path)
    except CheckpointCorruptError as exc:
        return str(exc)
    if row.body != remote.body:
        return f"{path / MANIFEST_NAME} differs from the remote manifest of the same row"
    return None


def _repair_row(row: ObjectRow, path: Path, rank_path: Path) -> int:
    """Replace the damaged local row ``path`` with the remote ``row``; the damaged copy stays if that fails."""
    # Moved aside, not deleted, until the remote copy is in: a remote copy
    # that fails its checksums must not cost the only local one.
    aside = rank_path / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
    os.rename(path, aside)
    try:
        copied = _pull_row(row, rank_path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return copied


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
    report = SyncReport()
    base = Path(local).expanduser()
    root = ObjectStore(url, storage_options, retry)
    ranks = remote_ranks(root)
    if not ranks:
        raise FileNotFoundError(f"{url} holds no restartable checkpoint rows")
    for rank in ranks:
        store = ObjectStore(join_url(url, rank), storage_options, retry)
        rank_path = base / rank if rank else base
        (rank_path / COMMITS_DIR).mkdir(parents=True, exist_ok=True)
        lock = WriterLock(rank_path)
        lock.acquire()
        try:
            clean_leftovers(rank_path, warn=False)
            present = {path.name: path for _, path in list_row_dirs(rank_path)}
            scan = scan_object_rows(store)
            for problem in scan.problems:
                report.damaged.append((_label(rank, problem.row.rstrip("/").rsplit("/", 1)[-1]), problem.reason))
            for row in scan.rows:
                label = _label(rank, row.commit_id)
                if row.commit_id in present:
                    damage = _local_damage(present[row.commit_id], row, verify)  # type: ignore[arg-type]
                    if damage is None:
                        report.present.append(label)
                        continue
                    try:
                        report.bytes_copied += _repair_row(row, present[row.commit_id], rank_path)  # type: ignore[arg-type]
                    except CheckpointCorruptError as exc:
                        report.damaged.append((label, f"the local copy is damaged ({damage}) and so is the remote one: {exc}"))
                        continue
                    report.repaired.append(label)
                    continue
                try:
                    report.bytes_copied += _pull_row(row, rank_path)  # type: ignore[arg-type]
                except CheckpointCorruptError as exc:
                    report.damaged.append((label, str(exc)))
                    continue
                report.copied.append(label)
        finally:
            lock.release()
    return report
