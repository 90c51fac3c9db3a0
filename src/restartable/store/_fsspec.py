"""Rows on object stores through fsspec: the commit protocol without rename.

A rank prefix on an object store looks like a local store without the
staging and trash folders (see :mod:`restartable.store._layout`). Payloads
are uploaded first and ``manifest.json`` last, create-only: the manifest is
the commit point, and until it exists the row does not. A row is retired by
deleting its manifest first. Readers list ``commits/``, read every manifest
in one batch of concurrent requests, and check each listed file's size
against the listing, exactly as for rows on a local disk.

Object stores have no ``flock``. A writer holds a *lease*: the ``.lock``
object, created only if absent (S3 ``If-None-Match``), refreshed by a
heartbeat thread and checked before every manifest is written. A lease
whose holder stopped refreshing it (a killed node) expires after
``LEASE_SECONDS``; one held by a dead process on the same host is taken
over at once. A writer that finds its lease taken refuses to publish.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._env import env_number
from ..errors import CheckpointError, CheckpointLockedError, CheckpointRemoteError
from ._base import Capabilities, Draft, RowStore, UrlPath
from ._layout import COMMITS_DIR, HEAD_NAME, LOCK_NAME, MANIFEST_NAME, RANK_FOLDER, ROW_NAME, join_url
from .files import CHUNK_BYTES, PreparedArray, new_hasher, read_npy
from .objects import STREAM_BYTES, ObjectStore, RetryPolicy

__all__ = [
    "FsspecRowStore",
    "LEASE_SECONDS",
    "Lease",
]

_lease_seconds = env_number("RESTARTABLE_LEASE_SECONDS", float, "seconds", "30")
LEASE_SECONDS = 30.0 if _lease_seconds is None else _lease_seconds


def _default_wait() -> float | None:
    """How long a writer waits for a lease held by another: ``RESTARTABLE_LEASE_WAIT``, if set.

    Read when a lease is made, not at import, so that a job (or a test) can
    set it for the writers it starts.
    """
    return env_number("RESTARTABLE_LEASE_WAIT", float, "seconds", "0 (refuse at once) or 60")


class Lease:
    """Exclusive, expiring ownership of a prefix on an object store."""

    def __init__(self, store: ObjectStore, seconds: float | None = None, wait: float | None = None) -> None:
        self.store = store
        self.seconds = LEASE_SECONDS if seconds is None else seconds
        self.wait = _default_wait() if wait is None else wait
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: BaseException | None = None
        # When (monotonic) the lease last held a record of ours with a full period ahead.
        self._confirmed = -float("inf")

    def _record(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "host": self.host, "pid": os.getpid(), "expires": time.time() + self.seconds}
        ).encode()

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.store.get_bytes(LOCK_NAME))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # an unreadable lease: treat as expired
        return holder if isinstance(holder, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        try:
            expires = float(holder.get("expires", 0))
        except (TypeError, ValueError):
            return True
        if not holder or expires < time.time():
            return True
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True  # its holder died on this host
            except (PermissionError, OverflowError, ValueError):
                return False
        return False

    def acquire(self, wait: float | None = None) -> None:
        """Take the lease, waiting up to ``wait`` seconds.

        The default is the store's ``lease_wait``, else ``RESTARTABLE_LEASE_WAIT``,
        else one lease period and 5 s, so that the lease of a writer killed on
        another node expires and a restarted job goes on by itself.
        """
        if wait is None:
            wait = self.wait if self.wait is not None else self.seconds + 5
        deadline = time.monotonic() + wait
        while True:
            started = time.monotonic()
            try:
                self.store.put_bytes(LOCK_NAME, self._record(), create=True)
                break
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between our attempts
                if self._stale(holder):
                    self.store.delete([LOCK_NAME])
                    continue  # create-only again: of several takers, one wins
                if time.monotonic() >= deadline:
                    try:
                        left = float(holder.get("expires", 0)) - time.time()
                    except (TypeError, ValueError):
                        left = 0.0
                    raise CheckpointLockedError(
                        f"{self.store.url} is being written by another writer (host {holder.get('host')}, "
                        f"process {holder.get('pid')}); its lease expires in {max(left, 0):.0f} s unless renewed. "
                        "Only one writer per checkpoint prefix (and rank) is allowed"
                    ) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._confirmed = started
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
        started = time.monotonic()
        holder = self._holder()
        if not holder or holder.get("owner") != self.owner:
            raise CheckpointLockedError(
                f"the writer lease of {self.store.url} was taken over by another writer "
                f"(host {holder.get('host') if holder else '?'}); this writer stops publishing rows"
            )
        self.store.put_bytes(LOCK_NAME, self._record())
        self._confirmed = started

    def check(self) -> None:
        """Raise if the lease is lost; called before every commit point.

        Within half a lease period of its last renewal (the heartbeat renews
        every third) the lease is still ours without asking the store: no
        other writer may take a lease before it expires (a holder on this
        host only once it is dead), and clocks are trusted to agree within a
        lease period. Later than that (a writer stalled past its heartbeat),
        the lease is renewed now, which finds a takeover.
        """
        if self.lost is not None:
            raise self.lost
        if time.monotonic() - self._confirmed < self.seconds / 2:
            return
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
                    self.store.delete([LOCK_NAME])
            except CheckpointRemoteError:
                pass  # the lease expires by itself

    @property
    def held(self) -> bool:
        return self._held


class _ObjectDraft(Draft):
    def __init__(self, store: FsspecRowStore, name: str) -> None:
        self.store = store
        self.objects = store.objects
        self.name = name
        self.key = f"{COMMITS_DIR}/{name}"
        self.uploaded: list[str] = []
        self.sizes: dict[str, int] = {}

    def write_payload(self, file: str, prepared: PreparedArray) -> str:
        key = f"{self.key}/{file}"
        if prepared.size <= STREAM_BYTES:
            self.objects.put_bytes(key, b"".join(prepared.chunks()))
        else:
            self.objects.put_stream(key, prepared.chunks)
        self.uploaded.append(key)
        self.sizes[file] = prepared.size
        return prepared.digest()

    def write_stream(self, file: str, chunks: Callable[[], Iterator[bytes | memoryview]]) -> None:
        key = f"{self.key}/{file}"
        counted = 0

        def counting() -> Iterator[bytes | memoryview]:
            nonlocal counted
            counted = 0  # a retried upload starts over
            for chunk in chunks():
                counted += memoryview(chunk).nbytes
                yield chunk

        self.objects.put_stream(key, counting)
        self.uploaded.append(key)
        self.sizes[file] = counted

    def finish_payloads(self) -> None:
        """Every upload was complete when it returned."""

    def publish(self, manifest: bytes) -> None:
        self.objects.put_bytes(f"{self.key}/{MANIFEST_NAME}", manifest, create=True)
        self.store.remember_files(self.name, {**self.sizes, MANIFEST_NAME: len(manifest)})

    def abandon(self) -> None:
        with contextlib.suppress(CheckpointRemoteError):  # the next writer removes manifest-less uploads
            self.objects.delete(self.uploaded)


class FsspecRowStore(RowStore):
    """Rows under a prefix of any fsspec URL (``s3://``, ``gs://``, ``memory://``, ...).

    Parameters
    ----------
    url:
        The prefix, for example ``"s3://bucket/runs/forecast"``.
    storage_options:
        fsspec options (``{"endpoint_url": ...}``); by default fsspec's and
        the cloud SDK's own configuration.
    retry:
        How transient failures are retried.
    lease_wait:
        How long a writer waits for another writer's lease (default:
        ``RESTARTABLE_LEASE_WAIT`` if set, else one lease period and 5 s).
    """

    capabilities = Capabilities(rename=False, hard_links=False, durable_on_return=True, lease=True)

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        lease_wait: float | None = None,
        objects: ObjectStore | None = None,
    ) -> None:
        self.objects = objects if objects is not None else ObjectStore(url, storage_options, retry)
        self.url = self.objects.url
        self.storage_options = dict(storage_options or {})
        self.retry = retry
        self.lease_wait = lease_wait
        # File sizes of each row as last listed: rows are immutable once
        # their manifest exists, so a listing answers file_size for them.
        self._sizes: dict[str, dict[str, int]] = {}

    @property
    def location(self) -> str:
        return self.url

    def row_path(self, name: str) -> UrlPath:
        return UrlPath(self.objects.url_of(f"{COMMITS_DIR}/{name}"))

    def child(self, name: str) -> FsspecRowStore:
        return FsspecRowStore(
            join_url(self.url, name), self.storage_options, retry=self.retry, lease_wait=self.lease_wait
        )

    def rank_folders(self) -> list[str]:
        ranks = set()
        for key in self.objects.list(""):
            parts = key.split("/")
            if len(parts) > 2 and RANK_FOLDER.fullmatch(parts[0]) and parts[1] == COMMITS_DIR:
                ranks.add(parts[0])
        return sorted(ranks)

    # ------------------------------------------------------------------ reading

    def exists(self) -> bool:
        return bool(self.objects.list(""))

    def has_commits(self) -> bool:
        return bool(self.objects.list(COMMITS_DIR))

    def _grouped(self) -> dict[str, dict[str, int]]:
        """Objects under ``commits/`` by row name: row -> {file name: size}."""
        rows: dict[str, dict[str, int]] = {}
        for key, size in self.objects.list(COMMITS_DIR).items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == COMMITS_DIR and ROW_NAME.fullmatch(parts[1]):
                rows.setdefault(parts[1], {})[parts[2]] = size
        return rows

    def remember_files(self, name: str, sizes: dict[str, int]) -> None:
        """The files of row ``name`` that this process just published, as a listing would give them.

        Rows are immutable once published, so retiring this one (or asking
        a file's size) needs no listing of the prefix.
        """
        self._sizes[name] = dict(sizes)

    def list_rows(self) -> list[tuple[int, str]]:
        grouped = self._grouped()
        self._sizes = {name: files for name, files in grouped.items() if MANIFEST_NAME in files}
        return sorted((int(name.split("-", 1)[0]), name) for name in self._sizes)

    def read_manifest(self, name: str) -> bytes:
        data: bytes = self.objects.get_bytes(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}")
        return data

    def read_manifests(self, names: list[str]) -> dict[str, bytes | BaseException]:
        if not names:
            return {}
        store = self.objects
        paths = {store.path(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}"): name for name in names}

        def fetch() -> dict[str, bytes | BaseException]:
            found = store.fs.cat(list(paths), on_error="return")
            if not isinstance(found, dict):  # a single path comes back bare
                found = {next(iter(paths)): found}
            result: dict[str, bytes | BaseException] = {}
            for path, value in found.items():
                name = paths.get(path) or paths.get(store.fs._strip_protocol(path))
                if name is None:
                    continue
                if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                    url = store.url_of(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}")
                    value = CheckpointRemoteError(f"reading {url} failed: {value}", url=url)
                result[name] = value
            return result

        fetched = store.call("reading manifests under", COMMITS_DIR, fetch)
        for name in names:
            fetched.setdefault(name, FileNotFoundError(name))
        return fetched

    def file_size(self, name: str, file: str) -> int:
        listed = self._sizes.get(name)
        if listed is None:
            listed = self._sizes[name] = self._grouped().get(name, {})
        if file not in listed:
            raise FileNotFoundError(self.file_location(name, file))
        return listed[file]

    def read_payload(self, name: str, file: str, size: int, checksum: str | None) -> np.ndarray:
        data = self.objects.get_bytes(f"{COMMITS_DIR}/{name}/{file}")
        return read_npy(io.BytesIO(data), len(data), size, checksum)

    def hash_file(self, name: str, file: str) -> tuple[int, str]:
        key = f"{COMMITS_DIR}/{name}/{file}"
        store = self.objects

        def read() -> tuple[int, str]:
            hasher, size = new_hasher(), 0
            with store.fs.open(store.path(key), "rb", block_size=STREAM_BYTES, cache_type="none") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    size += len(chunk)
            return size, hasher.hexdigest()

        return store.call("reading", key, read)

    def read_chunks(self, name: str, file: str) -> Iterator[bytes]:
        key = f"{COMMITS_DIR}/{name}/{file}"
        store = self.objects
        try:
            fh = store.fs.open(store.path(key), "rb", block_size=STREAM_BYTES, cache_type="none")
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise CheckpointRemoteError(f"reading {store.url_of(key)} failed: {exc}", url=store.url_of(key)) from exc
        with fh:
            while chunk := fh.read(STREAM_BYTES):
                yield chunk

    def row_files(self, name: str) -> set[str]:
        prefix = f"{COMMITS_DIR}/{name}/"
        return {key[len(prefix) :] for key in self.objects.list(f"{COMMITS_DIR}/{name}") if key.startswith(prefix)}

    def row_exists(self, name: str) -> bool:
        return self.objects.exists(f"{COMMITS_DIR}/{name}/{MANIFEST_NAME}")

    def read_head(self) -> int | None:
        try:
            text = self.objects.get_bytes(HEAD_NAME).decode("ascii", "replace").strip()
        except (FileNotFoundError, CheckpointRemoteError):
            return None
        return int(text) if text.isdigit() else None

    # ------------------------------------------------------------------ writing

    def exclusion(self) -> Lease:
        return Lease(self.objects, wait=self.lease_wait)

    def clean_leftovers(self, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        # Uploads of interrupted commits: no manifest, so never rows.
        grouped = self._grouped()
        keys = [
            f"{COMMITS_DIR}/{name}/{file}"
            for name, files in grouped.items()
            if MANIFEST_NAME not in files
            for file in files
        ]
        if not dry_run:
            self.objects.delete(keys)
        # A commit is numbered after every row there is; a manifest-less row
        # below the newest committed one is a retirement that was cut short.
        newest = max((int(name[:12]) for name, files in grouped.items() if MANIFEST_NAME in files), default=0)
        interrupted: list[str] = []
        retired: list[str] = []
        for name in sorted({key.split("/")[1] for key in keys}):
            (interrupted if int(name[:12]) > newest else retired).append(self.objects.url_of(f"{COMMITS_DIR}/{name}"))
        return interrupted, retired

    def remove_files(self, name: str, files: list[str]) -> None:
        self.objects.delete([f"{COMMITS_DIR}/{name}/{file}" for file in files])

    def stage(self, name: str) -> Draft:
        return _ObjectDraft(self, name)

    def retire(self, name: str) -> list[str]:
        key = f"{COMMITS_DIR}/{name}"
        files = self._sizes.pop(name, None)
        if files is None:
            files = self._grouped().get(name, {})
        if MANIFEST_NAME not in files and not self.objects.exists(f"{key}/{MANIFEST_NAME}"):
            raise FileNotFoundError(str(self.row_path(name)))
        # The manifest goes first: from then on the row does not exist.
        self.objects.delete([f"{key}/{MANIFEST_NAME}"])
        return [f"{key}/{file}" for file in files if file != MANIFEST_NAME]

    def delete_retired(self, retired: list[Any]) -> list[Any]:
        remaining = []
        for keys in retired:
            try:
                self.objects.delete(keys)
            except CheckpointRemoteError:
                remaining.append(keys)
        return remaining

    def write_head(self, sequence: int) -> None:
        self.objects.put_bytes(HEAD_NAME, f"{sequence}\n".encode())

    def write_error(self, message: str, exc: BaseException) -> CheckpointError:
        return CheckpointRemoteError(message, url=getattr(exc, "url", None) or self.url)
