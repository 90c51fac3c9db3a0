"""Reading committed rows from any store: listing, validation and verification.

Written once over :class:`~restartable.store.RowStore`. Readers take no lock
and trust nothing they did not check: a row is listed only once its
manifest's checksum, its name and every listed file's size check out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._text import shown
from ..errors import CheckpointCorruptError
from ._base import RowPath, RowStore
from ._layout import (
    COMMITS_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    PAYLOAD_NAME,
    ROW_NAME,
    STAGING_PREFIX,
    TRASH_PREFIX,
    is_plain_name,
    row_dir_name,
    sequence_of,
)
from ._open import open_store
from .files import PayloadError, is_checksum
from .manifest import ManifestError, load_manifest

__all__ = [
    "COMMITS_DIR",
    "LOCK_NAME",
    "PAYLOAD_NAME",
    "Problem",
    "ROW_NAME",
    "Row",
    "STAGING_PREFIX",
    "Scan",
    "TRASH_PREFIX",
    "list_row_dirs",
    "open_row",
    "row_dir_name",
    "scan_rows",
    "verify_row",
]


@dataclass(frozen=True, eq=False)
class Row:
    """A committed row whose manifest and file sizes checked out."""

    store: RowStore
    name: str
    sequence: int
    body: dict[str, Any]

    @property
    def path(self) -> RowPath:
        """The row's directory (a :class:`~pathlib.Path`) or prefix (a :class:`~restartable.store.UrlPath`)."""
        return self.store.row_path(self.name)

    @property
    def commit_id(self) -> str:
        return self.name

    @property
    def files(self) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = self.body["files"]
        return files

    def read_payload(self, index: int, verify: bool = True) -> np.ndarray:
        """Read payload ``index``, checking its size and checksum.

        Raises :class:`CheckpointCorruptError` naming the row and the file.
        """
        if type(index) is not int or not 0 <= index < len(self.files):
            raise CheckpointCorruptError(
                f"row {self.path} references payload #{shown(index)}, which its manifest does not list",
                row=str(self.path),
            )
        entry = self.files[index]
        where = self.store.file_location(self.name, entry["name"])
        try:
            return self.store.read_payload(
                self.name, entry["name"], int(entry["size"]), entry["checksum"] if verify else None
            )
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(
                f"{where} is missing (row {self.commit_id})", row=str(self.path), file=where
            ) from exc
        except (PayloadError, OSError) as exc:
            raise CheckpointCorruptError(
                f"{where} is damaged: {exc} (row {self.commit_id})", row=str(self.path), file=where
            ) from exc

    def exists(self) -> bool:
        """Whether the row is still there (a writer may retire it while it is read)."""
        return self.store.row_exists(self.name)

    def load_all_payloads(self) -> Callable[[int], np.ndarray]:
        """Read and verify every payload now; return a loader over the results."""
        arrays = [self.read_payload(i) for i in range(len(self.files))]
        return arrays.__getitem__


@dataclass
class Problem:
    """Something wrong with a row, as reported by :func:`scan_rows` and :func:`verify_row`."""

    row: str
    file: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.file else self.row
        return f"{where}: {self.reason}"


@dataclass
class Scan:
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _files_problem(files: Any) -> str | None:
    """What is wrong with a manifest's ``files`` list, or ``None``.

    Checked before any entry is used: each is ``{"name", "size",
    "checksum"}`` with a plain file name inside the row (never a path), a
    non-negative integer size and a 16-hex-digit checksum, and no name twice.
    """
    if not isinstance(files, list):
        return f"'files' is a {type(files).__name__}, not a list"
    seen: set[str] = set()
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            return f"files[{index}] is a {type(entry).__name__}, not an object"
        name, size, checksum = entry.get("name"), entry.get("size"), entry.get("checksum")
        if not is_plain_name(name):
            return f"files[{index}] has name {shown(name)}, not a plain file name inside the row"
        if name in seen:
            return f"files[{index}] names {name!r} a second time"
        seen.add(name)
        if type(size) is not int or size < 0:
            return f"files[{index}] ({name}) has size {shown(size)}, not a non-negative integer"
        if not is_checksum(checksum):
            return f"files[{index}] ({name}) has checksum {shown(checksum)}, not 16 hex digits"
    return None


def validate_row(store: RowStore, name: str, raw: bytes | BaseException, sequence: int | None = None) -> Row:
    """A row from its raw manifest (or the error reading it): checksum, name and file sizes checked.

    Raises :class:`CheckpointCorruptError` naming the row and the file at fault.
    """
    path = store.row_path(name)
    manifest = store.file_location(name, MANIFEST_NAME)
    if sequence is None:
        sequence = sequence_of(name)
        if sequence is None:
            raise CheckpointCorruptError(f"{path} is not a row directory", row=str(path))
    if isinstance(raw, FileNotFoundError):
        raise CheckpointCorruptError(f"{manifest} is missing", row=str(path), file=manifest)
    if isinstance(raw, OSError):
        raise CheckpointCorruptError(f"{manifest} cannot be read: {raw}", row=str(path), file=manifest)
    if isinstance(raw, BaseException):
        raise raw
    try:
        body = load_manifest(raw)
    except ManifestError as exc:
        raise CheckpointCorruptError(f"{manifest} is damaged: {exc}", row=str(path), file=manifest) from exc
    if type(body.get("sequence")) is not int or body["sequence"] != sequence or body.get("commit_id") != name:
        raise CheckpointCorruptError(
            f"{manifest} belongs to row {shown(body.get('commit_id'))}, not {name!r}", row=str(path), file=manifest
        )
    problem = _files_problem(body.get("files"))
    if problem is not None:
        raise CheckpointCorruptError(f"{manifest} is damaged: {problem}", row=str(path), file=manifest)
    try:
        sizes = store.file_sizes(name, [entry["name"] for entry in body["files"]]) if body["files"] else {}
    except OSError as exc:
        raise CheckpointCorruptError(f"{path} cannot be read: {exc}", row=str(path)) from exc
    for entry in body["files"]:
        size = sizes[entry["name"]]
        if size == entry["size"]:
            continue  # the common case, kept cheap: a row may list a million files
        where = store.file_location(name, entry["name"])
        if isinstance(size, FileNotFoundError):
            raise CheckpointCorruptError(f"{where} is missing", row=str(path), file=where) from size
        if isinstance(size, OSError):
            raise CheckpointCorruptError(f"{where} cannot be read: {size}", row=str(path), file=where) from size
        raise CheckpointCorruptError(
            f"{where} is {size} bytes, the manifest says {entry['size']} (truncated or altered)",
            row=str(path),
            file=where,
        )
    return Row(store=store, name=name, sequence=sequence, body=body)


def _store_and_name(target: RowStore | str | os.PathLike[str], name: str | None) -> tuple[RowStore, str]:
    """A store and row name from either, or from the path of a local row directory."""
    if name is not None:
        return open_store(target), name
    path = Path(target)  # type: ignore[arg-type]
    return open_store(path.parent.parent), path.name


def open_row(target: RowStore | str | os.PathLike[str], name: str | None = None, sequence: int | None = None) -> Row:
    """Read and validate one row: ``open_row(store, name)``, or ``open_row(row_directory)``.

    Raises :class:`CheckpointCorruptError` naming the row and the file at fault.
    """
    store, name = _store_and_name(target, name)
    try:
        raw: bytes | BaseException = store.read_manifest(name)
    except OSError as exc:
        raw = exc
    return validate_row(store, name, raw, sequence)


def scan_rows(target: RowStore | str | os.PathLike[str], attempts: int = 5) -> Scan:
    """Every committed row of a store, oldest first; damaged rows become problems.

    A writer may retire a row between our listing and our reading it; then
    the listing is stale (a newer row may have been published since), so the
    scan starts over, a bounded number of times.
    """
    store = open_store(target)
    scan = Scan()
    for _attempt in range(attempts):
        listed = store.list_rows()
        fetched = store.read_manifests([name for _, name in listed])
        scan, stale = Scan(), False
        for sequence, name in listed:
            try:
                scan.rows.append(validate_row(store, name, fetched[name], sequence))
            except CheckpointCorruptError as exc:
                if not store.row_exists(name):
                    stale = True  # retired while we read it: not damage
                    continue
                scan.problems.append(Problem(row=str(store.row_path(name)), file=exc.file, reason=str(exc)))
        if not stale:
            break
    return scan


def list_row_dirs(target: RowStore | str | os.PathLike[str]) -> list[tuple[int, RowPath]]:
    """Committed rows by sequence number, as ``(sequence, row path)``; nothing read but names."""
    store = open_store(target)
    return [(sequence, store.row_path(name)) for sequence, name in store.list_rows()]


def verify_row(target: RowStore | str | os.PathLike[str], name: str | None = None) -> list[Problem]:
    """Check a row completely: manifest checksum, every file's size and checksum.

    ``verify_row(store, name)``, or ``verify_row(row_directory)``. Files in
    the row that the manifest does not list are reported too.
    """
    store, name = _store_and_name(target, name)
    where = str(store.row_path(name))
    try:
        row = open_row(store, name)
    except CheckpointCorruptError as exc:
        if not store.row_exists(name) and not store.row_files(name):
            return []  # retired by its writer while we checked it: nothing to report
        return [Problem(row=where, file=exc.file, reason=str(exc))]
    problems = []
    listed = {MANIFEST_NAME, *(entry["name"] for entry in row.files)}
    try:
        hashed = dict(store.hash_files(name, [entry["name"] for entry in row.files]))
    except OSError as exc:  # the row itself became unreadable
        hashed = dict.fromkeys((entry["name"] for entry in row.files), exc)
    for entry in row.files:
        result = hashed[entry["name"]]
        if result == (entry["size"], entry["checksum"]):
            continue
        file = store.file_location(name, entry["name"])
        if isinstance(result, OSError):
            problems.append(Problem(where, file, f"cannot be read: {result}"))
            continue
        size, digest = result
        if size != entry["size"]:
            problems.append(Problem(where, file, f"is {size} bytes, the manifest says {entry['size']}"))
        else:
            problems.append(
                Problem(where, file, f"checksum {digest} does not match the manifest's {entry['checksum']}")
            )
    present = store.row_files(name)
    if not present:
        return []  # retired by its writer while we checked it: nothing to report
    for file in sorted(present - listed):
        problems.append(Problem(where, store.file_location(name, file), "is not listed in the manifest"))
    return problems
