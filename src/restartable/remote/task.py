"""Checkpoints of retried tasks on object stores (flyte semantics, made safe).

A task attempt saves to its own prefix (``checkpoint_dest``); the next
attempt loads from the previous attempt's prefix (``checkpoint_src``). Under
each prefix::

    <dest>/
        source.json                     link to the previous attempt's prefix
        payloads/<uuid>.bin             saved bytes or file, immutable
        payloads/<uuid>.tar.gz          saved directory, immutable
        saves/<seq:012d>-<uuid>.json    save record, written last

A save uploads its payload under a fresh key and then writes its save
record, create-only, with the payload's size and checksum. Until the record
exists the save does not exist, so a save interrupted at any point leaves
the previous one loadable. Records and links use the row manifest's
self-checksummed framing.

Loading walks the attempt chain, newest attempt first: the saves of
``checkpoint_src`` newest first, then those of the attempt *it* continued
(recorded in its ``source.json`` when it started, even if it never saved),
and so on. The first save whose record, size and checksum all check out is
restored; every damaged one on the way is reported with a
:class:`CheckpointFallbackWarning`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import io
import os
import re
import shutil
import tarfile
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import CheckpointCorruptError, CheckpointFallbackWarning, CheckpointRemoteError
from ..store.files import CHECKSUM_ALGORITHM
from ..store.manifest import ManifestError, dump_manifest, load_manifest
from ..store.objects import STREAM_BYTES, ObjectStore, RetryPolicy, is_url
from .archive import extract_archive, write_archive
from .parts import PartReader, PartUploader, download_parts

SAVE_FORMAT = "restartable-remote-save"
LINK_FORMAT = "restartable-remote-link"
FORMAT_VERSION = 1
SAVES = "saves"
PAYLOADS = "payloads"
LINK = "source.json"
PAYLOAD_BASENAME = "payload"
_SAVE_NAME = re.compile(r"^(\d{12})-([0-9a-f]{32})\.json$")
# Attempt chains longer than this are surely a loop of links written by hand.
_MAX_CHAIN = 10_000


@dataclass(frozen=True)
class SaveRecord:
    """One committed save: what :meth:`RemoteCheckpoint.load_sync` restored."""

    url: str
    """URL of the save record."""
    attempt: str
    """Prefix of the attempt that made the save."""
    sequence: int
    kind: str
    """``"bytes"``, ``"file"`` or ``"directory"``."""
    size: int
    """Size of the stored payload (the archive, for a directory)."""
    checksum: str
    saved_at: str
    name: str | None
    """Base name of a saved file."""
    payload: str
    unpacked_size: int | None
    parts: tuple[dict[str, Any], ...] = ()
    """Parts of a payload stored in several objects (empty: one object, ``payload``)."""

    @property
    def keys(self) -> list[str]:
        """Every object key of the payload."""
        return [part["key"] for part in self.parts] if self.parts else [self.payload]


def _as_url(location: str | os.PathLike[str]) -> str:
    if is_url(location):
        return str(location).rstrip("/")
    return "file://" + str(Path(location).expanduser().resolve())


class RemoteCheckpoint:
    """Save and load the checkpoint of a retried task on any fsspec URL.

    Parameters
    ----------
    checkpoint_dest:
        Prefix this attempt saves to, for example ``"s3://bucket/run/attempt-2"``.
        Local paths are accepted too.
    checkpoint_src:
        Prefix of the previous attempt, if any. It may itself have saved
        nothing: loading follows the chain of attempts back to the newest
        valid save of any earlier one.
    path:
        Local working directory that :meth:`load_sync` restores into; a fresh
        temporary directory (removed with this object) by default.
    keep:
        Saves kept under ``checkpoint_dest``; older ones are deleted after a
        newer save is complete. ``None`` keeps all. The default 2 keeps one
        to fall back on.
    storage_options:
        Passed to fsspec (``{"endpoint_url": ...}``, ``{"profile": ...}``);
        by default fsspec's and the cloud SDK's own configuration.
    retry:
        Retries of transient failures (:class:`~restartable.store.objects.RetryPolicy`).
    max_extract_bytes:
        Refuse to unpack a directory save larger than this (it is always
        refused beyond the free space of ``path``).

    With ``checkpoint_src`` set, the constructor records the link to it
    under ``checkpoint_dest`` (one small object), so that a later attempt
    can follow the chain past this one even if this one dies before saving.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from restartable.remote import RemoteCheckpoint
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> first = RemoteCheckpoint(f"file://{base}/attempt-0")
    >>> first.save_sync(b"step 41")
    >>> second = RemoteCheckpoint(f"file://{base}/attempt-1", checkpoint_src=f"file://{base}/attempt-0")
    >>> second.prev_exists()
    True
    >>> second.load_sync().read_bytes()
    b'step 41'
    """

    def __init__(
        self,
        checkpoint_dest: str | os.PathLike[str],
        checkpoint_src: str | os.PathLike[str] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        keep: int | None = 2,
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        max_extract_bytes: int | None = None,
    ) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be a positive integer or None, got {keep!r}")
        source = str(checkpoint_src).strip() if checkpoint_src is not None else ""
        self._options = dict(storage_options or {})
        self._retry = retry
        self._dest = ObjectStore(_as_url(checkpoint_dest), self._options, retry)
        self._src = ObjectStore(_as_url(source), self._options, retry) if source else None
        self.keep = keep
        self.max_extract_bytes = max_extract_bytes
        if path is None:
            self._path = Path(tempfile.mkdtemp(prefix="restartable-remote-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._path, True)
        else:
            self._path = Path(path).expanduser()
            self._cleanup = None
        self._restored: SaveRecord | None = None
        self._restored_path: Path | None = None
        self._load_attempted = False
        self._saves: list[tuple[int, str]] | None = None  # this attempt's save records, oldest first
        if self._src is not None and self._src.url != self._dest.url:
            self._write_link()

    # ------------------------------------------------------------------ facts

    @property
    def remote_destination(self) -> str:
        """Object-store prefix where :meth:`save` writes."""
        return self._dest.url

    @property
    def remote_source(self) -> str | None:
        """Object-store prefix of the previous attempt's checkpoint, if any."""
        return self._src.url if self._src is not None else None

    @property
    def path(self) -> Path:
        """Local directory that checkpoints are restored into."""
        self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    @property
    def restored(self) -> SaveRecord | None:
        """The save that :meth:`load_sync` restored, if any."""
        return self._restored

    def __repr__(self) -> str:
        return f"RemoteCheckpoint({self.remote_destination!r}, checkpoint_src={self.remote_source!r})"

    # ------------------------------------------------------------------ chain

    def _write_link(self) -> None:
        assert self._src is not None
        body = {
            "format": LINK_FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "source": self._src.url,
        }
        self._dest.put_bytes(LINK, dump_manifest(body))

    def _read_link(self, store: ObjectStore) -> str | None:
        try:
            raw = store.get_bytes(LINK)
        except FileNotFoundError:
            return None
        try:
            source = load_manifest(raw, LINK_FORMAT, FORMAT_VERSION).get("source")
        except ManifestError as exc:
            warnings.warn(
                f"the link to the previous attempt, {store.url_of(LINK)}, is damaged ({exc}); "
                "older attempts cannot be reached from it",
                CheckpointFallbackWarning,
                stacklevel=4,
            )
            return None
        return source if isinstance(source, str) and is_url(source) else None

    def _chain(self) -> Iterator[ObjectStore]:
        """The previous attempts, newest first."""
        visited = {self._dest.url}
        store = self._src
        while store is not None and store.url not in visited and len(visited) < _MAX_CHAIN:
            visited.add(store.url)
            yield store
            following = self._read_link(store)
            store = ObjectStore(following, self._options, self._retry) if following else None

    def _records(self, store: ObjectStore) -> list[tuple[int, str]]:
        """Save record keys of one attempt, oldest first (names only)."""
        found = []
        for key in store.list(SAVES):
            match = _SAVE_NAME.match(key.rsplit("/", 1)[-1])
            if match and key == f"{SAVES}/{match.group(0)}":
                found.append((int(match.group(1)), key))
        found.sort()
        return found

    def _read_record(self, store: ObjectStore, key: str) -> SaveRecord:
        url = store.url_of(key)
        try:
            body = load_manifest(store.get_bytes(key), SAVE_FORMAT, FORMAT_VERSION)
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"save record {url} vanished", row=url, file=url) from exc
        except ManifestError as exc:
            raise CheckpointCorruptError(f"save record {url} is damaged: {exc}", row=url, file=url) from exc
        try:
            record = SaveRecord(
                url=url,
                attempt=store.url,
                sequence=int(body["sequence"]),
                kind=str(body["kind"]),
                size=int(body["size"]),
                checksum=str(body["checksum"]),
                saved_at=str(body["saved_at"]),
                name=body.get("name"),
                payload=str(body["payload"]),
                unpacked_size=body.get("unpacked_size"),
                parts=tuple(
                    {"key": str(part["key"]), "size": int(part["size"]), "checksum": str(part["checksum"])}
                    for part in body.get("parts") or ()
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointCorruptError(f"save record {url} lacks {exc}", row=url, file=url) from exc
        valid_key = re.compile(rf"{PAYLOADS}/[0-9a-f]{{32}}\.(bin|tar\.gz)(\.\d{{6}})?")
        if record.kind not in ("bytes", "file", "directory") or not all(valid_key.fullmatch(key) for key in [record.payload, *record.keys]):
            raise CheckpointCorruptError(f"save record {url} names an invalid payload {record.payload!r}", row=url, file=url)
        return record

    # ------------------------------------------------------------------ loading

    def prev_exists(self) -> bool:
        """Whether an earlier attempt left a save record (its payload is checked by :meth:`load_sync`)."""
        return any(self._records(store) for store in self._chain())

    def load_sync(self) -> Path | None:
        """Restore the newest valid save of an earlier attempt into :attr:`path`.

        A saved directory is unpacked into :attr:`path`, which is returned; a
        saved file or bytes object becomes ``path / "payload"``, which is
        returned. ``None`` when no earlier attempt saved anything valid.
        Later calls return the same path without downloading again.

        Damaged saves (record, size or checksum) are skipped with a
        :class:`CheckpointFallbackWarning`; network and permission failures
        raise :class:`CheckpointRemoteError`; an archive with unsafe members
        raises :class:`CheckpointUnsafeArchiveError` before anything is
        extracted.
        """
        if self._load_attempted:
            return self._restored_path
        skipped = []
        for store in self._chain():
            for _sequence, key in reversed(self._records(store)):
                try:
                    record = self._read_record(store, key)
                    self._restored_path = self._restore(store, record)
                except CheckpointCorruptError as exc:
                    skipped.append(str(exc))
                    warnings.warn(
                        f"skipping damaged checkpoint save: {exc}; falling back to an earlier save",
                        CheckpointFallbackWarning,
                        stacklevel=2,
                    )
                    continue
                self._restored = record
                self._load_attempted = True
                return self._restored_path
        self._load_attempted = True
        if skipped:
            warnings.warn(
                f"no valid checkpoint save was found before {self.remote_destination} "
                f"({len(skipped)} damaged save(s) skipped); starting without one",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return None

    async def load(self) -> Path | None:
        """:meth:`load_sync` without blocking the event loop."""
        return await asyncio.to_thread(self.load_sync)

    def read(self) -> bytes | None:
        """The bytes of the restored save (of a saved file or bytes object), or ``None``."""
        path = self.load_sync()
        if path is None:
            return None
        if self._restored is not None and self._restored.kind == "directory":
            raise ValueError(f"the checkpoint restored from {self._restored.url} is a directory; read files under {path}")
        return path.read_bytes()

    def _restore(self, store: ObjectStore, record: SaveRecord) -> Path:
        target = self.path
        parts = list(record.parts) or [{"key": record.payload, "size": record.size, "checksum": record.checksum}]
        try:
            if record.kind == "directory":
                limit = self.max_extract_bytes
                if isinstance(record.unpacked_size, int):
                    # A directory cannot unpack to more than was saved.
                    limit = record.unpacked_size if limit is None else min(limit, record.unpacked_size)
                # Streamed: parts are fetched ahead and verified while earlier
                # ones are unpacked into a staging directory, which reaches
                # the target only after the whole payload verified.
                with PartReader(store, record.url, parts, record.size, record.checksum) as reader:
                    stream = io.BufferedReader(reader, buffer_size=1 << 20)
                    try:
                        extract_archive(stream, target, max_total_bytes=limit)
                    except (OSError, EOFError, tarfile.TarError) as exc:
                        if isinstance(exc, CheckpointRemoteError):
                            raise
                        raise CheckpointCorruptError(f"the archive of {record.url} is unreadable: {exc}", row=record.url) from exc
                return target
            download = target / f".download-{uuid.uuid4().hex}"
            try:
                download_parts(store, record.url, parts, record.size, record.checksum, download)
                final = target / PAYLOAD_BASENAME
                os.replace(download, final)
            finally:
                if download.exists():
                    download.unlink()
            return final
        except FileNotFoundError as exc:
            url = store.url_of(record.payload)
            raise CheckpointCorruptError(f"{url} (or one of its parts) is missing", row=record.url, file=url) from exc

    # ------------------------------------------------------------------ saving

    def save_sync(self, data: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        """Save a file, a directory (as a gzipped tarball) or bytes to :attr:`remote_destination`.

        A ``str`` is always a path. The payload is uploaded under a fresh key,
        then the save record is written, create-only: an interrupted save
        leaves the previous save loadable. Saves beyond ``keep`` are deleted
        afterwards.

        Raises
        ------
        FileNotFoundError
            ``data`` is a path that does not exist.
        CheckpointRemoteError
            The store could not be written (after retries for transient failures).
        """
        # Listed (and orphans of interrupted saves collected) before this
        # save's payload exists, which is referenced by no record yet.
        saves = self._own_saves()
        uid = uuid.uuid4().hex
        record: dict[str, Any]
        if isinstance(data, (bytes, bytearray, memoryview)):
            key = f"{PAYLOADS}/{uid}.bin"
            record = self._upload(key, lambda sink: sink.write(memoryview(data).cast("B")))
            record.update(kind="bytes", name=None)
        elif isinstance(data, (str, os.PathLike)):
            source = Path(data).expanduser()
            if source.is_dir():
                key = f"{PAYLOADS}/{uid}.tar.gz"
                unpacked = [0]

                def archive(sink: PartUploader) -> None:
                    unpacked[0] = write_archive(source, sink)[1]

                record = self._upload(key, archive)
                record.update(kind="directory", name=source.name, unpacked_size=unpacked[0])
            elif source.is_file():
                key = f"{PAYLOADS}/{uid}.bin"

                def copy(sink: PartUploader) -> None:
                    with open(source, "rb") as fh:
                        while chunk := fh.read(STREAM_BYTES):
                            sink.write(chunk)

                record = self._upload(key, copy)
                record.update(kind="file", name=source.name)
            else:
                raise FileNotFoundError(f"cannot save {source}: no such file or directory")
        else:
            raise TypeError(f"save() takes a path (str or os.PathLike) or bytes, got {type(data).__name__}")
        sequence = (saves[-1][0] if saves else 0) + 1
        name = f"{sequence:012d}-{uid}.json"
        record.update(
            format=SAVE_FORMAT,
            format_version=FORMAT_VERSION,
            library_version=__version__,
            sequence=sequence,
            payload=key,
            checksum_algorithm=CHECKSUM_ALGORITHM,
            saved_at=_dt.datetime.now(_dt.timezone.utc).isoformat(),
            source=self.remote_source,
        )
        self._dest.put_bytes(f"{SAVES}/{name}", dump_manifest(record), create=True)
        saves.append((sequence, f"{SAVES}/{name}"))
        self._retire(saves, keep_payload=key)

    async def save(self, data: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        """:meth:`save_sync` without blocking the event loop."""
        await asyncio.to_thread(self.save_sync, data)

    def write(self, data: bytes) -> None:
        """Save ``data`` (bytes); the counterpart of :meth:`read`."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes, got {type(data).__name__}")
        self.save_sync(data)

    def _upload(self, key: str, produce: Callable[[PartUploader], Any]) -> dict[str, Any]:
        """Stream what ``produce`` writes to ``key``, in parts uploaded concurrently."""
        sink = PartUploader(self._dest, key)
        try:
            produce(sink)
        except BaseException:
            sink.abort()
            raise
        parts, size, checksum = sink.close()
        record: dict[str, Any] = {"size": size, "checksum": checksum}
        if len(parts) > 1:
            record["parts"] = parts
        return record

    def _own_saves(self) -> list[tuple[int, str]]:
        if self._saves is None:
            self._saves = self._records(self._dest)
            self._collect_orphans()
        return self._saves

    def _collect_orphans(self) -> None:
        """Delete payloads no save record references (left by interrupted saves)."""
        referenced: set[str] = set()
        for _sequence, key in self._saves or []:
            try:
                referenced.update(self._read_record(self._dest, key).keys)
            except CheckpointCorruptError:
                return  # cannot tell what a damaged record referenced: delete nothing
        orphans = [key for key in self._dest.list(PAYLOADS) if key not in referenced]
        self._dest.delete(orphans)

    def _retire(self, saves: list[tuple[int, str]], keep_payload: str) -> None:
        if self.keep is None or len(saves) <= self.keep:
            return
        excess, remaining = saves[: -self.keep], saves[-self.keep :]
        for _sequence, key in excess:
            try:
                payload = self._read_record(self._dest, key).keys
            except CheckpointCorruptError:
                payload = []  # what it referenced is collected as an orphan later
            # The record goes first: a save without its payload must never be visible.
            self._dest.delete([key])
            self._dest.delete([k for k in payload if k != keep_payload])
        saves[:] = remaining

