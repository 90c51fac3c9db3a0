"""Durable file primitives: hashed writes and reads, fsync, atomic small files.

Every file the store writes goes through :func:`write_payload` or
:func:`write_bytes`; every payload it reads goes through :func:`read_payload`.
The checksum of a file is computed from the bytes as they pass to or from the
disk, never by a second read.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import math
import mmap
import os
import re
import stat
import struct
import threading
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np

from .._text import shown

CHECKSUM_ALGORITHM = "xxh3_64"
# Large enough to keep syscalls rare, small enough that the chunk is still in
# cache when it is hashed.
CHUNK_BYTES = 8 << 20
# The data of a large payload starts at this offset in its file (the ``.npy``
# header is padded to it), and host buffers are allocated on this boundary:
# the page size, and a multiple of every disk's logical block size, which is
# what direct I/O needs of addresses, offsets and lengths.
PAGE_BYTES = 4096
# Arrays at least this large get page-aligned data: the padding is then at
# most 0.4% of the file.
ALIGN_MIN_BYTES = 1 << 20
# O_DIRECT is Linux's; elsewhere every write goes through the page cache.
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def direct_io_enabled() -> bool:
    """Whether page-aligned payloads are written with direct I/O.

    On by default where the platform has it; ``RESTARTABLE_DIRECT_IO=0``
    turns it off, for file systems where direct writes are slow (some
    network file systems serve them synchronously, one request at a time).
    """
    return bool(_O_DIRECT) and os.environ.get("RESTARTABLE_DIRECT_IO", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


_CHECKSUM = re.compile(r"[0-9a-f]{16}")


def is_checksum(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a checksum as the store records it (16 lowercase hex digits of xxh3_64)."""
    return isinstance(value, str) and _CHECKSUM.fullmatch(value) is not None


def new_hasher() -> Any:
    import xxhash  # imported lazily so that ``import restartable`` needs numpy only

    return xxhash.xxh3_64()


def checksum_bytes(data: bytes | memoryview) -> str:
    hasher = new_hasher()
    hasher.update(data)
    digest: str = hasher.hexdigest()
    return digest


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


def array_body(array: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """The ``.npy`` header fields and a zero-copy byte view of the data."""
    if array.flags.c_contiguous:
        fortran, data = False, array
    elif array.flags.f_contiguous:
        fortran, data = True, array.T
    else:
        fortran, data = False, np.ascontiguousarray(array)
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": fortran, "shape": array.shape}
    raw = data.reshape(-1).view(np.uint8) if data.size else np.empty(0, np.uint8)
    return header, raw.data  # the same view as memoryview(raw)


class _HeaderBuffer:
    """A write-only file object collecting the bytes of an ``.npy`` header."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


_NPY_MAGIC = b"\x93NUMPY"
_NPY_ALIGN = 64
# A header is a few hundred bytes, more for a structured dtype of many fields
# (numpy's own reader stops at 10,000 bytes by default, below what the writer
# makes of a few hundred fields); anything near this is not one of ours.
# restartable.codec refuses arrays whose dtype would not fit.
_NPY_MAX_HEADER = 1 << 20


def _npy_header_v3(header: dict[str, Any]) -> bytes:
    """A version 3.0 header: like 2.0 but UTF-8, for non-Latin-1 field names."""
    text = "{" + "".join(f"{key!r}: {header[key]!r}, " for key in sorted(header)) + "}"
    body = text.encode("utf-8")
    prefix = len(_NPY_MAGIC) + 2 + 4
    padding = -(prefix + len(body) + 1) % _NPY_ALIGN
    body += b" " * padding + b"\n"
    return _NPY_MAGIC + bytes([3, 0]) + struct.pack("<I", len(body)) + body


def npy_header(header: dict[str, Any], length: int | None = None) -> bytes:
    """The ``.npy`` header for ``header``'s fields, padded to ``length`` bytes when it fits.

    ``numpy.load`` reads any padding; padding the header to a page puts the
    data of the file on a page boundary.
    """
    try:
        repr(header["descr"]).encode("latin-1")
    except UnicodeEncodeError:
        raw = _npy_header_v3(header)
    else:
        buffer = _HeaderBuffer()
        try:
            np.lib.format.write_array_header_1_0(buffer, header)
        except ValueError:  # header longer than 64 KiB (huge structured dtypes)
            buffer.parts.clear()
            np.lib.format.write_array_header_2_0(buffer, header)
        raw = b"".join(buffer.parts)
    if length is None or len(raw) >= length:
        return raw
    # Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 in 4.
    width = 2 if raw[6] == 1 else 4
    fields = raw[:-1].rstrip(b" ")
    padded = fields + b" " * (length - len(fields) - 1) + b"\n"
    prefix = len(_NPY_MAGIC) + 2 + width
    size = struct.pack("<H" if width == 2 else "<I", length - prefix)
    return padded[: len(_NPY_MAGIC) + 2] + size + padded[prefix:]


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, order: Literal["C", "F"] = "C") -> np.ndarray:
    """An uninitialised array whose data starts on a page boundary.

    Host buffers of snapshots are allocated this way so that the persist can
    hand them to the disk with direct I/O, without a copy into the page cache.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype, order=order)
    # A private anonymous mapping is page-aligned, is not shared with a
    # forked child, and the array keeps it alive.
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", getattr(mmap, "MAP_ANON", 0))
    memory = mmap.mmap(-1, nbytes, flags=private) if private else mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # A kernel without transparent huge pages raises OSError: small pages are fine.
        with contextlib.suppress(OSError):
            memory.madvise(mmap.MADV_HUGEPAGE)  # fewer faults and TLB misses when the buffer is filled
    flat = np.frombuffer(memory, dtype=np.uint8, count=nbytes).view(dtype)
    if order == "F":
        transposed: np.ndarray = flat.reshape(shape[::-1]).T
        return transposed
    return flat.reshape(shape)


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if view.nbytes else 0


# numpy's own limit on dimensions (NPY_MAXDIMS); a header with more is not an array.
_NPY_MAX_DIMS = 64
# The largest a dimension can be (an empty array's other dimensions are not
# bounded by its size): numpy indexes with a signed 64-bit integer.
_NPY_MAX_DIMENSION = 2**63 - 1
# The largest Unicode code point: numpy stores others in '<U' arrays, and
# Python then fails to turn them into text.
_MAX_CODE_POINT = 0x10FFFF
_NPY_FIELDS = {"descr", "fortran_order", "shape"}
# A simple dtype as ``dtype_to_descr`` writes it: '<f8', '|b1', '<U7', '|V16', '<M8[ns]', '<m8[10s]'.
SIMPLE_DESCR = re.compile(r"[<>|=]?[a-zA-Z][0-9]{0,9}(\[[0-9]{0,9}[a-zA-Z]{1,3}\])?")


def read_npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse the header of an ``.npy`` stream strictly: ``(shape, fortran_order, dtype)``.

    Our own reader for every version the writer makes (1.0, 2.0, 3.0), so
    that what it accepts does not depend on numpy's: the length is bounded
    before anything is read; the text must be a literal dictionary of exactly
    ``descr``, ``fortran_order`` and ``shape`` (``ast.literal_eval`` parses
    literals only and never calls or imports anything); the shape has at most
    64 non-negative integer dimensions; the dtype is built from the
    description and must hold no Python objects. Raises :class:`PayloadError`
    saying which rule failed.
    """
    magic = fh.read(len(_NPY_MAGIC) + 2)
    if len(magic) < len(_NPY_MAGIC) + 2 or not magic.startswith(_NPY_MAGIC):
        raise PayloadError("not an .npy file (no magic string)")
    version = (magic[-2], magic[-1])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise PayloadError(f"unsupported .npy version {version[0]}.{version[1]}")
    width = 2 if version == (1, 0) else 4
    raw = fh.read(width)
    if len(raw) < width:
        raise PayloadError("file ends inside the header")
    (length,) = struct.unpack("<H" if width == 2 else "<I", raw)
    if length > _NPY_MAX_HEADER:
        raise PayloadError(f"header of {length} bytes is implausibly large (at most {_NPY_MAX_HEADER})")
    data = fh.read(length)
    if len(data) < length:
        raise PayloadError("file ends inside the header")
    try:
        text = data.decode("utf-8" if version == (3, 0) else "latin-1")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise PayloadError(f"header is not a literal dictionary ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != _NPY_FIELDS:
        raise PayloadError("header is not a dictionary of exactly descr, fortran_order and shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not (is_shape(shape) and isinstance(fortran, bool)):
        raise PayloadError(f"invalid shape {shown(shape)} or fortran_order {shown(fortran)}")
    return shape, fortran, dtype_from_descr(header["descr"])


def is_shape(shape: Any) -> TypeGuard[tuple[int, ...]]:
    """Whether ``shape`` is a tuple of at most 64 dimensions, each an integer numpy can index."""
    return (
        isinstance(shape, tuple)
        and len(shape) <= _NPY_MAX_DIMS
        and all(type(n) is int and 0 <= n <= _NPY_MAX_DIMENSION for n in shape)
    )


def dtype_from_descr(descr: Any) -> np.dtype:
    """The dtype an ``.npy`` description stands for, checked strictly (:class:`PayloadError` otherwise).

    A simple description (``'<f4'``, ``'<U7'``, ``'<M8[ns]'``) or a list of
    fields, as :func:`numpy.lib.format.dtype_to_descr` makes them; never one
    holding Python objects.
    """
    if not (isinstance(descr, list) or (isinstance(descr, str) and SIMPLE_DESCR.fullmatch(descr))):
        raise PayloadError(f"invalid descr {shown(descr)}")
    try:
        dtype = np.lib.format.descr_to_dtype(typing.cast(Any, descr))
    except Exception as exc:
        # numpy answers a malformed description in many ways (a SyntaxError
        # from its parser of comma-separated formats, among others); any of
        # them means the description is damaged.
        raise PayloadError(f"invalid descr {shown(descr)} ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise PayloadError("holds an object array; refusing to unpickle it")
    return dtype


def check_text(array: np.ndarray) -> None:
    """Refuse a ``U`` array holding a code point past U+10FFFF, which Python cannot turn into text."""
    dtype = array.dtype
    if dtype.kind == "U" and array.size and dtype.itemsize:
        flat = np.ascontiguousarray(array).reshape(-1)
        if int(flat.view(f"{dtype.str[0]}u4").max()) > _MAX_CODE_POINT:
            raise PayloadError("holds text that is not Unicode (a code point past U+10FFFF)")


class PreparedArray:
    """An array laid out as the bytes of an ``.npy`` file, ready to hash or write.

    A large array's header is padded to :data:`PAGE_BYTES`, so that its data
    starts on a page boundary of the file; when the array's memory is
    page-aligned too (the snapshot buffers are), :func:`write_payload` can
    write it with direct I/O.
    """

    __slots__ = ("_digest", "body", "direct", "header", "size")

    def __init__(self, array: np.ndarray) -> None:
        fields, self.body = array_body(array)
        large = self.body.nbytes >= ALIGN_MIN_BYTES
        self.header = npy_header(fields, PAGE_BYTES if large else None)
        self.size = len(self.header) + self.body.nbytes
        self.direct = (
            large and len(self.header) == PAGE_BYTES and _address(self.body) % PAGE_BYTES == 0 and direct_io_enabled()
        )
        self._digest: str | None = None

    @classmethod
    def of_bytes(cls, data: np.ndarray, digest: str | None = None) -> PreparedArray:
        """A file of exactly the bytes of ``data`` (a contiguous ``uint8`` array), with no ``.npy`` header.

        For a pack (:mod:`restartable.store.packs`): written with direct I/O
        when its memory is page-aligned and large, like an array's data.
        """
        prepared = cls.__new__(cls)
        prepared.header = b""
        prepared.body = data.data if data.size else memoryview(b"")
        prepared.size = data.nbytes
        prepared.direct = data.nbytes >= ALIGN_MIN_BYTES and _address(prepared.body) % PAGE_BYTES == 0
        prepared.direct = prepared.direct and direct_io_enabled()
        prepared._digest = digest
        return prepared

    def chunks(self) -> Iterator[memoryview]:
        if self.header:
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
    """Finish files on helper threads (direct writes, fsync, close), then wait for all of them.

    ``fsync`` and ``write`` release the GIL, so while one payload is being
    flushed (or written with direct I/O) the next one is hashed and written:
    a commit of several large arrays costs about the slowest flush, not the
    sum of the flushes. The commit protocol is unchanged: :meth:`wait`
    returns only when every file is durable, and the manifest is written
    after it.
    """

    # Below this size a thread costs more than the flush it would overlap.
    THRESHOLD_BYTES = 1 << 20

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[tuple[Path, BaseException]] = []

    def submit(self, fd: int, path: Path, write: Callable[[], None] | None = None) -> None:
        """Run ``write()`` (the rest of the file), fsync and close ``fd`` on a helper thread."""

        def finish() -> None:
            try:
                if write is not None:
                    write()
                os.fsync(fd)
            except BaseException as exc:  # any failure must fail the commit in wait()
                self._errors.append((path, exc))
            finally:
                os.close(fd)

        thread = threading.Thread(target=finish, name="restartable-fsync", daemon=True)
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
            if isinstance(exc, OSError):
                raise type(exc)(exc.errno, f"{exc.strerror} (writing {path.name})") from exc
            raise exc


# Direct writes are synchronous: large requests keep the device busy, and 32
# MiB measured as fast as anything larger.
_DIRECT_CHUNK_BYTES = 32 << 20


# What a direct write answers when it cannot be made directly; a buffered
# write of the same valid memory can be.
_DIRECT_REFUSED = frozenset({errno.EINVAL, errno.EFAULT, errno.EOPNOTSUPP})


def _write_direct(fd: int, body: memoryview) -> None:
    """Write ``body`` (page-aligned memory, at a page-aligned file offset) past the page cache.

    Direct I/O moves the bytes from the buffer to the device without copying
    them into the page cache first: the persist then costs almost no CPU,
    and leaves the cache to the caller's data. Where the file system has no
    direct I/O, or refuses a request, the rest goes through the page cache;
    the unaligned tail always does. The caller's fsync makes all of it durable.
    """
    import fcntl

    bulk = body.nbytes - body.nbytes % PAGE_BYTES
    start = 0
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        bulk = 0  # no direct I/O on this file system
    else:
        try:
            while start < bulk:
                start += os.write(fd, body[start : min(bulk, start + _DIRECT_CHUNK_BYTES)])
        except OSError as exc:
            if exc.errno not in _DIRECT_REFUSED:
                raise
            # A request this device would not take directly (after a short
            # write, say), or memory it cannot reach directly (host memory
            # pinned by a device driver, on some kernels): the rest goes
            # through the page cache.
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    _write_all(fd, body[start:])


def write_payload(path: Path, prepared: PreparedArray, durable: bool = True, sync: SyncGroup | None = None) -> str:
    """Write an ``.npy`` file, hashing each chunk as it is written, and fsync it.

    With ``sync``, a large file's fsync runs on a helper thread of that group
    and is complete only after ``sync.wait()``. A page-aligned array
    (:attr:`PreparedArray.direct`) is hashed in memory first and then written
    with direct I/O, on that helper thread too. Returns the file's checksum.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    handed_off = False
    try:
        if prepared.direct and durable:
            digest = prepared.digest()
            _write_all(fd, memoryview(prepared.header))
            if sync is not None:
                sync.submit(fd, path, lambda: _write_direct(fd, prepared.body))
                handed_off = True
            else:
                _write_direct(fd, prepared.body)
                os.fsync(fd)
            return digest
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


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def refused_link(exc: OSError, name: str | os.PathLike[str]) -> OSError:
    """The error for ``exc`` from an ``O_NOFOLLOW`` open of ``name``: a clear one where it met a link."""
    if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW answers for a link (EMLINK on FreeBSD)
        return OSError(exc.errno, "is a symbolic link; restartable never follows links inside a store", str(name))
    return exc


def open_regular(name: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a file for reading; refuse a symbolic link or anything but a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for
    a writer forever, and ``fstat`` then refuses it; ``O_NOFOLLOW`` refuses a
    link (to ``/dev/zero``, to itself, out of the store) without resolving
    it. Raises :class:`OSError` naming what was found.
    """
    return _open_regular(name, dir_fd)[0]


def _open_regular(name: str | os.PathLike[str], dir_fd: int | None) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise refused_link(exc, name) from None
    try:
        info = os.fstat(fd)
        _check_regular(info.st_mode, name)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def regular_size(name: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """The size of a regular file, found without opening it or following a link (see :func:`open_regular`)."""
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    _check_regular(info.st_mode, name)
    return info.st_size


def _check_regular(mode: int, name: str | os.PathLike[str]) -> None:
    if stat.S_ISLNK(mode):
        raise refused_link(OSError(errno.ELOOP, ""), name)
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a plain file")
        raise OSError(errno.EINVAL, f"is {kind}, not a regular file", str(name))


def open_directory(name: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a directory (for ``dir_fd`` use), refusing a symbolic link to one."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError as exc:
        # Linux answers ENOTDIR, not ELOOP, for a link opened as a directory.
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link:
            raise refused_link(OSError(errno.ELOOP, ""), name) from None
        raise exc from None
    except OSError as exc:
        raise refused_link(exc, name) from None


def read_payload(
    path: str | os.PathLike[str], size: int, checksum: str | None, *, dir_fd: int | None = None
) -> np.ndarray:
    """Read an ``.npy`` file, checking its size and (when given) its checksum.

    The array is read straight into its final buffer and hashed chunk by
    chunk while the chunk is still in cache. Object arrays are refused:
    nothing is ever unpickled; links and special files are never opened
    (:func:`open_regular`). ``dir_fd`` resolves ``path`` in an open directory.
    """
    with open(open_regular(path, dir_fd=dir_fd), "rb", buffering=0) as fh:
        return read_npy(fh, os.fstat(fh.fileno()).st_size, size, checksum)


def read_npy(fh: Any, actual_size: int, size: int, checksum: str | None) -> np.ndarray:
    """Read an ``.npy`` stream of ``actual_size`` bytes (see :func:`read_payload`)."""
    hasher = new_hasher() if checksum is not None else None
    if actual_size != size:
        raise PayloadError(f"size {actual_size} bytes, expected {size}")
    shape, fortran, dtype = read_npy_header(fh)
    header_len = fh.tell()
    # Exact integers: a shape such as (2**32, 2**32) must not wrap around to a size that fits.
    count = math.prod(shape)
    if header_len + count * dtype.itemsize != size:
        raise PayloadError(f"header describes {count * dtype.itemsize} data bytes, file holds {size - header_len}")
    if hasher is not None:
        fh.seek(0)
        hasher.update(fh.read(header_len))
    try:
        flat = np.empty(count, dtype=dtype)
    except MemoryError as exc:
        raise PayloadError(f"its array of {count * dtype.itemsize} bytes does not fit in memory") from exc
    read_into(fh, flat.view(np.uint8) if count * dtype.itemsize else np.empty(0, np.uint8), hasher)
    if hasher is not None and hasher.hexdigest() != checksum:
        raise PayloadError(f"checksum {hasher.hexdigest()} does not match the manifest's {checksum}")
    check_text(flat)
    if fortran:
        transposed: np.ndarray = flat.reshape(shape[::-1]).T
        return transposed
    return flat.reshape(shape)


# Buffers that whole files are read into start on this boundary, so that
# arrays viewed at 64-byte offsets inside them are aligned for any dtype.
BUFFER_ALIGN = 64


def empty_bytes(size: int) -> np.ndarray:
    """``size`` uninitialised bytes starting on a :data:`BUFFER_ALIGN` boundary."""
    try:
        raw = np.empty(size + BUFFER_ALIGN, dtype=np.uint8)
    except MemoryError as exc:
        raise PayloadError(f"{size} bytes do not fit in memory") from exc
    start = -raw.ctypes.data % BUFFER_ALIGN
    return raw[start : start + size]


def read_into(fh: Any, buffer: np.ndarray, hasher: Any | None) -> None:
    """Fill ``buffer`` from ``fh`` in chunks, hashing each (with ``hasher``) while it is in cache.

    :class:`PayloadError` if the stream ends early.
    """
    view = buffer.data if buffer.size else memoryview(b"")
    for start in range(0, view.nbytes, CHUNK_BYTES):
        chunk = view[start : start + CHUNK_BYTES]
        got = fh.readinto(chunk) or 0
        while got < chunk.nbytes:
            more = fh.readinto(chunk[got:])
            if not more:
                raise PayloadError("file ended early")
            got += more
        if hasher is not None:
            hasher.update(chunk)


def read_file(path: str | os.PathLike[str], size: int, *, dir_fd: int | None = None) -> tuple[np.ndarray, str]:
    """The bytes of a regular file of ``size`` bytes (checked) and their checksum, hashed as they are read."""
    fd, info = _open_regular(path, dir_fd)
    with open(fd, "rb", buffering=0) as fh:
        if info.st_size != size:
            raise PayloadError(f"size {info.st_size} bytes, expected {size}")
        buffer = empty_bytes(size)
        hasher = new_hasher()
        read_into(fh, buffer, hasher)
    return buffer, hasher.hexdigest()


def hash_file(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> tuple[int, str]:
    """Size and checksum of a regular file on disk (for ``verify``)."""
    hasher = new_hasher()
    size = 0
    fd, info = _open_regular(path, dir_fd)
    with open(fd, "rb", buffering=0) as fh:
        # A buffer no larger than the file: verifying a row of a million tiny
        # files must not allocate a million chunk-sized buffers.
        view = memoryview(bytearray(min(CHUNK_BYTES, info.st_size + 1)))
        while True:
            n = fh.readinto(view)
            if not n:
                break
            hasher.update(view[:n])
            size += n
    return size, hasher.hexdigest()
