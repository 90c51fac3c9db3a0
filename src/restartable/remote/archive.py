"""Directory archives: gzipped tarballs written while hashed, extracted safely.

Extraction trusts nothing in the archive. Every member is checked, and the
whole archive is refused if any member:

* has an absolute name, a drive, or a ``..`` component;
* lies below a member that is a symbolic link (writing through a link is
  how a link that looks harmless redirects later members);
* is a symbolic link whose target is absolute or leaves the target
  directory, or a hard link to anything but an earlier regular file;
* is a device file, a FIFO, a GNU sparse file or any other special file;
* is larger than the limit, or makes the total larger than the limit or
  than the free space of the target filesystem.

The archive as a whole is read within fixed limits, each checked before
the bytes it guards are read (left alone, :mod:`tarfile` reads an extended
header of any claimed size into memory, recurses once per chained header,
and a gzip stream is read to its end, however far that is):

* at most ``MAX_MEMBERS`` members, making at most ``MAX_MEMBERS`` files,
  directories and links (the directories a member's path implies count);
* paths at most ``MAX_DEPTH`` directories deep and ``MAX_PATH_BYTES`` long,
  with names of at most ``MAX_NAME_BYTES``; link targets at most
  ``MAX_PATH_BYTES`` long;
* extended headers (pax headers, GNU long names) of at most
  ``MAX_EXTENDED_HEADER_BYTES`` each, and at most ``MAX_EXTENDED_HEADERS``
  in front of one member;
* pax headers of at most ``MAX_PAX_BYTES`` and ``MAX_PAX_RECORDS`` records
  in all (a global record counts once for every member it applies to),
  without a run of more than ``MAX_PAX_DIGITS`` digits; no GNU sparse map;
* at most ``MAX_HEADER_BYTES`` of the unpacked stream that are not member
  data (headers, extended headers, padding);
* an unpacked size (the regular files) of at most ``max_total_bytes``,
  which a remote save passes from its record (the size measured when it
  was written), and of at most ``DEFAULT_MAX_TOTAL_BYTES`` when none is
  given; never more than the free space of the target filesystem;
* after the end-of-archive marker, nothing but zero padding, at most
  ``MAX_TRAILER_BYTES``, then the end of the stream: reading stops there
  instead of unpacking whatever follows.

So the time and memory spent on any archive, refused or not, are bounded
by these limits plus the size of what it extracts, and no check costs more
than time linear in the length of a member's path. :func:`write_archive`
refuses a directory whose archive would break a limit, so a save that was
written can be restored.

Members are extracted, each right after its check, into a fresh staging
directory inside the target, with :mod:`tarfile`'s ``data`` filter as a
second line of defence, and moved into place only when all of them passed:
a refused archive leaves the target as it was and writes nothing outside it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import posixpath
import re
import shutil
import stat
import tarfile
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from ..errors import CheckpointUnsafeArchiveError

if TYPE_CHECKING:
    from typing_extensions import Self

# --------------------------------------------------------------------------- limits
# Each limit is far above what a checkpoint directory needs, and low enough
# that an archive at every limit at once still costs seconds, not hours.

# Checkpoint directories hold a few files per rank and per array: thousands
# at most. Each member costs a file creation (a fraction of a millisecond),
# and a refusal may come at the last one, so this bounds the work wasted on
# a refused archive to seconds. The directories that paths imply count too:
# they are created all the same.
MAX_MEMBERS = 10_000
# Checkpoint trees are a dozen levels deep at most. For each member,
# tarfile's data filter resolves the path level by level (about 10 us a
# level) and os.makedirs recurses once per missing level.
MAX_DEPTH = 64
# Linux's PATH_MAX less the terminating NUL, and NAME_MAX (Linux, macOS and
# Windows alike): a longer path or name cannot be created in one system call.
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
# What Go's archive/tar and libarchive accept for a pax header or a GNU long
# name. Real ones hold a path, a link target and a few numbers: well under
# 10 KiB with both paths at MAX_PATH_BYTES.
MAX_EXTENDED_HEADER_BYTES = 1 << 20
# Consecutive extended headers in front of one member (tarfile recurses once
# per header). Real archives have one of each kind at most: pax global and
# extended headers, GNU long name and long link name.
MAX_EXTENDED_HEADERS = 4
# tarfile parses pax records with regular expressions: about 12 ms per MiB,
# and one record at a time in Python (about 2 us each); it copies the global
# records into every later member. Before the fix for CVE-2024-6232 (Python
# 3.10.15, 3.11.10, 3.12.6) its search for "hdrcharset" also takes time
# quadratic in the length of a run of digits (a MiB of digits: an hour).
# Writers put 30 to 300 bytes and one to five records in front of a member
# (mtime; path and linkpath past 100 characters; GNU tar adds atime and
# ctime). Numbers have at most 20 digits, a SHA-256 in hex at most 64.
MAX_PAX_BYTES = 8 << 20
MAX_PAX_RECORDS = 10 * MAX_MEMBERS
MAX_PAX_DIGITS = 64
# Everything tarfile reads that is not member data: three blocks a member
# for write_archive's archives (a header, a pax header and its records).
MAX_HEADER_BYTES = 64 << 20
# Writers pad an archive to a whole record after its end-of-archive marker:
# 10 KiB with tar's and tarfile's default of 20 blocks. 1 MiB allows blocking
# factors up to 2048, and reaching the end of the stream checks its integrity
# (the gzip CRC; a streamed payload's checksum).
MAX_TRAILER_BYTES = 1 << 20
# The unpacked size allowed when the caller knows none (a tarball flyte
# saved, a save record older than its unpacked_size field): on a shared
# filesystem with petabytes free, the free space alone bounds nothing.
DEFAULT_MAX_TOTAL_BYTES = 1 << 40

# A checkpoint is written far more often than it is read, and most of its
# bytes (float arrays) barely compress: deflate at level 1 runs at about
# 40 MB/s on them and saves 7%. So the archive is a sequence of gzip
# members, one per block, each compressed only if a sample of it shrinks
# (a valid .tar.gz: gzip readers concatenate members).
COMPRESS_LEVEL = 1
BLOCK_BYTES = 4 << 20
_SAMPLE_BYTES = 64 << 10
_WORTH_IT = 0.9  # compress a block when a sample shrinks below this ratio


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, fh: BinaryIO, hasher: Any) -> None:
        self._fh, self._hasher, self.size = fh, hasher, 0

    def write(self, data: bytes) -> int:
        self._hasher.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def _gzip_member(block: bytes) -> bytes:
    sample = block[:_SAMPLE_BYTES]
    shrinks = len(zlib.compress(sample, COMPRESS_LEVEL)) < _WORTH_IT * len(sample)
    return gzip.compress(block, compresslevel=COMPRESS_LEVEL if shrinks else 0, mtime=0)


class _BlockGzipWriter:
    """Gzip a stream block by block on worker threads (zlib releases the GIL), in order."""

    def __init__(self, out: _HashingWriter) -> None:
        self._out = out
        self._buffer = bytearray()
        self._written = 0
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="restartable-gzip"
        )
        self._pending: deque[Future[bytes]] = deque()

    def tell(self) -> int:
        return self._written

    def write(self, data: bytes) -> int:
        self._written += len(data)
        self._buffer += data
        while len(self._buffer) >= BLOCK_BYTES:
            self._submit(bytes(self._buffer[:BLOCK_BYTES]))
            del self._buffer[:BLOCK_BYTES]
        return len(data)

    def _submit(self, block: bytes) -> None:
        self._pending.append(self._pool.submit(_gzip_member, block))
        # Bounded: at most two blocks per worker are in memory.
        while len(self._pending) > 2 * self._pool._max_workers:
            self._out.write(self._pending.popleft().result())

    def close(self) -> None:
        try:
            if self._buffer or not self._pending:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            while self._pending:
                self._out.write(self._pending.popleft().result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def link_target_problem(name: str, target: str) -> str | None:
    """Why the symbolic link ``name -> target`` (names relative to the tree) is unsafe, or None.

    A target must be relative, may climb with ``..`` only before its first
    name (``../../shared/x``, never ``a/../x``: ``a`` may be or become a
    link, which changes where ``..`` leads), and must stay inside the tree.
    """
    if not target or "\x00" in target:
        return "has an empty or invalid target"
    if posixpath.isabs(target) or target.startswith("\\") or (len(target) > 1 and target[1] == ":"):
        return f"is a symbolic link to {target!r}, an absolute path"
    parts = [part for part in target.split("/") if part not in ("", ".")]
    climbing = True
    for part in parts:
        if part == "..":
            if not climbing:
                return f"is a symbolic link to {target!r}, with '..' after a name"
        else:
            climbing = False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if joined == ".." or joined.startswith("../"):
        return f"is a symbolic link to {target!r}, outside the target"
    return None


# Both linear in the length of the path, which may be as long as an extended header.


def _depth_problem(name: str) -> str | None:
    """Why the normalized relative path ``name`` is too deep, or None."""
    depth = name.count("/")
    return f"is {depth:,} directories deep, the limit is {MAX_DEPTH}" if depth > MAX_DEPTH else None


def _length_problem(path: str, what: str) -> str | None:
    """Why ``path`` (``what`` it is, in the message) or one of its names is too long, or None."""
    # Bytes as the filesystem counts them; surrogatepass encodes any str
    # (names that were not UTF-8 arrive as surrogate escapes).
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        return f"has {what} of {size:,} bytes, the limit is {MAX_PATH_BYTES:,}"
    if size > MAX_NAME_BYTES:
        longest = max(len(part.encode("utf-8", "surrogatepass")) for part in path.split("/"))
        if longest > MAX_NAME_BYTES:
            return f"has {what} with a name of {longest:,} bytes, the limit is {MAX_NAME_BYTES}"
    return None


def _check_source(root: Path) -> int:
    """Refuse what could not be restored safely; return the bytes of regular files.

    The limits of extraction that depend on the directory (members, paths,
    pax headers) are applied here too, so that a save that could be written
    can be restored.
    """
    total = 0
    entries = 0
    pax_bytes = 0
    real_root = os.path.realpath(root)

    def refuse(member: str, why: str) -> NoReturn:
        raise CheckpointUnsafeArchiveError(f"cannot save {root}: {why}", member=member)

    for current, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(current) / name
            member = path.relative_to(root).as_posix()
            info = path.lstat()
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            entries += 1
            if entries > MAX_MEMBERS:
                refuse(member, f"it holds more than {MAX_MEMBERS:,} files, directories and links, the limit")
            problem = _depth_problem(member) or _length_problem(member, "a path")
            if problem is not None:
                refuse(member, f"{member!r} {problem}; it could not be restored")
            # tarfile writes a pax header for each entry: its mtime (under 64
            # bytes with the framing), and its path and link target when they
            # pass 100 characters; counted here as if they always did.
            paths = f"{member}/{target}".encode("utf-8", "surrogatepass")
            pax_bytes += 64 + len(paths)
            if pax_bytes > MAX_PAX_BYTES:
                refuse(member, f"its paths would take the pax headers of its archive past {MAX_PAX_BYTES:,} bytes")
            if _longest_digit_run_over_limit(paths, len(paths)):
                refuse(member, f"{member!r} has a run of more than {MAX_PAX_DIGITS} digits; it could not be restored")
            if stat.S_ISLNK(info.st_mode):
                problem = link_target_problem(member, target)
                resolved = os.path.realpath(path)
                if problem is None and resolved != real_root and not resolved.startswith(real_root + os.sep):
                    problem = f"resolves to {resolved}, outside the directory"
                if problem is not None:
                    refuse(member, f"the symbolic link {member} {problem}; it could not be restored safely")
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
            elif not stat.S_ISDIR(info.st_mode):
                refuse(member, f"{path} is not a regular file, directory or link")
    return total


def write_archive(source: Path, destination: Path | Any, hasher: Any = None) -> tuple[int, int]:
    """Write ``source`` (a directory) as a gzipped tarball.

    ``destination`` is a local path or any object with ``write(bytes)`` (the
    parallel part uploader streams the archive straight to the object store
    this way). With ``hasher``, the archive's bytes are hashed as they are
    written. Returns the archive's size and the total size of the regular
    files in it.
    """
    source = Path(source)
    unpacked = _check_source(source)
    with contextlib.ExitStack() as stack:
        raw = (
            stack.enter_context(open(destination, "wb")) if isinstance(destination, (str, os.PathLike)) else destination
        )
        counted = _HashingWriter(raw, hasher if hasher is not None else _NoHash())
        gz = _BlockGzipWriter(counted)
        try:
            # Not the "w|" stream mode: it re-copies its whole buffer on each write.
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20) as tar:  # type: ignore[call-overload]
                for current, dirs, files in os.walk(source):
                    dirs.sort()
                    base = Path(current)
                    for name in dirs + sorted(files):
                        path = base / name
                        tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
        finally:
            gz.close()
    # No fsync: a local archive is a spool file for an upload, not a durable copy.
    return counted.size, unpacked


class _NoHash:
    def update(self, data: bytes) -> None:
        pass


def _normalized(name: str) -> str | None:
    """The member's normalized relative name, or None if it is not a safe one."""
    if not name or "\x00" in name:
        return None
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return None
    normal = posixpath.normpath(name)
    return None if normal in ("", ".") and name not in (".", "./") else normal


def _shown(name: str) -> str:
    """A member's name for a message: whole, or its start and length when it is long."""
    if len(name) <= 120:
        return repr(name)
    return f"{(name[:60] + '...')!r} ({len(name):,} characters)"


class _Entry:
    """A path of the archive's tree: what the members made of it, and what lies below it."""

    __slots__ = ("below", "directory", "link", "regular")

    def __init__(self) -> None:
        self.below: dict[str, _Entry] = {}
        self.directory = False  # a directory member, or a path that a member lies in
        self.link = False  # a symbolic link member
        self.regular = False  # a regular file member, which a later hard link may name


class MemberChecker:
    """Checks members one by one, in archive order (see the module docstring).

    The members seen so far are kept as a tree of path components, so each
    check walks the member's path once: its cost is linear in the length of
    the path, whatever the depth of the path or the number of members.
    """

    def __init__(
        self,
        target: Path,
        *,
        max_member_bytes: int | None = None,
        max_total_bytes: int | None = None,
        archive: str | None = None,
    ) -> None:
        self.target = Path(target)
        self.archive = f"the archive {archive}" if archive else "the archive"
        self.free = shutil.disk_usage(self.target).free
        self.limit_total = self.free if max_total_bytes is None else min(self.free, max_total_bytes)
        self.max_member_bytes = max_member_bytes
        self.count = 0  # members checked
        self.entries = 0  # paths in the tree: the files, directories and links extraction makes
        self.total = 0
        self._root = _Entry()

    def refuse(self, why: str, member: str | None = None) -> NoReturn:
        raise CheckpointUnsafeArchiveError(
            f"refusing to extract {self.archive} into {self.target}: {why}; nothing was extracted", member=member
        )

    def _refuse(self, member: tarfile.TarInfo, why: str) -> NoReturn:
        self.refuse(f"member #{self.count:,} {_shown(member.name)} {why}", member.name)

    def _child(self, entry: _Entry, name: str, member: tarfile.TarInfo) -> _Entry:
        child = entry.below.get(name)
        if child is None:
            self.entries += 1
            if self.entries > MAX_MEMBERS:
                self._refuse(
                    member,
                    f"takes the archive past {MAX_MEMBERS:,} files, directories and links "
                    "(counting the directories that paths imply), the limit",
                )
            child = entry.below[name] = _Entry()
        return child

    def _find(self, name: str) -> _Entry | None:
        entry = self._root
        for part in name.split("/"):
            found = entry.below.get(part)
            if found is None:
                return None
            entry = found
        return entry

    def check(self, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > MAX_MEMBERS:
            self._refuse(member, f"is one member too many: the limit is {MAX_MEMBERS:,}")
        name = _normalized(member.name)
        if name is None:
            self._refuse(member, "has an absolute path or a '..' component")
        # Depth first: a path deep enough to matter is also too long, and its depth is the telling rule.
        problem = _depth_problem(name) or _length_problem(member.name, "a path")
        if problem is None and (member.issym() or member.islnk()):
            problem = _length_problem(member.linkname, "a link target")
        if problem is not None:
            self._refuse(member, problem)
        *ancestors, leaf_name = name.split("/")
        entry = self._root
        for part in ancestors:
            entry = self._child(entry, part, member)
            if entry.link:
                self._refuse(member, "lies below a symbolic link of the archive")
            entry.directory = True
        leaf = self._child(entry, leaf_name, member)
        if leaf.link:
            self._refuse(member, "replaces a symbolic link of the archive (it would be written through it)")
        if member.issym():
            problem = link_target_problem(name, member.linkname)
            if problem is not None:
                self._refuse(member, problem)
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            step = self._root
            for part in resolved.split("/"):
                found = step.below.get(part)
                if found is None:
                    break  # nothing of the archive lies there, so no link either
                if found.link:
                    self._refuse(
                        member, f"is a symbolic link to {member.linkname!r}, through another link of the archive"
                    )
                step = found
            if leaf.directory:
                self._refuse(member, "turns a directory of the archive into a symbolic link")
            leaf.link = True
            leaf.regular = False
        elif member.islnk():
            linked = _normalized(member.linkname)
            found = None if linked is None else self._find(linked)
            if found is None or not found.regular:
                self._refuse(member, f"is a hard link to {member.linkname!r}, not to an earlier file of the archive")
        elif member.isreg():
            if member.sparse is not None:
                self._refuse(member, "is a GNU sparse file, which restartable does not restore")
            if member.size < 0:
                self._refuse(member, f"has a negative size ({member.size})")
            if self.max_member_bytes is not None and member.size > self.max_member_bytes:
                self._refuse(member, f"is {member.size} bytes, over the limit of {self.max_member_bytes}")
            self.total += member.size
            if self.total > self.limit_total:
                why = "free space of the target filesystem" if self.limit_total == self.free else "limit"
                self._refuse(
                    member, f"brings the archive to {self.total} bytes, over the {why} ({self.limit_total} bytes)"
                )
            leaf.regular = True
        elif member.isdir():
            leaf.directory = True
        else:
            self._refuse(member, "is a device file, FIFO or other special file")


def check_members(
    members: list[tarfile.TarInfo],
    target: Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> None:
    """Refuse the archive if any member is unsafe (see the module docstring)."""
    checker = MemberChecker(target, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)
    for member in members:
        checker.check(member)


# --------------------------------------------------------------------------- reading within the limits

_BLOCK = tarfile.BLOCKSIZE
_EXTENDED_KINDS = {
    tarfile.XHDTYPE: "a pax extended header",
    tarfile.SOLARIS_XHDTYPE: "a pax extended header",
    tarfile.XGLTYPE: "a pax global header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long name",
    tarfile.GNUTYPE_LONGLINK: "a GNU long link name",
}
_PAX_KINDS = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE)
# A pax record is "<length> <keyword>=<value>\n"; GNU tar describes a sparse
# file's holes with GNU.sparse.* records, and tarfile then reads a map of
# any length from the member's data before the member can be checked.
_GNU_SPARSE_RECORD = re.compile(rb"(?:\A|\n)\d+ GNU\.sparse\.")


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


# Each byte mapped to 1 if it is an ASCII digit (what \d matches in bytes), else to 0.
_DIGIT_MARKS = bytes(byte in b"0123456789" for byte in range(256))
_LONG_DIGIT_RUN = b"\x01" * (MAX_PAX_DIGITS + 1)


def _longest_digit_run_over_limit(data: bytes, end: int) -> bool:
    """Whether ``data[:end]`` holds more than ``MAX_PAX_DIGITS`` digits in a row (a translation and a find, in C)."""
    return data.translate(_DIGIT_MARKS).find(_LONG_DIGIT_RUN, 0, end) >= 0


class _TarStream:
    """The unpacked archive as tarfile reads it: forward only, and within a budget.

    Everything read that is not the data of a member that passed its check
    (:meth:`allow`) counts against ``MAX_HEADER_BYTES``; a read past it is
    refused before anything is unpacked for it. :meth:`peek` shows bytes
    ahead, so that a header can be inspected before tarfile parses it.
    """

    def __init__(self, source: Any, checker: MemberChecker) -> None:
        self._source = source
        self._checker = checker
        # Bytes peeked at and not read yet: immutable, so that a header
        # peeked at whole and then read whole is never copied.
        self._ahead = b""
        self._position = 0
        self._limit = MAX_HEADER_BYTES

    def allow(self, size: int) -> None:
        """Let ``size`` more bytes (a checked member's data) be read beyond the header budget."""
        self._limit += size

    def _unpack(self, size: int) -> bytes:
        chunks = []
        while size > 0 and (chunk := self._source.read(size)):
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def peek(self, size: int) -> bytes:
        if len(self._ahead) < size:
            self._ahead += self._unpack(size - len(self._ahead))
        return self._ahead[:size]

    def _take(self, size: int) -> bytes:
        if self._ahead:
            data, self._ahead = self._ahead[:size], self._ahead[size:]
            if len(data) < size:
                data += self._unpack(size - len(data))
        else:
            data = self._unpack(size)
        self._position += len(data)
        return data

    def read(self, size: int) -> bytes:
        if size < 0:
            raise io.UnsupportedOperation("the archive is read in pieces of known size")
        if self._position + size > self._limit:
            self._checker.refuse(
                f"the headers of member #{self._checker.count + 1:,} take the archive's headers, padding and "
                f"other bytes that are not member data past {MAX_HEADER_BYTES:,} bytes, the limit"
            )
        return self._take(size)

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # tarfile skips padding by seeking forward; nothing here needs to go
        # back, which a decompressing stream could only do from its start.
        if whence != io.SEEK_SET or offset < self._position:
            raise io.UnsupportedOperation("the archive is read forward only")
        while self._position < offset and self.read(min(offset - self._position, 1 << 20)):
            pass
        return self._position

    def finish(self) -> None:
        """Read what follows the end-of-archive marker: zero padding up to ``MAX_TRAILER_BYTES``, then the end."""
        padding = 0
        while chunk := self._take(min(64 << 10, MAX_TRAILER_BYTES + 1 - padding)):
            if chunk.count(0) != len(chunk):
                at = self._position - len(chunk.lstrip(b"\0"))  # the first byte that is not zero
                self._checker.refuse(
                    f"it has data at byte {at:,}, after its end-of-archive marker, where only zero padding may be"
                )
            padding += len(chunk)
            if padding > MAX_TRAILER_BYTES:
                self._checker.refuse(
                    f"it goes on for more than {MAX_TRAILER_BYTES:,} bytes after its end-of-archive marker, "
                    "the most that padding may take (the rest was not read)"
                )


class _HeaderGuard:
    """Applies the header limits to each 512-byte header block as tarfile parses it.

    tarfile reads an extended header whole, then parses the member that
    follows (recursively, for chained headers), before yielding a member
    that can be checked. The guard sees each header block first, through
    :meth:`tarinfo_class`, and refuses before its extended data is read.
    """

    def __init__(self, stream: _TarStream, checker: MemberChecker) -> None:
        self.stream, self.checker = stream, checker
        self.ended = False  # whether the last block parsed was a zero block: the end-of-archive marker
        self._chained = 0  # extended headers in front of the member being read
        self._records = 0
        self._global_records = 0
        self._pax_bytes = 0

    def _refuse(self, why: str) -> NoReturn:
        self.checker.refuse(f"the headers of member #{self.checker.count + 1:,} {why}")

    def _charge(self, records: int) -> None:
        self._records += records
        if self._records > MAX_PAX_RECORDS:
            self._refuse(f"take the archive past {MAX_PAX_RECORDS:,} pax records, the limit")

    def admit(self, info: tarfile.TarInfo) -> None:
        kind = _EXTENDED_KINDS.get(info.type)
        if info.size < 0:
            self._refuse(f"claim a negative size ({info.size})")
        if kind is None:  # the member's own header
            self._chained = 0
            if info.type == tarfile.GNUTYPE_SPARSE:
                self._refuse("describe a GNU sparse file, which restartable does not restore")
            # tarfile copies the global records into every member.
            self._charge(self._global_records)
            return
        self._chained += 1
        if self._chained > MAX_EXTENDED_HEADERS:
            self._refuse(f"chain more than {MAX_EXTENDED_HEADERS} extended headers, the limit")
        if info.size > MAX_EXTENDED_HEADER_BYTES:
            self._refuse(f"include {kind} of {info.size:,} bytes, the limit is {MAX_EXTENDED_HEADER_BYTES:,}")
        if info.type in _PAX_KINDS:
            self._pax_bytes += info.size
            if self._pax_bytes > MAX_PAX_BYTES:
                self._refuse(f"take the archive's pax headers past {MAX_PAX_BYTES:,} bytes, the limit")
            # Peeked at as tarfile will read it, padding included, so that it is not copied.
            records = self.stream.peek(_padded(info.size))
            if _longest_digit_run_over_limit(records, info.size):
                self._refuse(f"include a pax header with a run of more than {MAX_PAX_DIGITS} digits, the limit")
            if records.find(b" GNU.sparse.", 0, info.size) >= 0 and _GNU_SPARSE_RECORD.search(records, 0, info.size):
                self._refuse("describe a GNU sparse file, which restartable does not restore")
            # Every record ends with a newline (a value may hold more): an upper bound, counted in C.
            count = records.count(b"\n", 0, info.size)
            self._charge(count)
            if info.type == tarfile.XGLTYPE:
                self._global_records += count

    def tarinfo_class(self) -> type[tarfile.TarInfo]:
        """A :class:`tarfile.TarInfo` whose headers pass through this guard (``tarfile.open(tarinfo=...)``)."""
        guard = self

        class GuardedTarInfo(tarfile.TarInfo):
            @classmethod
            def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
                guard.ended = len(buf) == _BLOCK and buf.count(0) == _BLOCK
                info = super().frombuf(buf, encoding, errors)
                guard.admit(info)
                return info

        return GuardedTarInfo


def extract_archive(
    archive: Path | BinaryIO,
    target: Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
    on_member: Callable[[tarfile.TarInfo], None] | None = None,
    compression: str = "gz",
    name: str | None = None,
) -> None:
    """Extract a tarball (a path, or a readable stream) into ``target``, checking every member.

    ``compression`` is ``"gz"`` (what restartable writes), ``"bz2"``,
    ``"xz"`` or ``""`` for an uncompressed tar (what other writers may
    leave; see :func:`tar_compression`). ``max_total_bytes`` bounds the
    unpacked size (``DEFAULT_MAX_TOTAL_BYTES`` when None); ``name`` names
    the archive in errors (by default its path, or the stream's name).

    Raises :class:`CheckpointUnsafeArchiveError` when a member is unsafe or
    the archive breaks a limit (see the module docstring), and
    :class:`tarfile.ReadError` when it ends without an end-of-archive
    marker; the target is then untouched, as it is when reading the stream
    fails (a stream that verifies its bytes may raise at its very end, which
    is why nothing is moved into place before the stream has been read to
    its end). ``target`` is created if needed; its existing entries with
    the same names as members are replaced.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = os.fspath(archive) if isinstance(archive, (str, os.PathLike)) else getattr(archive, "name", None)
    checker = MemberChecker(
        target,
        max_member_bytes=max_member_bytes,
        max_total_bytes=DEFAULT_MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes,
        archive=str(name) if name is not None else None,
    )
    staging = target / f".extract-{uuid.uuid4().hex}"
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(archive, "rb")) if isinstance(archive, (str, os.PathLike)) else archive
            stream = _TarStream(stack.enter_context(_decompressor(raw, compression)), checker)
            guard = _HeaderGuard(stream, checker)
            # One pass: each member is checked, then extracted into the
            # staging directory; nothing reaches the target until every
            # member passed. Mode "r:" reads forward only, so a stream works.
            tar = stack.enter_context(
                tarfile.open(  # type: ignore[call-overload]
                    fileobj=stream, mode="r:", tarinfo=guard.tarinfo_class(), copybufsize=1 << 20
                )
            )
            staging.mkdir()
            while (member := tar.next()) is not None:
                checker.check(member)
                if member.isreg():
                    stream.allow(_padded(member.size))
                try:
                    if hasattr(tarfile, "data_filter"):
                        tar.extract(member, staging, filter="data")
                    else:  # pragma: no cover - Python without extraction filters; the member was checked above
                        tar.extract(member, staging)
                except ValueError as exc:
                    if isinstance(exc, CheckpointUnsafeArchiveError):
                        raise
                    # tarfile's answer to a value it cannot apply (a pax mtime of "nan"):
                    # the archive is damaged, as a TarError says.
                    raise tarfile.ExtractError(f"member {member.name[:200]!r} cannot be extracted: {exc}") from exc
                # tarfile keeps every member it reads, to look names up, and a
                # member holds what its extended headers said (up to
                # MAX_HEADER_BYTES in all). Only a hard link that cannot be
                # made looks one up, to copy its target instead (which a stream
                # read forward could not do): tarfile then skips the link
                # silently, and the check below makes that an error.
                tar.members.clear()
                if member.islnk() and not os.path.lexists(os.path.join(staging, member.name)):
                    raise tarfile.ExtractError(f"could not make the hard link {member.name!r} to {member.linkname!r}")
                if on_member is not None:
                    on_member(member)
            # tarfile also stops, silently, at a header it cannot read or at
            # the end of the stream: an archive cut short at a member's end.
            if not guard.ended:
                raise tarfile.ReadError(
                    f"{checker.archive} has no end-of-archive marker: the header at byte {tar.offset:,} "
                    "is missing or damaged"
                )
            stream.finish()
        _move_into(staging, target)
    except tarfile.FilterError as exc:
        raise CheckpointUnsafeArchiveError(
            f"refusing to extract {checker.archive} into {target}: {exc}", member=exc.tarinfo.name
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _decompressor(raw: BinaryIO, compression: str) -> Any:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        import bz2

        return bz2.BZ2File(raw, mode="rb")
    if compression == "xz":
        import lzma

        return lzma.LZMAFile(raw, mode="rb")
    if compression == "":
        return contextlib.nullcontext(raw)
    raise ValueError(f"unknown tar compression {compression!r}")


def tar_compression(path: Path) -> str | None:
    """How the file at ``path`` is a tarball: ``"gz"``, ``"bz2"``, ``"xz"``, ``""`` (plain), or None if it is not one.

    The compression is read from the magic bytes, and the file is a tarball
    when its first block, unpacked, is a tar header or the end-of-archive
    marker: what :func:`tarfile.is_tarfile` (the test flyte's
    ``Checkpoint.load`` applies to the object it downloads) finds, except
    that is_tarfile also reads the extended header that the block announces
    (a 2 GiB pax header: 2 GiB unpacked into memory). That is left to
    :func:`extract_archive`, which refuses it.
    """
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x1f\x8b"):
        compression = "gz"
    elif head.startswith(b"BZh"):
        compression = "bz2"
    elif head.startswith(b"\xfd7zXZ\x00"):
        compression = "xz"
    else:
        compression = ""
    unreadable: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)
    if compression == "xz":
        import lzma

        unreadable += (lzma.LZMAError,)
    try:
        with open(path, "rb") as raw, _decompressor(raw, compression) as source:
            first = source.read(_BLOCK)
    except unreadable:
        return None
    if len(first) == _BLOCK and first.count(0) == _BLOCK:
        return compression  # the end-of-archive marker: an archive without members
    try:
        tarfile.TarInfo.frombuf(first, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return compression


def _move_into(staging: Path, target: Path) -> None:
    for entry in sorted(os.listdir(staging)):
        destination = target / entry
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif os.path.lexists(destination):
            destination.unlink()
        os.replace(staging / entry, destination)
