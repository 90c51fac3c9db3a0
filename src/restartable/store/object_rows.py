"""Rows on object stores: the commit protocol without rename.

A rank prefix on an object store looks like this::

    <rank_url>/
        .lock                                writer lease (JSON: owner, host, pid, expiry)
        commits/
            000000000007-<uuid>/
                p000000.npy                  array payloads, uploaded first
                manifest.json                self-checksummed, uploaded last, create-only

The manifest is the commit point: until it exists the row does not, and a
row is retired by deleting its manifest first. Readers list ``commits/``,
read every manifest (in one batch of concurrent requests), check each
listed file's size against the listing, and verify checksums when a row is
restored, exactly as for rows on a local disk.

Object stores have no ``flock``. A writer holds a *lease*: the ``.lock``
object, created only if absent (S3 ``If-None-Match``), refreshed by a
heartbeat thread and checked before every manifest is written. A lease
whose holder stopped refreshing it (a killed node) expires after
``LEASE_SECONDS``; one held by a dead process on the same host is taken
over at once. A writer that finds its lease taken refuses to publish.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointCorruptError, CheckpointLockedError, CheckpointRemoteError, CheckpointWriteError
from .files import PayloadError, PreparedArray, read_npy
from .manifest import MANIFEST_NAME, ManifestError, dump_manifest, load_manifest
from .objects import STREAM_BYTES, ObjectStore
from .rows import COMMITS_DIR, PAYLOAD_NAME, ROW_NAME, Problem, Row, Scan, row_dir_name
from .writer import Snapshot, row_body

LEASE_NAME = ".lock"
LEASE_SECONDS = float(os.environ.get("RESTARTABLE_LEASE_SECONDS", "30"))


class UrlPath:
    """A minimal path-like name of an object-store prefix (``/``, ``name``, ``parent``)."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self.url.rsplit("/", 1)[0])

    def __truediv__(self, part: str) -> UrlPath:
        return UrlPath(f"{self.url}/{str(part).strip('/')}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


@dataclass(frozen=True, eq=False)
class ObjectRow(Row):
    """A committed row on an object store."""

    store: ObjectStore | None = None
    key: str = ""

    def read_payload(self, index: int, verify: bool = True) -> np.ndarray:
        try:
            entry = self.files[index]
        except (IndexError, TypeError) as exc:
            raise CheckpointCorruptError(
                f"row {self.path} references payload #{index}, which its manifest does not list", row=str(self.path)
            ) from exc
        assert self.store is not None
        key = f"{self.key}/{entry['name']}"
        url = self.store.url_of(key)
        try:
            data = self.store.get_bytes(key)
            return read_npy(io.BytesIO(data), len(data), int(entry["size"]), entry["checksum"] if verify else None)
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"{url} is missing (row {self.commit_id})", row=str(self.path), file=url) from exc
        except PayloadError as exc:
            raise CheckpointCorruptError(f"{url} is damaged: {exc} (row {self.commit_id})", row=str(self.path), file=url) from exc

    def exists(self) -> bool:
        assert self.store is not None
        return self.store.exists(f"{self.key}/{MANIFEST_NAME}")


def _group_rows(listing: dict[str, int]) -> dict[str, dict[str, int]]:
    """Objects under ``commits/`` grouped by row name: row -> {file name: size}."""
    rows: dict[str, dict[str, int]] = {}
    for key, size in listing.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == COMMITS_DIR and ROW_NAME.match(parts[1]):
            rows.setdefault(parts[1], {})[parts[2]] = size
    return rows


def _validate(store: ObjectStore, name: str, raw: bytes | BaseException, files: dict[str, int]) -> ObjectRow:
    key = f"{COMMITS_DIR}/{name}"
    path = UrlPath(store.url_of(key))
    manifest_url = str(path / MANIFEST_NAME)
    if isinstance(raw, FileNotFoundError):
        raise CheckpointCorruptError(f"{manifest_url} is missing", row=str(path), file=manifest_url)
    if isinstance(raw, BaseException):
        raise CheckpointRemoteError(f"reading {manifest_url} failed: {raw}", url=manifest_url) from raw
    try:
        body = load_manifest(raw)
    except ManifestError as exc:
        raise CheckpointCorruptError(f"{manifest_url} is damaged: {exc}", row=str(path), file=manifest_url) from exc
    sequence = int(name.split("-", 1)[0])
    if body.get("sequence") != sequence or body.get("commit_id") != name:
        raise CheckpointCorruptError(
            f"{manifest_url} belongs to row {body.get('commit_id')!r}, not {name!r}", row=str(path), file=manifest_url
        )
    for entry in body.get("files", []):
        url = str(path / entry["name"])
        if entry["name"] not in files:
            raise CheckpointCorruptError(f"{url} is missing", row=str(path), file=url)
        if files[entry["name"]] != entry["size"]:
            raise CheckpointCorruptError(
                f"{url} is {files[entry['name']]} bytes, the manifest says {entry['size']} (truncated or altered)",
                row=str(path),
                file=url,
            )
    return ObjectRow(path=path, sequence=sequence, body=body, store=store, key=key)  # type: ignore[arg-type]


def _fetch_manifests(store: ObjectStore, names: list[str]) -> dict[str, bytes | BaseException]:
    """Every named row's manifest, fetched concurrently where the filesystem can."""
    if not names:
        return {}
    paths = {store.path(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}"): name for name in names}

    def fetch() -> dict[str, bytes | BaseException]:
        found = store.fs.cat(list(paths), on_error="return")
        if not isinstance(found, dict):  # a single path comes back bare
            found = {next(iter(paths)): found}
        result: dict[str, bytes | BaseException] = {}
        for path, value in found.items():
            name = paths.get(path) or paths.get(store.fs._strip_protocol(path))
            if name is not None:
                result[name] = value
        return result

    fetched = store.call("reading manifests under", COMMITS_DIR, fetch)
    for name in names:
        fetched.setdefault(name, FileNotFoundError(name))
    return fetched


def scan_object_rows(store: ObjectStore, attempts: int = 5) -> Scan:
    """Every committed row under a rank prefix, oldest first; damaged rows become problems.

    Rows without a manifest are commits in progress (or interrupted) and are
    not rows at all: they are neither listed nor reported. A manifest that
    vanishes between the listing and its reading was retired by the writer,
    which may have published a newer row since: the scan starts over, a
    bounded number of times, as on a local disk.
    """
    for _attempt in range(attempts):
        listed = list_object_row_files(store)
        names = sorted(listed)
        fetched = _fetch_manifests(store, names)
        scan, stale = Scan(), False
        for name in names:
            try:
                scan.rows.append(_validate(store, name, fetched[name], listed[name]))
            except CheckpointCorruptError as exc:
                if isinstance(fetched[name], FileNotFoundError):
                    stale = True  # retired between listing and reading: not damage
                    continue
                scan.problems.append(Problem(row=exc.row or name, file=exc.file, reason=str(exc)))
        if not stale:
            break
    return scan


def list_object_row_files(store: ObjectStore) -> dict[str, dict[str, int]]:
    """The rows under a rank prefix (those with a manifest), as name -> {file name: size}; one listing, nothing read."""
    grouped = _group_rows(store.list(COMMITS_DIR))
    return {name: files for name, files in grouped.items() if MANIFEST_NAME in files}


def open_object_row(store: ObjectStore, name: str, files: dict[str, int]) -> ObjectRow:
    """Read and validate row ``name``'s manifest against its listed ``files`` (see :func:`list_object_row_files`).

    Raises :class:`CheckpointCorruptError` naming the object at fault (a
    missing manifest included: the caller tells retirement from damage).
    """
    try:
        raw: bytes | BaseException = store.get_bytes(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}")
    except FileNotFoundError as exc:
        raw = exc
    return _validate(store, name, raw, files)


def verify_object_row(row: ObjectRow) -> list[Problem]:
    """Check every payload of a row completely (size and checksum)."""
    problems = []
    for index, entry in enumerate(row.files):
        try:
            row.read_payload(index)
        except CheckpointCorruptError as exc:
            problems.append(Problem(str(row.path), str(row.path / entry["name"]), str(exc)))
    return problems


class Lease:
    """Exclusive, expiring ownership of a rank prefix on an object store."""

    def __init__(self, store: ObjectStore, seconds: float | None = None) -> None:
        self.store = store
        self.seconds = LEASE_SECONDS if seconds is None else seconds
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: BaseException | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "host": self.host, "pid": os.getpid(), "expires": time.time() + self.seconds}
        ).encode()

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_bytes(LEASE_NAME))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # an unreadable lease: treat as expired

    def _stale(self, holder: dict[str, Any]) -> bool:
        if not holder or float(holder.get("expires", 0)) < time.time():
            return True
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True  # its holder died on this host
            except PermissionError:
                return False
        return False

    def acquire(self, wait: float | None = None) -> None:
        """Take the lease, waiting up to ``wait`` seconds (default: one lease
        period, so that the lease of a writer killed on another node expires
        and a restarted job goes on by itself)."""
        if wait is None:
            wait = self.seconds + 5
        deadline = time.monotonic() + wait
        while True:
            try:
                self.store.put_bytes(LEASE_NAME, self._record(), create=True)
                break
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between our attempts
                if self._stale(holder):
                    self.store.delete([LEASE_NAME])
                    continue  # create-only again: of several takers, one wins
                if time.monotonic() >= deadline:
                    left = float(holder.get("expires", 0)) - time.time()
                    raise CheckpointLockedError(
                        f"{self.store.url} is being written by another writer (host {holder.get('host')}, "
                        f"process {holder.get('pid')}); its lease expires in {max(left, 0):.0f} s unless renewed. "
                        "Only one writer per checkpoint prefix (and rank) is allowed"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="restartable-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except BaseException as exc:  # reported by check() in the writer's thread
                self.lost = exc
                return

    def renew(self) -> None:
        holder = self._holder()
        if not holder or holder.get("owner") != self.owner:
            raise CheckpointLockedError(
                f"the writer lease of {self.store.url} was taken over by another writer "
                f"(host {holder.get('host') if holder else '?'}); this writer stops publishing rows"
            )
        self.store.put_bytes(LEASE_NAME, self._record())

    def check(self) -> None:
        """Raise if the lease is lost; called before every commit point."""
        if self.lost is not None:
            raise self.lost
        self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._held:
            self._held = False
            try:
                holder = self._holder()
                if holder and holder.get("owner") == self.owner:
                    self.store.delete([LEASE_NAME])
            except CheckpointRemoteError:
                pass  # the lease expires by itself

    @property
    def held(self) -> bool:
        return self._held


class ObjectRowWriter:
    """The single writer of one rank prefix on an object store.

    Same interface and guarantees as :class:`~restartable.store.RowWriter`:
    rows become visible only when whole, retention runs only after the new
    row is committed, and the pinned row outlives retention.
    """

    def __init__(self, store: ObjectStore, *, keep: int | None = None, lease_wait: float | None = None) -> None:
        self.store = store
        self.keep = keep
        self.rank_path = UrlPath(store.url)
        self.lease = Lease(store)
        self.lease.acquire(lease_wait)
        try:
            grouped = _group_rows(store.list(COMMITS_DIR))
            complete = sorted(name for name, files in grouped.items() if MANIFEST_NAME in files)
            # Uploads of interrupted commits: no manifest, so never rows. We hold the lease.
            leftovers = [f"{COMMITS_DIR}/{name}/{f}" for name, files in grouped.items() if name not in complete for f in files]
            store.delete(leftovers)
            self._files = {name: sorted(grouped[name]) for name in complete}
            self._rows: deque[tuple[int, str]] = deque((int(name.split("-", 1)[0]), name) for name in complete)
            sequences = [int(name.split("-", 1)[0]) for name in grouped]
            self._next_sequence = max(sequences) + 1 if sequences else 1
            self._pinned = self._find_pinned() if keep is not None else None
        except BaseException:
            self.lease.release()
            raise

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    def row_path(self, uid: str) -> UrlPath:
        return self.rank_path / COMMITS_DIR / row_dir_name(self._next_sequence, uid)

    def close(self) -> None:
        self.lease.release()

    def _find_pinned(self) -> str | None:
        names = [name for _, name in reversed(self._rows)]
        fetched = _fetch_manifests(self.store, names)
        for name in names:
            raw = fetched[name]
            try:
                if not isinstance(raw, BaseException) and load_manifest(raw).get("pinned"):
                    return name
            except ManifestError:
                continue
        return None

    def persist(self, snapshot: Snapshot, *, uid: str | None = None) -> ObjectRow:
        if not self.lease.held:
            raise CheckpointWriteError(f"the writer of {self.store.url} is closed")
        uid = uid or uuid.uuid4().hex
        sequence = self._next_sequence
        self._next_sequence += 1
        name = row_dir_name(sequence, uid)
        key = f"{COMMITS_DIR}/{name}"
        uploaded: list[str] = []
        step = "uploading payloads"
        try:
            files = []
            for index, array in enumerate(snapshot.payloads):
                file_name = PAYLOAD_NAME.format(index)
                step = f"uploading {file_name}"
                prepared = PreparedArray(array)
                digest = prepared.digest()
                if prepared.size <= STREAM_BYTES:
                    self.store.put_bytes(f"{key}/{file_name}", b"".join(prepared.chunks()))
                else:
                    self.store.put_stream(f"{key}/{file_name}", prepared.chunks)
                uploaded.append(f"{key}/{file_name}")
                files.append({"name": file_name, "size": prepared.size, "checksum": digest})
            body = row_body(snapshot, sequence, name, files)
            step = "checking the writer lease"
            self.lease.check()
            step = f"publishing {MANIFEST_NAME}"
            self.store.put_bytes(f"{key}/{MANIFEST_NAME}", dump_manifest(body), create=True)
        except CheckpointLockedError:
            self._discard(uploaded)
            raise
        except (CheckpointRemoteError, OSError) as exc:
            self._discard(uploaded)
            raise CheckpointRemoteError(
                f"could not commit row {sequence} to {self.store.url} while {step}: {exc}. Earlier rows are intact.",
                url=getattr(exc, "url", None) or self.store.url,
            ) from exc
        except BaseException:
            self._discard(uploaded)
            raise
        self._rows.append((sequence, name))
        self._files[name] = [f["name"] for f in files] + [MANIFEST_NAME]
        if snapshot.pin:
            self._pinned = name
        self._retire()
        return ObjectRow(path=UrlPath(self.store.url_of(key)), sequence=sequence, body=body, store=self.store, key=key)  # type: ignore[arg-type]

    def _discard(self, keys: list[str]) -> None:
        try:
            self.store.delete(keys)
        except CheckpointRemoteError:
            pass  # the next writer removes manifest-less uploads

    def _delete_row(self, name: str) -> None:
        key = f"{COMMITS_DIR}/{name}"
        # The manifest goes first: from then on the row does not exist.
        self.store.delete([f"{key}/{MANIFEST_NAME}"])
        payloads = [f"{key}/{f}" for f in self._files.pop(name, []) if f != MANIFEST_NAME]
        self.store.delete(payloads)

    def _retire(self) -> None:
        if self.keep is None:
            return
        while True:
            excess = len(self._rows) - self.keep
            oldest = [name for _, name in list(self._rows)[: max(excess, 0)]]
            if self._pinned in oldest:
                excess -= 1
            if excess <= 0:
                return
            index = next(i for i, (_, name) in enumerate(self._rows) if name != self._pinned)
            _, name = self._rows[index]
            try:
                self._delete_row(name)
            except CheckpointRemoteError:
                return  # retried after the next commit
            del self._rows[index]

    def retire(self, paths: list[Any]) -> list[tuple[Any, OSError]]:
        """Retire the given rows now (see :meth:`RowWriter.retire`)."""
        failed: list[tuple[Any, OSError]] = []
        for path in paths:
            name = UrlPath(str(path)).name
            try:
                self._delete_row(name)
            except CheckpointRemoteError as exc:
                failed.append((path, OSError(str(exc))))
                continue
            self._rows = deque(item for item in self._rows if item[1] != name)
            if self._pinned == name:
                self._pinned = None
        return failed
