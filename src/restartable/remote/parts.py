"""Payloads as parts: uploaded and downloaded concurrently, each part checked.

A large payload (a 256 MB directory archive) is cut into parts of
``PART_BYTES`` while it is being produced, and each part is uploaded by a
worker thread as soon as it is full, so archiving, hashing and uploading
overlap and several requests are in flight at once (the same reason S3
clients use multipart uploads, but each part here is retried on its own and
carries its own checksum). Part 0 is stored under the payload's key, part
``i`` under ``<key>.<i:06d>``; a payload that fits one part is one object.

Downloads fetch the parts concurrently into their place in one local file,
check each part's size and checksum, then the checksum of the whole.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import CheckpointCorruptError
from ..store.files import checksum_bytes, hash_file, new_hasher
from ..store.objects import ObjectStore

PART_BYTES = 16 << 20
WORKERS = 4


def part_key(key: str, index: int) -> str:
    return key if index == 0 else f"{key}.{index:06d}"


class PartUploader:
    """A write-only stream that uploads itself to ``key`` in parts, concurrently.

    Call :meth:`close` to upload the rest and get the part list, or
    :meth:`abort` to delete what was uploaded. At most ``WORKERS + 1`` parts
    are held in memory.
    """

    def __init__(self, store: ObjectStore, key: str, *, part_bytes: int = PART_BYTES, workers: int = WORKERS) -> None:
        self.store, self.key, self.part_bytes = store, key, part_bytes
        self._buffer = bytearray()
        self._hasher = new_hasher()
        self._size = 0
        self._parts: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restartable-upload")
        self._workers = workers
        self._pending: deque[Future[None]] = deque()
        self._uploaded: list[str] = []

    def write(self, data: bytes | memoryview) -> int:
        self._hasher.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= self.part_bytes:
            self._submit(bytes(self._buffer[: self.part_bytes]))
            del self._buffer[: self.part_bytes]
        return len(data)

    def flush(self) -> None:
        pass

    def _submit(self, block: bytes) -> None:
        index = len(self._parts)
        key = part_key(self.key, index)
        self._parts.append({"key": key, "size": len(block), "checksum": checksum_bytes(block)})

        def upload() -> None:
            self.store.put_bytes(key, block, create=True)
            self._uploaded.append(key)

        self._pending.append(self._pool.submit(upload))
        while len(self._pending) > self._workers:
            self._pending.popleft().result()  # bounded memory; raises an upload's failure

    def close(self) -> tuple[list[dict[str, Any]], int, str]:
        """Upload what is left and wait; returns (parts, total size, checksum of the whole)."""
        try:
            if self._buffer or not self._parts:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._pending.popleft().result()
        except BaseException:
            self.abort()
            raise
        finally:
            self._pool.shutdown(wait=True)
        return self._parts, self._size, self._hasher.hexdigest()

    def abort(self) -> None:
        """Stop and delete every part uploaded so far (best effort)."""
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        with contextlib.suppress(Exception):  # the next save collects orphans
            self.store.delete(list(self._uploaded))


def download_parts(
    store: ObjectStore, record_url: str, parts: list[dict[str, Any]], size: int, checksum: str, destination: Path
) -> None:
    """Fetch every part into ``destination`` and verify each part and the whole.

    Raises :class:`CheckpointCorruptError` naming the part at fault;
    ``FileNotFoundError`` when a part is missing.
    """
    offsets, offset = [], 0
    for part in parts:
        offsets.append(offset)
        offset += int(part["size"])
    if offset != size:
        raise CheckpointCorruptError(
            f"save record {record_url} lists parts of {offset} bytes in all, not {size}", row=record_url
        )
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)

        def fetch(index: int) -> None:
            part = parts[index]
            data = store.get_bytes(part["key"])
            url = store.url_of(part["key"])
            if len(data) != int(part["size"]):
                raise CheckpointCorruptError(
                    f"{url} is {len(data)} bytes, its save record says {part['size']} (truncated or altered)",
                    row=record_url,
                    file=url,
                )
            if checksum_bytes(data) != part["checksum"]:
                raise CheckpointCorruptError(
                    f"{url} has checksum {checksum_bytes(data)}, its save record says {part['checksum']} (altered)",
                    row=record_url,
                    file=url,
                )
            view = memoryview(data)
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offsets[index] + written)

        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="restartable-download") as pool:
            for future in [pool.submit(fetch, index) for index in range(len(parts))]:
                future.result()
    finally:
        os.close(fd)
    actual_size, digest = hash_file(destination)
    if actual_size != size or digest != checksum:
        raise CheckpointCorruptError(
            f"the parts of {record_url} join to checksum {digest}, the record says {checksum}", row=record_url
        )


class PartReader(io.RawIOBase):
    """A read-only stream over a payload's parts, fetched ahead concurrently.

    Each part is checked (size and checksum) before any of its bytes is
    handed out, and the checksum of the whole is checked when the last byte
    has been read; a mismatch raises :class:`CheckpointCorruptError`. Up to
    ``WORKERS`` parts are in flight or buffered at a time.
    """

    def __init__(
        self, store: ObjectStore, record_url: str, parts: list[dict[str, Any]], size: int, checksum: str
    ) -> None:
        super().__init__()
        total = sum(int(part["size"]) for part in parts)
        if total != size:
            raise CheckpointCorruptError(
                f"save record {record_url} lists parts of {total} bytes in all, not {size}", row=record_url
            )
        self.store, self.record_url, self.parts, self.size, self.checksum = store, record_url, parts, size, checksum
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="restartable-download")
        self._ahead: deque[Future[bytes]] = deque()
        self._next = 0
        self._current = memoryview(b"")
        self._hasher = new_hasher()
        self._consumed = 0
        self._fill()

    def _fetch(self, index: int) -> bytes:
        part = self.parts[index]
        data = self.store.get_bytes(part["key"])
        url = self.store.url_of(part["key"])
        if len(data) != int(part["size"]):
            raise CheckpointCorruptError(
                f"{url} is {len(data)} bytes, its save record says {part['size']} (truncated or altered)",
                row=self.record_url,
                file=url,
            )
        digest = checksum_bytes(data)
        if digest != part["checksum"]:
            raise CheckpointCorruptError(
                f"{url} has checksum {digest}, its save record says {part['checksum']} (altered)",
                row=self.record_url,
                file=url,
            )
        return data

    def _fill(self) -> None:
        while len(self._ahead) < WORKERS and self._next < len(self.parts):
            self._ahead.append(self._pool.submit(self._fetch, self._next))
            self._next += 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        while not self._current:
            if not self._ahead:
                self._finish()
                return 0
            data = self._ahead.popleft().result()
            self._fill()
            self._hasher.update(data)
            self._consumed += len(data)
            self._current = memoryview(data)
        count = min(len(target), len(self._current))
        target[:count] = self._current[:count]
        self._current = self._current[count:]
        return count

    def _finish(self) -> None:
        if self._consumed != self.size or self._hasher.hexdigest() != self.checksum:
            raise CheckpointCorruptError(
                f"the payload of {self.record_url} has checksum {self._hasher.hexdigest()} "
                f"over {self._consumed} bytes, "
                f"the record says {self.checksum} over {self.size}",
                row=self.record_url,
            )

    def drain(self) -> None:
        """Read to the end, so that the checksum of the whole is checked."""
        sink = bytearray(1 << 20)
        while self.readinto(sink):
            pass

    def close(self) -> None:
        for future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._ahead.clear()
        super().close()
