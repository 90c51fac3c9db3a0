"""Reading committed rows from any store: listing, validation and verification.

Written once over :class:`~restartable.store.RowStore`. Readers take no lock
and trust nothing they did not check: a row is listed only once its
manifest's checksum, its name and every listed file's size check out.
"""

from __future__ import annotations

import os
import random
import time
import weakref
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
from .files import PayloadError, checksum_bytes, is_checksum
from .manifest import ManifestError, load_manifest
from .packs import ArrayTable, array_table, member

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
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

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

    @property
    def arrays(self) -> ArrayTable:
        """Where each payload is: its file, and its place in a pack (checked on first use).

        Raises :class:`CheckpointCorruptError` naming the manifest if its
        ``arrays`` are malformed.
        """
        table = self._cache.get("arrays")
        if table is None:
            try:
                table = self._cache["arrays"] = array_table(self.body)
            except PayloadError as exc:
                manifest = self.store.file_location(self.name, MANIFEST_NAME)
                raise CheckpointCorruptError(
                    f"{manifest} is damaged: {exc}", row=str(self.path), file=manifest
                ) from exc
        return table

    def payload_identity(self, index: int) -> tuple[int, str] | None:
        """Size and checksum of payload ``index``'s bytes (what is equal when the array is), if it has one."""
        arrays = self.arrays
        if not 0 <= index < len(arrays):
            return None
        entry = arrays.entries[index]
        if entry is not None:
            return entry["size"], entry["checksum"]
        listed = self._file_entries()[arrays.files[index]]
        return listed["size"], listed["checksum"]

    def read_payload(self, index: int, verify: bool = True) -> np.ndarray:
        """Read payload ``index``, checking its size and checksum.

        A packed array is a view of its pack, which is read once and kept
        while any array of it is alive. Raises
        :class:`CheckpointCorruptError` naming the row and the file (and, in
        a pack, the array) at fault.
        """
        arrays = self.arrays
        if type(index) is not int or not 0 <= index < len(arrays):
            raise CheckpointCorruptError(
                f"row {self.path} references payload #{shown(index)}, which its manifest does not list",
                row=str(self.path),
            )
        file, entry = arrays.files[index], arrays.entries[index]
        try:
            if entry is None:
                listed = self._file_entries()[file]
                return self.store.read_payload(self.name, file, listed["size"], listed["checksum"] if verify else None)
            pack, viewed = self._pack(file, verify)  # its errors name the damaged arrays
            try:
                array = member(pack, entry)
            except PayloadError as exc:
                raise PayloadError(f"payload #{index} {exc}") from None
        except (PayloadError, OSError) as exc:
            # Inline rather than a context manager: restoring a state of
            # ten thousand packed arrays takes this path ten thousand times.
            raise self._corrupt(file, exc) from exc
        if index in viewed:
            # Read twice (two components bound to one state): the first
            # caller owns the view, and two objects must never share memory.
            copied: np.ndarray = array.copy()
            return copied
        viewed.add(index)
        return array

    def check_pack(self, file: str) -> None:
        """Read pack ``file`` and check its checksum; :class:`CheckpointCorruptError` names the damaged arrays."""
        try:
            self._pack(file, verify=True)
        except (PayloadError, OSError) as exc:
            raise self._corrupt(file, exc) from exc

    def _corrupt(self, file: str, exc: BaseException) -> CheckpointCorruptError:
        """The error for ``exc``, raised reading ``file`` of this row, naming the file."""
        where = self.store.file_location(self.name, file)
        what = "is missing" if isinstance(exc, FileNotFoundError) else f"is damaged: {exc}"
        return CheckpointCorruptError(f"{where} {what} (row {self.commit_id})", row=str(self.path), file=where)

    def _file_entries(self) -> dict[str, dict[str, Any]]:
        entries = self._cache.get("files")
        if entries is None:
            entries = self._cache["files"] = {entry["name"]: entry for entry in self.files}
        return entries

    def _pack(self, file: str, verify: bool) -> tuple[np.ndarray, set[int]]:
        """The bytes of pack ``file``, read (and checked) once while any array viewing them is alive.

        Also the payload indices already handed out as views of these bytes.
        """
        cached = self._cache.get(("pack", file)) or (None if verify else self._cache.get(("unverified", file)))
        if cached is not None:
            owner, start, size, viewed = cached
            alive = owner()
            if alive is not None:
                pack: np.ndarray = alive[start : start + size]
                return pack, viewed
        listed = self._file_entries()[file]
        pack, digest = self.store.read_file(self.name, file, listed["size"])
        if verify and digest != listed["checksum"]:
            raise PayloadError(self._pack_damage(file, pack, digest))
        # The arrays are views of the buffer's owner: remember it only weakly,
        # so that a row read once holds no memory its arrays do not.
        owner = pack.base if isinstance(pack.base, np.ndarray) else pack
        key = ("pack" if verify else "unverified", file)
        fresh: set[int] = set()
        self._cache[key] = (weakref.ref(owner), pack.ctypes.data - owner.ctypes.data, pack.size, fresh)
        held = self._cache.get("held")
        if held is not None:
            held.append(pack)
        return pack, fresh

    def _pack_damage(self, file: str, pack: np.ndarray, digest: str) -> str:
        """What is wrong with a pack whose checksum failed: which arrays, by their own checksums."""
        damaged = [
            f"payload #{index} (bytes {entry['offset']} to {entry['offset'] + entry['size']})"
            for index, (name, entry) in enumerate(zip(self.arrays.files, self.arrays.entries, strict=True))
            if name == file
            and entry is not None
            and checksum_bytes(pack[entry["offset"] : entry["offset"] + entry["size"]].data) != entry["checksum"]
        ]
        found = f"; damaged: {', '.join(damaged[:10])}" if damaged else "; no array's bytes changed (damage in padding)"
        more = f" and {len(damaged) - 10} more" if len(damaged) > 10 else ""
        return f"checksum {digest} does not match the manifest's {self._file_entries()[file]['checksum']}{found}{more}"

    def exists(self) -> bool:
        """Whether the row is still there (a writer may retire it while it is read)."""
        return self.store.row_exists(self.name)

    def load_all_payloads(self) -> Callable[[int], np.ndarray]:
        """Read and verify every payload now (each pack once); return a loader over the results."""
        self._cache["held"] = []  # every pack read stays alive until all its arrays are taken
        try:
            arrays = [self.read_payload(index) for index in range(len(self.arrays))]
        finally:
            del self._cache["held"]
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


def _pack_problem(row: Row, file: str) -> str:
    """Which arrays of a pack whose checksum failed are damaged (the pack is read again to tell)."""
    try:
        row.check_pack(file)
    except CheckpointCorruptError as exc:
        return str(exc.__cause__ or exc)  # the cause says what, without the path the problem names already
    return "checksum changed while it was verified (read again, it matches)"


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


def scan_rows(target: RowStore | str | os.PathLike[str], attempts: int = 20) -> Scan:
    """Every committed row of a store, oldest first; damaged rows become problems.

    A writer may retire a row between our listing and our reading it; then
    the listing is stale (a newer row may have been published since), so the
    scan starts over, a bounded number of times. A writer that commits as
    fast as the reader reads (on an object store, with one row kept) can
    fall into step with it, retiring the listed row each time: after a few
    stale listings the reader waits a random few milliseconds first.
    """
    store = open_store(target)
    scan = Scan()
    for attempt in range(attempts):
        if attempt >= 3:
            time.sleep(random.uniform(0, 0.002 * attempt))
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
    try:
        packs = {file for file, entry in zip(row.arrays.files, row.arrays.entries, strict=True) if entry is not None}
    except CheckpointCorruptError as exc:
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
        elif entry["name"] in packs:
            problems.append(Problem(where, file, _pack_problem(row, entry["name"])))
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
