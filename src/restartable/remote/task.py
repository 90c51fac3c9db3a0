"""Checkpoints of retried tasks on object stores (flyte's ``Checkpoint``, made safe).

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

The constructor does no I/O. The link ``source.json`` is written by the
first save, or by the first load that restores a save of an earlier attempt
(from then on this attempt carries on from that save, so a later attempt
must be able to reach it through this one even if this one dies before
saving). An attempt that dies before loading or saving leaves no link.

Loading looks first at saves already under ``checkpoint_dest`` (left by an
earlier run of the same attempt: a task retried in place, or flyte's local
runs, which give every attempt the same destination), then walks the
attempt chain, newest attempt first: the saves of ``checkpoint_src`` newest
first, then those of the attempt *it* continued (named by its
``source.json``), and so on. The first save whose record, size and checksum
all check out is restored; every damaged one on the way is reported with a
:class:`CheckpointFallbackWarning`.

Checkpoints saved by flyte's own ``flyte.Checkpoint`` load too: flyte
stores one object at the URL itself (the raw bytes or file, or a gzipped
tarball of a directory). At each prefix of the chain, after restartable's
own saves, a non-empty object at the URL itself is restored as flyte
restores it: a tarball (told by its magic bytes and first header block,
which is what :func:`tarfile.is_tarfile` checks for flyte, without unpacking
an extended header first) is extracted safely into :attr:`RemoteCheckpoint.path`, which is returned;
anything else becomes ``path / "payload"``. Such an object carries no
checksum, so only its readability is checked.

The local directory that loads restore into is a fresh temporary directory
unless ``path=`` is given. Once handed to the caller (returned by a load or
read through :attr:`RemoteCheckpoint.path`) it stays until the process
exits or :meth:`RemoteCheckpoint.cleanup` is called, whatever happens to the
object; one never handed out is removed with the object.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as _dt
import io
import os
import re
import shutil
import tarfile
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._text import shown
from .._version import __version__
from ..errors import (
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointRemoteError,
    CheckpointUnsafeArchiveError,
)
from ..store.files import CHECKSUM_ALGORITHM, is_checksum
from ..store.manifest import ManifestError, dump_manifest, load_manifest
from ..store.objects import STREAM_BYTES, ObjectStore, RetryPolicy, is_url
from .archive import extract_archive, tar_compression, write_archive
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
# Where from_flyte_context() keeps its checkpoints on the flyte task context.
_FLYTE_CACHE_KEY = "__restartable_remote_checkpoint__"


@dataclass(frozen=True)
class SaveRecord:
    """One committed save: what :meth:`RemoteCheckpoint.load_sync` restored."""

    url: str
    """URL of the save record (of the object itself, for a save of flyte's layout)."""
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
    layout: str = "restartable"
    """``"restartable"`` (a save record and its payload), or ``"flyte"``: one
    object at the attempt's URL, written by ``flyte.Checkpoint``. A flyte save
    has no record: its ``kind`` is ``"directory"`` for a tarball and
    ``"file"`` otherwise, its ``checksum`` is that of the bytes that arrived
    (nothing to check them against), ``sequence`` is 0 and ``payload`` is
    ``""`` (the URL itself)."""

    @property
    def keys(self) -> list[str]:
        """Every object key of the payload."""
        return [part["key"] for part in self.parts] if self.parts else [self.payload]


def _as_url(location: str | os.PathLike[str]) -> str:
    if is_url(location):
        return str(location).rstrip("/")
    # abspath, not resolve(): the constructor touches no filesystem.
    return "file://" + os.path.abspath(os.path.expanduser(os.fspath(location)))


# ---------------------------------------------------------------------- local restore directories

_temp_lock = threading.Lock()
_temp_dirs: dict[str, int] = {}  # temporary restore directory -> pid of the process that made it


def _remove_temp_dirs() -> None:
    """At interpreter exit: remove this process's temporary restore directories (never a forked parent's)."""
    pid = os.getpid()
    with _temp_lock:
        mine = [path for path, owner in _temp_dirs.items() if owner == pid]
        for path in mine:
            del _temp_dirs[path]
    for path in mine:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_temp_dirs)


class _Workdir:
    """A temporary restore directory, registered for removal at process exit."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="restartable-remote-"))
        self.handed_out = False
        self.pid = os.getpid()
        with _temp_lock:
            _temp_dirs[str(self.path)] = self.pid

    def remove(self) -> None:
        with _temp_lock:
            _temp_dirs.pop(str(self.path), None)
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_unless_handed_out(workdir: _Workdir) -> None:
    # Called when the RemoteCheckpoint is collected (or at exit, by weakref):
    # a directory the caller holds a path into must outlive the object, and
    # a forked child's exit must not remove its parent's directory.
    if not workdir.handed_out and workdir.pid == os.getpid():
        workdir.remove()


def _flyte_s3_options() -> dict[str, Any]:
    """s3fs options from flyte's S3 configuration (``FLYTE_AWS_*``, ``flyte.init``), through flyte's public API.

    flyte's own storage reads its endpoint and static keys from
    ``FLYTE_AWS_ENDPOINT``, ``FLYTE_AWS_ACCESS_KEY_ID`` and
    ``FLYTE_AWS_SECRET_ACCESS_KEY`` (the flyte sandbox sets these), which
    s3fs does not read. Empty where flyte configures nothing, so that s3fs
    falls back to the usual AWS configuration.
    """
    try:
        import flyte.storage

        configured = flyte.storage.get_configured_fsspec_kwargs("s3")
    except Exception:  # flyte's configuration is optional here; s3fs has its own
        return {}
    config = configured.get("config") or {}
    options: dict[str, Any] = {}
    if config.get("endpoint"):
        options["endpoint_url"] = config["endpoint"]
    if config.get("access_key_id") and config.get("secret_access_key"):
        options["key"] = config["access_key_id"]
        options["secret"] = config["secret_access_key"]
    if configured.get("region"):
        options["client_kwargs"] = {"region_name": configured["region"]}
    if "virtual_hosted_style_request" in config:
        style = "virtual" if config["virtual_hosted_style_request"] else "path"
        options["config_kwargs"] = {"s3": {"addressing_style": style}}
    return options


def _count(value: Any, what: str) -> int:
    """A non-negative integer field of a save record (``True`` and ``"3"`` are not)."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} {shown(value)} is not a non-negative integer")
    return value


def _checksum(value: Any) -> str:
    if not is_checksum(value):
        raise ValueError(f"checksum {shown(value)} is not 16 hex digits")
    return value


class RemoteCheckpoint:
    """Save and load the checkpoint of a retried task on any fsspec URL.

    The API of flyte's ``flyte.Checkpoint`` (``load``/``load_sync``,
    ``save``/``save_sync``, ``prev_exists``, ``path``, ``remote_source``,
    ``remote_destination``), with saves that are checksummed and published
    atomically, an attempt chain, safe extraction, and loading of
    checkpoints that flyte itself saved.

    Parameters
    ----------
    checkpoint_dest:
        Prefix this attempt saves to, for example ``"s3://bucket/run/attempt-2"``.
        Local paths are accepted too.
    checkpoint_src:
        Prefix of the previous attempt, if any (blank means none, as in
        flyte). It may hold restartable's saves, a checkpoint saved by
        ``flyte.Checkpoint`` (one object at this URL), or nothing: loading
        follows the chain of attempts back to the newest valid save of any
        earlier one.
    path:
        Local directory that loads restore into. By default a fresh
        temporary directory, made when first needed; once handed to you it
        stays until the process exits or :meth:`cleanup` is called.
    keep:
        Saves kept under ``checkpoint_dest``; older ones are deleted after a
        newer save is complete. ``None`` keeps all. The default 2 keeps one
        to fall back on.
    storage_options:
        Passed to the filesystem (``{"endpoint_url": ...}``, ``{"profile": ...}``);
        by default fsspec's and the cloud SDK's own configuration. ``s3://``
        is always s3fs, whatever else registered the protocol with fsspec.
    retry:
        Retries of transient failures (:class:`~restartable.store.objects.RetryPolicy`).
    max_extract_bytes:
        Refuse to unpack a directory save larger than this (it is always
        refused beyond the free space of ``path``).

    The constructor does no I/O, local or remote: a destination on a store
    that is down fails at the first save, not here.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from restartable.remote import RemoteCheckpoint
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> first = RemoteCheckpoint(f"file://{base}/attempt-0")
    >>> first.save_sync(b"step 41")
    >>> second = RemoteCheckpoint(f"file://{base}/attempt-1", checkpoint_src=f"file://{base}/attempt-0")
    >>> second.prev_exists(), second.has_loadable_save()
    (True, True)
    >>> second.load_sync().read_bytes()
    b'step 41'

    Inside a flyte task, the paths come from the task context::

        cp = RemoteCheckpoint.from_flyte_context()
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
        # Stripped of blanks and quotes as flyte strips the source it is given.
        source = str(os.fspath(checkpoint_src)).strip().strip('"') if checkpoint_src is not None else ""
        self._options = dict(storage_options or {})
        self._retry = retry
        self._dest_url = _as_url(checkpoint_dest)
        self._src_url = _as_url(source) if source else None
        self._stores: dict[str, ObjectStore] = {}
        self.keep = keep
        self.max_extract_bytes = max_extract_bytes
        self._user_path = Path(path).expanduser() if path is not None else None
        self._workdir: _Workdir | None = None
        self._restored: SaveRecord | None = None
        self._restored_path: Path | None = None
        self._load_attempted = False
        self._saves: list[tuple[int, str]] | None = None  # this attempt's save records, oldest first
        self._written: set[str] = set()  # save records this object wrote
        self._link_written = False

    @classmethod
    def from_flyte_context(
        cls,
        *,
        path: str | os.PathLike[str] | None = None,
        keep: int | None = 2,
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        max_extract_bytes: int | None = None,
    ) -> RemoteCheckpoint:
        """The checkpoint of the running flyte task: destination and source from its context.

        Reads ``flyte.ctx().checkpoint_paths`` (flyte's public API): its
        ``checkpoint_path`` is the destination and its
        ``prev_checkpoint_path`` the source. Within one task context the
        same object is returned for the same arguments, as flyte's
        ``flyte.ctx().checkpoint`` does. Without ``storage_options``, the
        endpoint and keys flyte is configured with for S3
        (``FLYTE_AWS_ENDPOINT``, ``FLYTE_AWS_ACCESS_KEY_ID``,
        ``FLYTE_AWS_SECRET_ACCESS_KEY``) are used when set. The other
        arguments are those of the constructor.

        Examples
        --------
        ::

            import flyte
            from restartable.remote import RemoteCheckpoint

            env = flyte.TaskEnvironment(name="train")

            @env.task(retries=3)
            def train(steps: int) -> float:
                cp = RemoteCheckpoint.from_flyte_context()
                restored = cp.load_sync()          # None on the first attempt
                ...
                cp.save_sync(state_dir)

        Raises
        ------
        ImportError
            flyte is not installed (``pip install flyte``).
        RuntimeError
            Not inside a running flyte task, or the task was given no
            checkpoint destination; the message names what is missing.
        """
        try:
            import flyte
        except ImportError as exc:
            raise ImportError(
                "RemoteCheckpoint.from_flyte_context() takes the checkpoint paths from the running flyte task, "
                "but flyte is not installed: pip install flyte"
            ) from exc
        current = getattr(flyte, "ctx", None)
        if current is None:
            raise ImportError(
                f"RemoteCheckpoint.from_flyte_context() needs flyte.ctx(), which flyte "
                f"{getattr(flyte, '__version__', '(unknown version)')} lacks: pip install 'flyte>=2'"
            )
        ctx = current()
        if not ctx:
            raise RuntimeError(
                "RemoteCheckpoint.from_flyte_context() must be called inside a running flyte task: "
                "flyte.ctx() has no task context here. Outside a task, give the paths yourself: "
                "RemoteCheckpoint(checkpoint_dest, checkpoint_src)"
            )
        paths = getattr(ctx, "checkpoint_paths", None)
        dest = str(getattr(paths, "checkpoint_path", None) or "").strip()
        if not dest:
            missing = (
                "flyte.ctx().checkpoint_paths is None"
                if paths is None
                else "flyte.ctx().checkpoint_paths.checkpoint_path is empty"
            )
            raise RuntimeError(
                f"the running flyte task was given no checkpoint destination ({missing}); "
                "give the paths yourself: RemoteCheckpoint(checkpoint_dest, checkpoint_src)"
            )
        source = str(getattr(paths, "prev_checkpoint_path", None) or "").strip() or None
        if storage_options is None and any(
            url is not None and url.startswith(("s3://", "s3a://")) for url in (dest, source)
        ):
            storage_options = _flyte_s3_options()
        arguments = (
            dest,
            source,
            None if path is None else os.fspath(path),
            keep,
            repr(storage_options),
            retry,
            max_extract_bytes,
        )
        cache = ctx.data.setdefault(_FLYTE_CACHE_KEY, {}) if isinstance(getattr(ctx, "data", None), dict) else {}
        checkpoint = cache.get(arguments)
        if checkpoint is None:
            checkpoint = cls(
                dest,
                source,
                path=path,
                keep=keep,
                storage_options=storage_options,
                retry=retry,
                max_extract_bytes=max_extract_bytes,
            )
            cache[arguments] = checkpoint
        return checkpoint

    # ------------------------------------------------------------------ facts

    @property
    def remote_destination(self) -> str:
        """Object-store prefix where :meth:`save` writes."""
        return self._dest_url

    @property
    def remote_source(self) -> str | None:
        """Object-store prefix of the previous attempt's checkpoint, if any."""
        return self._src_url

    @property
    def path(self) -> Path:
        """Local directory that checkpoints are restored into (created if needed).

        The default temporary directory stays, once you have its path, until
        the process exits or :meth:`cleanup` is called.
        """
        target = self._target()
        if self._workdir is not None:
            self._workdir.handed_out = True
        return target

    @property
    def restored(self) -> SaveRecord | None:
        """The save that :meth:`load_sync` restored, if any."""
        return self._restored

    def __repr__(self) -> str:
        return f"RemoteCheckpoint({self.remote_destination!r}, checkpoint_src={self.remote_source!r})"

    def cleanup(self) -> None:
        """Remove the temporary restore directory now (never a ``path=`` you gave).

        Paths returned by earlier loads become invalid; a later load
        downloads again into a new directory. Without this call the
        directory is removed at process exit.

        >>> import tempfile
        >>> cp = RemoteCheckpoint(tempfile.mkdtemp() + "/attempt-0")
        >>> workdir = cp.path
        >>> cp.cleanup()
        >>> workdir.exists()
        False
        """
        if self._workdir is not None:
            self._workdir.remove()
            self._workdir = None
        self._restored = None
        self._restored_path = None
        self._load_attempted = False

    def _target(self) -> Path:
        """The restore directory, without handing it out."""
        if self._user_path is not None:
            self._user_path.mkdir(parents=True, exist_ok=True)
            return self._user_path
        if self._workdir is None:
            self._workdir = _Workdir()
            weakref.finalize(self, _remove_unless_handed_out, self._workdir)
        return self._workdir.path

    def _store(self, url: str) -> ObjectStore:
        store = self._stores.get(url)
        if store is None:
            store = self._stores[url] = ObjectStore(url, self._options, self._retry)
        return store

    @property
    def _dest(self) -> ObjectStore:
        return self._store(self._dest_url)

    # ------------------------------------------------------------------ chain

    def _write_link(self) -> None:
        assert self._src_url is not None
        body = {
            "format": LINK_FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "source": self._src_url,
        }
        self._dest.put_bytes(LINK, dump_manifest(body))
        self._link_written = True

    def _needs_link(self) -> bool:
        return not self._link_written and self._src_url is not None and self._src_url != self._dest_url

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
                stacklevel=5,
            )
            return None
        return source if isinstance(source, str) and is_url(source) else None

    def _chain(self) -> Iterator[ObjectStore]:
        """The previous attempts, newest first."""
        visited = {self._dest_url}
        url = self._src_url
        while url is not None and url not in visited and len(visited) < _MAX_CHAIN:
            visited.add(url)
            store = self._store(url)
            yield store
            url = None if _local_file(store) is not None else self._read_link(store)

    def _records(self, store: ObjectStore) -> list[tuple[int, str]]:
        """Save record keys of one attempt, oldest first (names only)."""
        found = []
        for key in store.list(SAVES):
            match = _SAVE_NAME.match(key.rsplit("/", 1)[-1])
            if match and key == f"{SAVES}/{match.group(0)}":
                found.append((int(match.group(1)), key))
        found.sort()
        return found

    def _candidates(self) -> Iterator[tuple[str, ObjectStore, Any]]:
        """What a load may restore, best first: ``("record", store, key)`` or ``("flyte", store, info)``.

        Saves already under the destination (not made by this object) come
        first, then each attempt of the chain; at each prefix restartable's
        saves newest first, then a non-empty object at the URL itself
        (flyte's layout; an empty one is "no checkpoint" to flyte too).
        """
        for store in (self._dest, *self._chain()):
            if store.local:
                single = _local_file(store)
                if single is None:
                    # (a directory: a local file has nothing below it)
                    for _sequence, key in reversed(self._records(store)):
                        if store.url != self._dest_url or key not in self._written:
                            yield ("record", store, key)
            else:
                # Listed first: a missing bucket is an error there, never "nothing saved".
                for _sequence, key in reversed(self._records(store)):
                    if store.url != self._dest_url or key not in self._written:
                        yield ("record", store, key)
                single = _remote_object(store)
            if single is not None and int(single.get("size") or 0) > 0:
                yield ("flyte", store, single)

    def _read_record(self, store: ObjectStore, key: str) -> SaveRecord:
        url = store.url_of(key)
        try:
            body = load_manifest(store.get_bytes(key), SAVE_FORMAT, FORMAT_VERSION)
        except FileNotFoundError as exc:
            raise CheckpointCorruptError(f"save record {url} vanished", row=url, file=url) from exc
        except ManifestError as exc:
            raise CheckpointCorruptError(f"save record {url} is damaged: {exc}", row=url, file=url) from exc
        try:
            unpacked = body.get("unpacked_size")
            record = SaveRecord(
                url=url,
                attempt=store.url,
                sequence=_count(body["sequence"], "sequence"),
                kind=str(body["kind"]),
                size=_count(body["size"], "size"),
                checksum=_checksum(body["checksum"]),
                saved_at=str(body["saved_at"]),
                name=body.get("name"),
                payload=str(body["payload"]),
                unpacked_size=None if unpacked is None else _count(unpacked, "unpacked_size"),
                parts=tuple(
                    {
                        "key": str(part["key"]),
                        "size": _count(part["size"], "size"),
                        "checksum": _checksum(part["checksum"]),
                    }
                    for part in body.get("parts") or ()
                ),
            )
        except KeyError as exc:
            raise CheckpointCorruptError(f"save record {url} lacks {exc}", row=url, file=url) from exc
        except (TypeError, ValueError) as exc:
            raise CheckpointCorruptError(f"save record {url} is damaged: {exc}", row=url, file=url) from exc
        valid_key = re.compile(rf"{PAYLOADS}/[0-9a-f]{{32}}\.(bin|tar\.gz)(\.\d{{6}})?")
        if record.kind not in ("bytes", "file", "directory") or not all(
            valid_key.fullmatch(key) for key in [record.payload, *record.keys]
        ):
            raise CheckpointCorruptError(
                f"save record {url} names an invalid payload {record.payload!r}", row=url, file=url
            )
        return record

    # ------------------------------------------------------------------ loading

    def prev_exists(self) -> bool:
        """Whether a previous attempt's checkpoint source was given (flyte's meaning; no I/O).

        True as soon as ``checkpoint_src`` is set, even if nothing was ever
        saved there: it says there is a previous attempt to load from, not
        that it saved anything. :meth:`has_loadable_save` asks the store.

        >>> RemoteCheckpoint("s3://bucket/attempt-1").prev_exists()
        False
        >>> RemoteCheckpoint("s3://bucket/attempt-2", "s3://bucket/attempt-1").prev_exists()
        True
        """
        return self._src_url is not None

    def has_loadable_save(self) -> bool:
        """Whether :meth:`load_sync` has a save to try: a save record, or a checkpoint flyte saved.

        Looks where a load looks (saves already under the destination, then
        the attempt chain) and lists, but downloads nothing: a damaged
        payload is found only by loading, which then falls back to an
        earlier save.

        Raises
        ------
        CheckpointRemoteError
            A store could not be read (unreachable, access denied, missing bucket).

        >>> import tempfile
        >>> base = tempfile.mkdtemp()
        >>> later = RemoteCheckpoint(f"{base}/attempt-1", f"{base}/attempt-0")
        >>> later.has_loadable_save()
        False
        >>> RemoteCheckpoint(f"{base}/attempt-0").save_sync(b"step 1")
        >>> later.has_loadable_save()
        True
        """
        return next(self._candidates(), None) is not None

    def load_sync(self) -> Path | None:
        """Restore the newest valid save of an earlier attempt into :attr:`path`.

        A saved directory is unpacked into :attr:`path`, which is returned; a
        saved file or bytes object becomes ``path / "payload"``, which is
        returned. ``None`` when no earlier attempt saved anything valid.
        Later calls return the same path without downloading again. The
        returned path stays valid after this object is gone, until the
        process exits or :meth:`cleanup` is called.

        A checkpoint saved by ``flyte.Checkpoint`` at a URL of the chain
        (one object) is restored as flyte restores it: a tarball is
        extracted into :attr:`path` (returned), anything else becomes
        ``path / "payload"``; an empty object means no checkpoint, as in
        flyte.

        Damaged saves (record, size or checksum; an unreadable flyte
        tarball) are skipped with a :class:`CheckpointFallbackWarning`;
        network and permission failures raise :class:`CheckpointRemoteError`;
        an archive with unsafe members raises
        :class:`CheckpointUnsafeArchiveError` before anything is extracted.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> base = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (base / "flyte-saved").write_bytes(b"saved by flyte.Checkpoint")
        >>> cp = RemoteCheckpoint(base / "attempt-1", checkpoint_src=base / "flyte-saved")
        >>> restored = cp.load_sync()
        >>> restored == cp.path / "payload", restored.read_bytes()
        (True, b'saved by flyte.Checkpoint')
        >>> del cp
        >>> restored.read_bytes()                  # still there
        b'saved by flyte.Checkpoint'
        """
        if self._load_attempted:
            return self._restored_path
        skipped = []
        for kind, store, ref in self._candidates():
            try:
                if kind == "record":
                    record = self._read_record(store, ref)
                    restored = self._restore(store, record)
                else:
                    found = self._restore_flyte(store, ref)
                    if found is None:
                        continue  # emptied since it was listed: no checkpoint, as in flyte
                    record, restored = found
            except CheckpointCorruptError as exc:
                skipped.append(str(exc))
                warnings.warn(
                    f"skipping damaged checkpoint save: {exc}; falling back to an earlier save",
                    CheckpointFallbackWarning,
                    stacklevel=2,
                )
                continue
            self._restored, self._restored_path = record, restored
            self._load_attempted = True
            if self._workdir is not None:
                self._workdir.handed_out = True
            if store.url != self._dest_url and self._needs_link():
                # This attempt now carries on from an earlier one's save: link
                # it, so that a later attempt reaches that save through this
                # one even if this one dies before saving. Best effort: the
                # first save writes the link again, and fails if it cannot.
                with contextlib.suppress(CheckpointRemoteError):
                    self._write_link()
            return restored
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
        """:meth:`load_sync` without blocking the event loop.

        >>> import asyncio, tempfile
        >>> base = tempfile.mkdtemp()
        >>> asyncio.run(RemoteCheckpoint(f"{base}/attempt-1", f"{base}/attempt-0").load()) is None
        True
        """
        return await asyncio.to_thread(self.load_sync)

    def read(self) -> bytes | None:
        """The bytes of the restored save (of a saved file or bytes object), or ``None``.

        Raises ``ValueError`` if the restored save is a directory.

        >>> import tempfile
        >>> base = tempfile.mkdtemp()
        >>> RemoteCheckpoint(f"{base}/attempt-0").write(b"step 7")
        >>> RemoteCheckpoint(f"{base}/attempt-1", f"{base}/attempt-0").read()
        b'step 7'
        """
        path = self.load_sync()
        if path is None:
            return None
        if self._restored is not None and self._restored.kind == "directory":
            raise ValueError(
                f"the checkpoint restored from {self._restored.url} is a directory; read files under {path}"
            )
        return path.read_bytes()

    def _restore(self, store: ObjectStore, record: SaveRecord) -> Path:
        target = self._target()
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
                        extract_archive(stream, target, max_total_bytes=limit, name=store.url_of(record.payload))
                    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
                        # ValueError: tarfile's answer to a pax record such as mtime=nan.
                        if isinstance(exc, (CheckpointRemoteError, CheckpointUnsafeArchiveError)):
                            raise
                        raise CheckpointCorruptError(
                            f"the archive of {record.url} is unreadable: {exc}", row=record.url
                        ) from exc
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

    def _restore_flyte(self, store: ObjectStore, info: dict[str, Any]) -> tuple[SaveRecord, Path] | None:
        """Restore the one object that ``flyte.Checkpoint`` saved at ``store.url``, as flyte would."""
        target = self._target()
        download = target / f".download-{uuid.uuid4().hex}"
        try:
            try:
                size, checksum = store.get_file("", download)
            except FileNotFoundError:
                return None  # gone since it was listed
            if size == 0:
                return None
            compression = tar_compression(download)
            if compression is None:
                final = target / PAYLOAD_BASENAME
                os.replace(download, final)
            else:
                try:
                    extract_archive(
                        download,
                        target,
                        max_total_bytes=self.max_extract_bytes,
                        compression=compression,
                        name=store.url,
                    )
                except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
                    if isinstance(exc, CheckpointUnsafeArchiveError):
                        raise
                    raise CheckpointCorruptError(
                        f"the tarball {store.url} is unreadable: {exc}", row=store.url, file=store.url
                    ) from exc
                final = target
        finally:
            if download.exists():
                download.unlink()
        record = SaveRecord(
            url=store.url,
            attempt=store.url,
            sequence=0,
            kind="file" if compression is None else "directory",
            size=size,
            checksum=checksum,
            saved_at=_modified(info),
            name=None,
            payload="",
            unpacked_size=None,
            layout="flyte",
        )
        return record, final

    # ------------------------------------------------------------------ saving

    def save_sync(self, data: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        """Save a file, a directory (as a gzipped tarball) or bytes to :attr:`remote_destination`.

        A ``str`` is always a path. The payload is uploaded under a fresh key,
        then the save record is written, create-only: an interrupted save
        leaves the previous save loadable. Saves beyond ``keep`` are deleted
        afterwards. The first save also records the link to
        :attr:`remote_source` (if a load has not already).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> base = pathlib.Path(tempfile.mkdtemp())
        >>> cp = RemoteCheckpoint(base / "attempt-0")
        >>> cp.save_sync(b"raw bytes")                    # bytes
        >>> _ = (base / "model.pt").write_bytes(b"weights")
        >>> cp.save_sync(base / "model.pt")               # a file (str or Path)
        >>> (base / "state").mkdir()
        >>> _ = (base / "state" / "step.txt").write_text("12")
        >>> cp.save_sync(base / "state")                  # a directory
        >>> restored = RemoteCheckpoint(base / "attempt-1", base / "attempt-0").load_sync()
        >>> (restored / "step.txt").read_text()
        '12'

        Raises
        ------
        FileNotFoundError
            ``data`` is a path that does not exist.
        TypeError
            ``data`` is neither a path nor bytes.
        CheckpointRemoteError
            The store could not be written (after retries for transient
            failures), or a local destination is an existing file (a
            checkpoint flyte saved there: restartable saves under the
            destination, which a local file cannot hold).
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            kind, source = "bytes", None
        elif isinstance(data, (str, os.PathLike)):
            source = Path(data).expanduser()
            if source.is_dir():
                kind = "directory"
            elif source.is_file():
                kind = "file"
            else:
                raise FileNotFoundError(f"cannot save {source}: no such file or directory")
        else:
            raise TypeError(f"save() takes a path (str or os.PathLike) or bytes, got {type(data).__name__}")
        if _local_file(self._dest) is not None:
            raise CheckpointRemoteError(
                f"cannot save under {self.remote_destination}: it is a file (a checkpoint saved by flyte.Checkpoint, "
                "which stores one object at the destination?). RemoteCheckpoint saves under the destination as a "
                "prefix, which a local file cannot hold: use another checkpoint_dest "
                "(the file can be the checkpoint_src)",
                url=self.remote_destination,
            )
        # Listed (and orphans of interrupted saves collected) before this
        # save's payload exists, which is referenced by no record yet.
        saves = self._own_saves()
        if self._needs_link():
            self._write_link()
        uid = uuid.uuid4().hex
        record: dict[str, Any]
        if kind == "bytes":
            key = f"{PAYLOADS}/{uid}.bin"
            record = self._upload(key, lambda sink: sink.write(memoryview(data).cast("B")))  # type: ignore[arg-type]
            record.update(kind="bytes", name=None)
        elif kind == "directory":
            assert source is not None
            key = f"{PAYLOADS}/{uid}.tar.gz"
            unpacked = [0]

            def archive(sink: PartUploader) -> None:
                unpacked[0] = write_archive(source, sink)[1]

            record = self._upload(key, archive)
            record.update(kind="directory", name=source.name, unpacked_size=unpacked[0])
        else:
            assert source is not None
            key = f"{PAYLOADS}/{uid}.bin"

            def copy(sink: PartUploader) -> None:
                with open(source, "rb") as fh:
                    while chunk := fh.read(STREAM_BYTES):
                        sink.write(chunk)

            record = self._upload(key, copy)
            record.update(kind="file", name=source.name)
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
        self._written.add(f"{SAVES}/{name}")
        self._retire(saves, keep_payload=key)

    async def save(self, data: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        """:meth:`save_sync` without blocking the event loop.

        >>> import asyncio, tempfile
        >>> base = tempfile.mkdtemp()
        >>> asyncio.run(RemoteCheckpoint(f"{base}/attempt-0").save(b"step 3"))
        >>> RemoteCheckpoint(f"{base}/attempt-1", f"{base}/attempt-0").read()
        b'step 3'
        """
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


def _local_file(store: ObjectStore) -> dict[str, Any] | None:
    """For a local store whose URL is a regular file (flyte's layout), its size and mtime; else None."""
    if not store.local:
        return None
    try:
        info = os.stat(store.root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not os.path.isfile(store.root):
        return None
    return {"type": "file", "size": info.st_size, "mtime": info.st_mtime}


def _remote_object(store: ObjectStore) -> dict[str, Any] | None:
    """The object at the store's URL itself (flyte's layout), or None if there is none (a prefix, or nothing)."""
    store._invalidate("")
    try:
        info = store.call("checking", "", lambda: store.fs.info(store.root))
    except FileNotFoundError:
        return None
    return info if info.get("type") == "file" else None


def _modified(info: dict[str, Any]) -> str:
    """When an object was last written, as an ISO timestamp, from what the filesystem reports ("" if nothing)."""
    for key in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(key)
        if isinstance(value, _dt.datetime):
            return value.isoformat()
        if isinstance(value, (int, float)):
            return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).isoformat()
        if isinstance(value, str) and value:
            return value
    return ""
