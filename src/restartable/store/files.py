"""Durable file primitives: hashed writes and reads, fsync, atomic small files.

Every file the store writes goes through :func:`write_payload` or
:func:`write_bytes`; every payload it reads goes through :func:`read_payload`. The checksum of a file is computed from the bytes as
they pass to or from the disk, never by a second read.
"""

from __future__ import annotations

import ast
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHECKSUM_ALGORITHM = "xxh3_64"
# Large enough to keep syscalls rare, small enough that the chunk is still in
# cache when it is hashed.
CHUNK_BYTES = 8 << 20


def new_hasher() -> Any:
    import xxhash  # imported lazily so that ``import restartable`` needs numpy only

    return xxhash.xxh3_64()


def checksum_bytes(data: bytes | memoryview) -> str:
    hasher = new_hasher()
    hasher.update(data)
    return hasher.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _array_body(array: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """The ``.npy`` header fields and a zero-copy byte view of the data."""
    if array.flags.c_contiguous:
        fortran, data = False, array
    elif array.flags.f_contiguous:
        fortran, data = True, array.T
    else:
        fortran, data = False, np.ascontiguousarray(array)
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": fortran, "shape": array.shape}
    raw = data.reshape(-1).view(np.uint8) if data.size else np.empty(0, np.uint8)
    return header, memoryview(raw)


class _HeaderBuffer:
    """A write-only file object collecting the bytes of an ``.npy`` header."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_ALIGN = 64
# A header is a few hundred bytes; anything near this is not one of ours.
_NPY_MAX_HEADER = 1 << 20


def _npy_header_v3(header: dict[str, Any]) -> bytes:
    """A version 3.0 header: like 2.0 but UTF-8, for non-Latin-1 field names."""
    text = "{" + "".join(f"{key!r}: {header[key]!r}, " for key in sorted(header)) + "}"
    body = text.encode("utf-8")
    prefix = len(_NPY_MAGIC) + 2 + 4
    padding = -(prefix + len(body) + 1) % _NPY_ALIGN
    body += b" " * padding + b"\n"
    return _NPY_MAGIC + bytes([3, 0]) + struct.pack("<I", len(body)) + body


def npy_header(header: dict[str, Any]) -> bytes:
    try:
        repr(header["descr"]).encode("latin-1")
    except UnicodeEncodeError:
        return _npy_header_v3(header)
    buffer = _HeaderBuffer()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # header longer than 64 KiB (huge structured dtypes)
        buffer.parts.clear()
        np.lib.format.write_array_header_2_0(buffer, header)
    return b"".join(buffer.parts)


def _read_header_v3(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    (length,) = struct.unpack("<I", fh.read(4))
    if length > _NPY_MAX_HEADER:
        raise PayloadError(f"header of {length} bytes is implausibly large")
    # literal_eval parses literals only: it never calls or imports anything.
    header = ast.literal_eval(fh.read(length).decode("utf-8"))
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise PayloadError("header lacks descr, fortran_order or shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(fortran, bool)):
        raise PayloadError(f"invalid shape {shape!r} or fortran_order {fortran!r}")
    return shape, fortran, np.lib.format.descr_to_dtype(header["descr"])


class PreparedArray:
    """An array laid out as the bytes of an ``.npy`` file, ready to hash or write."""

    __slots__ = ("header", "body", "size", "_digest")

    def __init__(self, array: np.ndarray) -> None:
        fields, self.body = _array_body(array)
        self.header = npy_header(fields)
        self.size = len(self.header) + self.body.nbytes
        self._digest: str | None = None

    def chunks(self) -> Iterator[memoryview]:
        yield memoryview(self.header)
        for start in range(0, self.body.nbytes, CHUNK_BYTES):
            yield self.body[start : start + CHUNK_BYTES]

    def digest(self) -> str:
        """Checksum of the file's bytes, computed in memory (used to detect unchanged arrays)."""
        if self._digest is None:
            hasher = new_hasher()
            for chunk in self.chunks():
                hasher.update(chunk)
            self._digest = hasher.hexdigest()
        return self._digest


class SyncGroup:
    """fsync and close files on helper threads, then wait for all of them.

    ``fsync`` releases the GIL, so while one payload is being flushed the
    next one is hashed and written: a commit of several large arrays costs
    about the slowest flush, not the sum of the flushes. The commit protocol
    is unchanged: :meth:`wait` returns only when every file is durable, and
    the manifest is written after it.
    """

    # Below this size a thread costs more than the flush it would overlap.
    THRESHOLD_BYTES = 1 << 20

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[tuple[Path, OSError]] = []

    def submit(self, fd: int, path: Path) -> None:
        def flush() -> None:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._errors.append((path, exc))
            finally:
                os.close(fd)

        thread = threading.Thread(target=flush, name="restartable-fsync", daemon=True)
        thread.start()
        self._threads.append(thread)

    def abandon(self) -> None:
        """Wait for every flush and forget their errors (the commit failed already)."""
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._errors.clear()

    def wait(self) -> None:
        """Wait for every flush; raise the first error, naming its file."""
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        errors, self._errors = self._errors, []
        if errors:
            path, exc = errors[0]
            raise type(exc)(exc.errno, f"{exc.strerror} (flushing {path.name})")


def write_payload(path: Path, prepared: PreparedArray, durable: bool = True, sync: SyncGroup | None = None) -> str:
    """Write an ``.npy`` file, hashing each chunk as it is written, and fsync it.

    With ``sync``, a large file's fsync runs on a helper thread of that group
    and is complete only after ``sync.wait()``. Returns the file's checksum.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    handed_off = False
    try:
        hasher = None if prepared._digest is not None else new_hasher()
        for chunk in prepared.chunks():
            _write_all(fd, chunk)
            if hasher is not None:
                hasher.update(chunk)
        if durable and sync is not None and prepared.size >= SyncGroup.THRESHOLD_BYTES:
            sync.submit(fd, path)
            handed_off = True
        elif durable:
            os.fsync(fd)
    finally:
        if not handed_off:
            os.close(fd)
    if hasher is not None:
        prepared._digest = hasher.hexdigest()
    return prepared.digest()


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Create ``path`` (which must not exist) with ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, memoryview(data))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


class PayloadError(Exception):
    """A payload file does not match what its manifest promises."""


def read_payload(path: Path, size: int, checksum: str | None) -> np.ndarray:
    """Read an ``.npy`` file, checking its size and (when given) its checksum.

    The array is read straight into its final buffer and hashed chunk by
    chunk while the chunk is still in cache. Object arrays are refused:
    nothing is ever unpickled.
    """
    with open(path, "rb", buffering=0) as fh:
        return read_npy(fh, os.fstat(fh.fileno()).st_size, size, checksum)


def read_npy(fh: Any, actual_size: int, size: int, checksum: str | None) -> np.ndarray:
    """Read an ``.npy`` stream of ``actual_size`` bytes (see :func:`read_payload`)."""
    hasher = new_hasher() if checksum is not None else None
    if actual_size != size:
        raise PayloadError(f"size {actual_size} bytes, expected {size}")
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        elif version == (3, 0):
            shape, fortran, dtype = _read_header_v3(fh)
        else:
            raise PayloadError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, TypeError, struct.error) as exc:
        raise PayloadError(f"invalid .npy header ({exc})") from exc
    if dtype.hasobject:
        raise PayloadError("holds an object array; refusing to unpickle it")
    header_len = fh.tell()
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if header_len + count * dtype.itemsize != size:
        raise PayloadError(f"header describes {count * dtype.itemsize} data bytes, file holds {size - header_len}")
    if hasher is not None:
        fh.seek(0)
        hasher.update(fh.read(header_len))
    flat = np.empty(count, dtype=dtype)
    view = memoryview(flat.reshape(-1).view(np.uint8)) if count else memoryview(b"")
    for start in range(0, view.nbytes, CHUNK_BYTES):
        chunk = view[start : start + CHUNK_BYTES]
        got = fh.readinto(chunk)
        while got is not None and got < chunk.nbytes:
            more = fh.readinto(chunk[got:])
            if not more:
                raise PayloadError("file ended early")
            got += more
        if hasher is not None:
            hasher.update(chunk)
    if hasher is not None and hasher.hexdigest() != checksum:
        raise PayloadError(f"checksum {hasher.hexdigest()} does not match the manifest's {checksum}")
    if fortran:
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def hash_file(path: Path) -> tuple[int, str]:
    """Size and checksum of a file on disk (for ``verify``)."""
    hasher = new_hasher()
    size = 0
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return size, hasher.hexdigest()
