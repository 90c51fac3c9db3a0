"""Object stores through fsspec: bounded retries, clear errors, create-only writes.

Object stores have no rename and no directories. What the engine needs from
them is small: put an object (optionally only if it does not exist yet),
get one, list a prefix, delete a list of keys. :class:`ObjectStore` offers
exactly that over any fsspec URL (``s3://``, ``gs://``, ``memory://``,
``file://``), and turns every failure into one of three outcomes:

* ``FileNotFoundError`` passes through: the caller asked for something that
  is not there, which is an answer, not a failure;
* transient failures (connection errors, timeouts, throttling, server
  errors) are retried with exponential backoff and jitter, a bounded number
  of times, and then raised as :class:`CheckpointRemoteError` naming the URL;
* permanent failures (permission denied, a missing bucket) are raised as
  :class:`CheckpointRemoteError` at once.

``s3://`` URLs are always opened with s3fs (``gs://`` with gcsfs,
``abfs://`` with adlfs), even where another library replaced fsspec's
registry entry for the protocol (flyte registers obstore's store): see
:func:`open_filesystem`.

Credentials and endpoints come from the usual fsspec and s3fs configuration
(``AWS_*`` variables, ``AWS_ENDPOINT_URL``, ``~/.aws``, fsspec's config
files and ``FSSPEC_<PROTOCOL>_<OPTION>`` variables), or from
``storage_options``. fsspec is imported lazily: only code that touches a URL
needs it.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from .._extras import EXTRAS, MissingExtraError, import_optional, require
from ..errors import CheckpointRemoteError
from ._layout import LOCAL_PROTOCOLS, is_url, join_url, url_protocol
from ._open import local_path_of
from .files import fsync_dir, new_hasher

__all__ = [
    "LOCAL_PROTOCOLS",
    "ObjectStore",
    "RetryPolicy",
    "STREAM_BYTES",
    "is_url",
    "join_url",
    "local_path_of",
    "open_filesystem",
    "url_protocol",
]

T = TypeVar("T")

# Parts of an upload or download stream; large enough for S3 multipart parts.
STREAM_BYTES = 16 << 20


def _is_permanent(exc: BaseException) -> bool:
    """Failures no retry will cure: access denied, a missing bucket, a bad request."""
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)):
        return True
    text = str(exc)
    return any(
        phrase in text
        for phrase in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "Forbidden")
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    attempts: int = 5
    first_delay: float = 0.2
    max_delay: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            # Full jitter: retrying clients spread out instead of stampeding.
            yield random.uniform(0, delay)
            delay = min(self.max_delay, delay * 2)


# The fsspec implementation each cloud protocol is opened with, whatever
# fsspec's registry says at the time. Other libraries replace registry
# entries process-wide: importing flyte.io or flyte.storage registers
# obstore's FsspecStore for s3, gs, abfs and abfss (clobber=True). Using
# whatever the URL resolves to (minus the options it rejects, such as
# use_listings_cache) would not be enough. On the same URL and
# storage_options that store:
#
# * ignores pipe_file(mode="create") and overwrites (measured with
#   obstore 0.12 on moto), which would silently break create-only save
#   records, manifests and the writer lease;
# * reports a missing bucket as a GenericError, which would be retried as
#   transient instead of being raised at once as a configuration error;
# * reads other option names and environment variables (config={"endpoint"}
#   rather than endpoint_url, FLYTE_AWS_* rather than AWS_ENDPOINT_URL),
#   so a URL's meaning would depend on what else the process imported.
#
# So these protocols always get the library that restartable's object-store
# protocol is written and tested against, imported directly. Other
# protocols (memory, file, custom registrations) still go through the
# registry, and so do chained URLs ("simplecache::s3://...").
STANDARD_FILESYSTEMS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "S3FileSystem"),
    "s3a": ("s3fs", "S3FileSystem"),
    "gs": ("gcsfs", "GCSFileSystem"),
    "gcs": ("gcsfs", "GCSFileSystem"),
    "abfs": ("adlfs", "AzureBlobFileSystem"),
    "abfss": ("adlfs", "AzureBlobFileSystem"),
    "az": ("adlfs", "AzureBlobFileSystem"),
}


def open_filesystem(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path of ``url`` in it.

    ``s3://`` is always ``s3fs.S3FileSystem`` (``gs://`` gcsfs, ``abfs://``
    adlfs), even where another library re-registered the protocol with
    fsspec; see :data:`STANDARD_FILESYSTEMS`. Options embedded in the URL
    and fsspec's configuration apply as with ``fsspec.core.url_to_fs``.
    A missing fsspec or protocol library raises :class:`ModuleNotFoundError`
    naming it and what to install.
    """
    require("fsspec", extra="remote", feature=url)
    import fsspec

    standard = STANDARD_FILESYSTEMS.get(url_protocol(url))
    if standard is None or "::" in url:
        return cast("tuple[Any, str]", fsspec.core.url_to_fs(url, **storage_options))
    module, name = standard
    # s3fs comes with the remote extra; gcsfs and adlfs with no extra of restartable.
    extra = "remote" if module in EXTRAS["remote"] else None
    cls = getattr(import_optional(module, extra=extra, feature=url), name)
    options = {**cls._get_kwargs_from_urls(url), **storage_options}
    return cls(**options), cls._strip_protocol(url)


class ObjectStore:
    """One fsspec filesystem rooted at a URL prefix, with retries and clear errors.

    Parameters
    ----------
    url:
        The prefix, for example ``"s3://bucket/runs/forecast"``.
    storage_options:
        Passed to ``fsspec.filesystem`` (for example ``{"endpoint_url": ...}``
        or ``{"anon": True}``); by default fsspec's own configuration.
    retry:
        How transient failures are retried.

    Keys are paths relative to the prefix, with ``/`` separators.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, retry: RetryPolicy | None = None
    ) -> None:
        if not is_url(url):
            raise ValueError(f"not a URL: {url!r} (expected protocol://...)")
        self.url = url.rstrip("/")
        self.protocol = url_protocol(url)
        self.retry = retry or RetryPolicy()
        self.storage_options = dict(storage_options or {})
        # Readers must see what other processes wrote since: fsspec's
        # listings cache would hide new rows (and keep retired ones) for the
        # life of the filesystem instance.
        self.storage_options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = open_filesystem(self.url, self.storage_options)
        except MissingExtraError:
            raise  # it names the URL already
        except ImportError as exc:
            raise ImportError(f"{url}: {exc}") from exc
        except Exception as exc:
            raise CheckpointRemoteError(f"cannot open {self.url}: {exc}", url=self.url) from exc
        self.root = root.rstrip("/")
        self.local = self.protocol in LOCAL_PROTOCOLS

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # ------------------------------------------------------------------ naming

    def path(self, key: str) -> str:
        """The filesystem path (no protocol) of ``key``."""
        return f"{self.root}/{key}" if key else self.root

    def url_of(self, key: str) -> str:
        return join_url(self.url, key)

    def key_of(self, path: str) -> str:
        """The key of a filesystem path listed under this store's root."""
        path = path.rstrip("/")
        root = self.root + "/"
        if path.startswith(root):
            return path[len(root) :]
        stripped: str = self.fs._strip_protocol(path).rstrip("/")
        return stripped[len(root) :] if stripped.startswith(root) else stripped

    # ------------------------------------------------------------------ retries

    def call(self, what: str, key: str, operation: Callable[[], T], *, writing: bool = False) -> T:
        """Run ``operation``, retrying transient failures; raise clear errors.

        ``what`` is a verb phrase for the message ("reading", "listing").
        ``FileNotFoundError`` passes through for reads of a missing object;
        for writes, and for a missing bucket, it is a :class:`CheckpointRemoteError`.
        """
        url = self.url_of(key)
        last: BaseException | None = None
        delays = self.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except FileNotFoundError as exc:
                if writing or _missing_bucket(exc):
                    raise CheckpointRemoteError(f"{what} {url} failed: {_describe(exc)}", url=url) from exc
                raise
            except FileExistsError:
                raise
            except Exception as exc:  # every other failure is either retried or wrapped
                last = exc
                if _is_permanent(exc):
                    raise CheckpointRemoteError(f"{what} {url} failed: {_describe(exc)}", url=url) from exc
                delay = next(delays, None)
                if delay is None:
                    break
                time.sleep(delay)
        raise CheckpointRemoteError(
            f"{what} {url} failed after {attempt} attempt(s): {_describe(last)}", url=url
        ) from last

    def _invalidate(self, key: str = "") -> None:
        # fsspec caches listings; a reader must see objects others wrote since.
        with contextlib.suppress(Exception):  # caches are an optimisation
            self.fs.invalidate_cache(self.path(key))

    # ------------------------------------------------------------------ operations

    def put_bytes(self, key: str, data: bytes, *, create: bool = False) -> None:
        """Write one object. ``create=True`` refuses to replace an existing one
        (``FileExistsError``), atomically where the store supports it (S3's
        ``If-None-Match``)."""
        if self.local:
            self._put_local(key, lambda fh: fh.write(data), create)
            return
        mode = "create" if create else "overwrite"
        self.call("writing", key, lambda: self.fs.pipe_file(self.path(key), data, mode=mode), writing=True)

    def put_stream(self, key: str, chunks: Callable[[], Iterator[memoryview | bytes]]) -> None:
        """Write one object from a stream of chunks (multipart upload on S3).

        ``chunks`` is called again for each attempt, so that a retried upload
        starts from the first byte.
        """
        if self.local:
            self._put_local(key, lambda fh: [fh.write(chunk) for chunk in chunks()], False)
            return

        def upload() -> None:
            fh = self.fs.open(self.path(key), "wb", block_size=STREAM_BYTES)
            try:
                for chunk in chunks():
                    fh.write(chunk)
            except BaseException:
                # Leaving the file's context would complete the upload and
                # publish a partial object; abort it instead.
                discard = getattr(fh, "discard", None)
                if discard is not None:
                    discard()
                raise
            fh.close()

        self.call("writing", key, upload, writing=True)

    def put_file(self, local: Path, key: str) -> None:
        """Upload a local file to ``key``."""
        if self.local:

            def copy(fh: Any) -> None:
                with open(local, "rb") as src:
                    while chunk := src.read(STREAM_BYTES):
                        fh.write(chunk)

            self._put_local(key, copy, False)
            return
        self.call("uploading", key, lambda: self.fs.put_file(str(local), self.path(key)), writing=True)

    def _put_local(self, key: str, write: Callable[[Any], Any], create: bool) -> None:
        """Write a local file atomically and durably: temp file, fsync, rename."""
        target = Path(self.path(key))

        def run() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                if create:
                    os.link(tmp, target)  # fails with FileExistsError: create-only
                    os.unlink(tmp)
                else:
                    os.replace(tmp, target)
                fsync_dir(target.parent)
            except BaseException:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                raise

        self.call("writing", key, run, writing=True)

    def get_bytes(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        """Read one object (or a byte range of it); ``FileNotFoundError`` if absent."""
        data: bytes = self.call("reading", key, lambda: self.fs.cat_file(self.path(key), start=start, end=end))
        return data

    def get_file(self, key: str, destination: Path) -> tuple[int, str]:
        """Download ``key`` into the local file ``destination``, hashing it on the way.

        Returns the size and checksum of what arrived. A retried download
        starts over from the first byte (file truncated, hash reset).
        """

        def download() -> tuple[int, str]:
            hasher, size = new_hasher(), 0
            with (
                open(destination, "wb") as out,
                self.fs.open(self.path(key), "rb", block_size=STREAM_BYTES, cache_type="none") as fh,
            ):
                while chunk := fh.read(STREAM_BYTES):
                    out.write(chunk)
                    hasher.update(chunk)
                    size += len(chunk)
            return size, hasher.hexdigest()

        return self.call("reading", key, download)

    def size(self, key: str) -> int:
        self._invalidate(key)
        return int(self.call("checking", key, lambda: self.fs.size(self.path(key))))

    def exists(self, key: str) -> bool:
        self._invalidate(key)
        return bool(self.call("checking", key, lambda: self.fs.exists(self.path(key))))

    def list(self, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix`` (recursively), as key to size, read fresh."""
        self._invalidate(prefix)

        def listing() -> dict[str, int]:
            try:
                found = self.fs.find(self.path(prefix), detail=True, withdirs=False)
            except FileNotFoundError as exc:
                if _missing_bucket(exc):
                    raise
                return {}
            return {
                self.key_of(path): int(info.get("size") or 0)
                for path, info in found.items()
                if info.get("type", "file") != "directory"
            }

        return self.call("listing", prefix, listing)

    def delete(self, keys: builtins.list[str]) -> None:  # ``list`` here is the method above
        """Delete objects; keys already gone are fine."""
        if not keys:
            return

        def remove() -> None:
            paths = [self.path(key) for key in keys]
            if self.local:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                return
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(paths)

        self.call("deleting", keys[0], remove)
        for key in keys:
            self._invalidate(key)


def _missing_bucket(exc: BaseException) -> bool:
    """s3fs and gcsfs report a missing bucket as FileNotFoundError; it is a configuration error, not an absent key."""
    text = str(exc).lower()
    return "bucket" in text and ("not exist" in text or "nosuchbucket" in text or "not found" in text)


def _describe(exc: BaseException | None) -> str:
    if exc is None:  # pragma: no cover
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
