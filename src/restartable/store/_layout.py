"""Names on disk and in buckets: the one place the layout of a store is spelled.

A store (a local directory or an object-store prefix) holds rows, or one
folder of rows per rank::

    <store>/
        .lock                          writer lock (flock) or lease (JSON)
        HEAD                           newest committed sequence (multi-rank hint)
        commits/
            000000000007-<uuid>/       one committed row, immutable
                manifest.json          self-checksummed, lists every file
                p000000.npy            array payloads referenced by the manifest
        .staging-<uuid>/               a commit in progress (local stores)
        .trash-<uuid>/                 a retired row being deleted (local stores)
        rank_000003/                   the same, for rank 3 of a multi-rank run
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

__all__ = [
    "COMMITS_DIR",
    "HEAD_NAME",
    "LOCAL_PROTOCOLS",
    "LOCK_NAME",
    "MANIFEST_NAME",
    "MAX_SEQUENCE",
    "PAYLOAD_NAME",
    "RANK_FOLDER",
    "ROW_NAME",
    "STAGING_PREFIX",
    "TRASH_PREFIX",
    "is_plain_name",
    "is_url",
    "join_url",
    "rank_folder_name",
    "rank_of_folder",
    "row_dir_name",
    "sequence_of",
    "url_protocol",
]

COMMITS_DIR = "commits"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
LOCK_NAME = ".lock"
HEAD_NAME = "HEAD"
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "p{:06d}.npy"
# Exactly twelve digits: a row named otherwise is not a row, whatever it holds.
ROW_NAME = re.compile(r"([0-9]{12})-([0-9a-f]{32})")
# The largest sequence number a row name can hold. A writer refuses to number
# a row past it rather than write one that readers would never list.
MAX_SEQUENCE = 10**12 - 1
# A file of a row: one plain name inside the row directory. No separators, no
# leading dot (``.``, ``..``, hidden files), no control characters; the
# length fits every file system and object store.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
RANK_FOLDER = re.compile(r"rank_([0-9]{6})")

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
LOCAL_PROTOCOLS = frozenset({"file", "local"})


def row_dir_name(sequence: int, uid: str) -> str:
    """The name of row ``sequence`` with unique id ``uid`` (32 hex digits)."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {sequence} does not fit a row name (0 to {MAX_SEQUENCE})")
    return f"{sequence:012d}-{uid}"


def is_plain_name(name: Any) -> TypeGuard[str]:
    """Whether ``name`` may name a file inside a row (``p000003.npy`` may; ``../x``, ``a/b``, ``.x`` may not)."""
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None and name != MANIFEST_NAME


def sequence_of(name: str) -> int | None:
    """The sequence number of a row name, or ``None`` if ``name`` is not one."""
    match = ROW_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def rank_folder_name(rank: int) -> str:
    """The folder (or prefix) of ``rank``'s rows in a multi-rank store: ``rank_000003``."""
    return f"rank_{rank:06d}"


def rank_of_folder(name: str) -> int | None:
    """The rank whose folder is ``name``, or ``None`` if it is not a rank folder."""
    match = RANK_FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


def is_url(location: Any) -> bool:
    """Whether ``location`` is a ``protocol://`` URL rather than a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def url_protocol(url: str) -> str:
    """The protocol of a URL, lower case (``"file"`` for anything that is not a URL)."""
    match = _URL.match(url)
    return match.group(1).lower() if match else "file"


def join_url(base: str, *parts: str) -> str:
    """``base/part/...`` with exactly one ``/`` between parts."""
    base = base.rstrip("/")
    tail = "/".join(part.strip("/") for part in parts if part)
    return f"{base}/{tail}" if tail else base
