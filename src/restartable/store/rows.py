"""Reading committed rows: layout, scanning, validation and verification.

A rank directory looks like this::

    <rank_path>/
        .lock                          advisory writer lock (flock)
        commits/
            000000000007-<uuid>/       one committed row, immutable
                manifest.json          self-checksummed, lists every file
                p000000.npy            array payloads referenced by the manifest
        .staging-<uuid>/               a commit in progress (ignored by readers)
        .trash-<uuid>/                 a retired row being deleted (ignored)

Readers take no lock and trust nothing they did not check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointCorruptError
from .files import PayloadError, hash_file, read_payload
from .manifest import MANIFEST_NAME, ManifestError, load_manifest

COMMITS_DIR = "commits"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
LOCK_NAME = ".lock"
ROW_NAME = re.compile(r"^(\d{12})-([0-9a-f]{32})$")
PAYLOAD_NAME = "p{:06d}.npy"


def row_dir_name(sequence: int, uid: str) -> str:
    return f"{sequence:012d}-{uid}"


@dataclass(frozen=True)
class Row:
    """A committed row whose manifest and file sizes checked out."""

    path: Path
    sequence: int
    body: dict[str, Any]

    @property
    def commit_id(self) -> str:
        return self.path.name

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.body["files"]

    def read_payload(self, index: int, verify: bool = True) -> np.ndarray:
        """Read payload ``index``, checking its size and checksum.

        Raises :class:`CheckpointCorruptError` naming the row and the file.
        """
        try:
            entry = self.files[index]
        except (IndexError, TypeError) as exc:
            raise CheckpointCorruptError(
                f"row {self.path} references payload #{index}, which its manifest does not list",
                row=str(self.path),
            ) from exc
        path = self.path / entry["name"]
        try:
            return read_payload(path, int(entry["size"]), entry["checksum"] if verify else None)
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"{path} is missing (row {self.commit_id})", row=str(self.path), file=str(path)) from exc
        except (PayloadError, OSError) as exc:
            raise CheckpointCorruptError(f"{path} is damaged: {exc} (row {self.commit_id})", row=str(self.path), file=str(path)) from exc

    def exists(self) -> bool:
        """Whether the row is still there (a writer may retire it while it is read)."""
        return self.path.exists()

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


def commits_path(rank_path: Path) -> Path:
    return Path(rank_path) / COMMITS_DIR


def list_row_dirs(rank_path: Path) -> list[tuple[int, Path]]:
    """Committed row directories by sequence number (names only, nothing read)."""
    base = commits_path(rank_path)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = ROW_NAME.match(name)
        if match:
            found.append((int(match.group(1)), base / name))
    found.sort()
    return found


def open_row(path: Path, sequence: int | None = None) -> Row:
    """Read and validate one row's manifest and file sizes.

    Raises :class:`CheckpointCorruptError` naming the row and the file at fault.
    """
    path = Path(path)
    if sequence is None:
        match = ROW_NAME.match(path.name)
        if not match:
            raise CheckpointCorruptError(f"{path} is not a row directory", row=str(path))
        sequence = int(match.group(1))
    manifest_path = path / MANIFEST_NAME
    try:
        with open(manifest_path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as exc:
        raise CheckpointCorruptError(f"{manifest_path} is missing", row=str(path), file=str(manifest_path)) from exc
    except OSError as exc:
        raise CheckpointCorruptError(f"{manifest_path} cannot be read: {exc}", row=str(path), file=str(manifest_path)) from exc
    try:
        body = load_manifest(raw)
    except ManifestError as exc:
        raise CheckpointCorruptError(f"{manifest_path} is damaged: {exc}", row=str(path), file=str(manifest_path)) from exc
    if body.get("sequence") != sequence or body.get("commit_id") != path.name:
        raise CheckpointCorruptError(
            f"{manifest_path} belongs to row {body.get('commit_id')!r}, not {path.name!r}",
            row=str(path),
            file=str(manifest_path),
        )
    for entry in body.get("files", []):
        file_path = path / entry["name"]
        try:
            size = os.stat(file_path).st_size
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"{file_path} is missing", row=str(path), file=str(file_path)) from exc
        if size != entry["size"]:
            raise CheckpointCorruptError(
                f"{file_path} is {size} bytes, the manifest says {entry['size']} (truncated or altered)",
                row=str(path),
                file=str(file_path),
            )
    return Row(path=path, sequence=sequence, body=body)


def scan_rows(rank_path: Path, attempts: int = 5) -> Scan:
    """Every committed row of a rank directory, oldest first; damaged rows become problems.

    A writer may retire a row between our listing and our reading it; then
    the listing is stale (a newer row may have been published since), so the
    scan starts over, a bounded number of times.
    """
    for _attempt in range(attempts):
        scan, stale = Scan(), False
        for sequence, path in list_row_dirs(rank_path):
            try:
                scan.rows.append(open_row(path, sequence))
            except CheckpointCorruptError as exc:
                if not path.exists():
                    stale = True  # retired while we read it: not damage
                    continue
                scan.problems.append(Problem(row=str(path), file=exc.file, reason=str(exc)))
        if not stale:
            break
    return scan


def verify_row(path: Path) -> list[Problem]:
    """Check a row completely: manifest checksum, every file's size and checksum.

    Files in the row directory that the manifest does not list are reported too.
    """
    path = Path(path)
    try:
        row = open_row(path)
    except CheckpointCorruptError as exc:
        return [Problem(row=str(path), file=exc.file, reason=str(exc))]
    problems = []
    listed = {MANIFEST_NAME}
    for entry in row.files:
        listed.add(entry["name"])
        file_path = path / entry["name"]
        try:
            size, digest = hash_file(file_path)
        except OSError as exc:
            problems.append(Problem(str(path), str(file_path), f"cannot be read: {exc}"))
            continue
        if size != entry["size"]:
            problems.append(Problem(str(path), str(file_path), f"is {size} bytes, the manifest says {entry['size']}"))
        elif digest != entry["checksum"]:
            problems.append(Problem(str(path), str(file_path), f"checksum {digest} does not match the manifest's {entry['checksum']}"))
    try:
        present = set(os.listdir(path))
    except FileNotFoundError:
        return []  # retired by its writer while we checked it: nothing to report
    for name in sorted(present - listed):
        problems.append(Problem(str(path), str(path / name), "is not listed in the manifest"))
    return problems
