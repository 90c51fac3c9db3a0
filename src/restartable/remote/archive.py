"""Directory archives: gzipped tarballs written while hashed, extracted safely.

Extraction trusts nothing in the archive. Every member is checked, and the
whole archive is refused if any member:

* has an absolute name, a drive, or a ``..`` component;
* lies below a member that is a symbolic link (writing through a link is
  how a link that looks harmless redirects later members);
* is a symbolic link whose target is absolute or leaves the target
  directory, or a hard link to anything but an earlier regular file;
* is a device file, a FIFO or any other special file;
* is larger than the limit, or makes the total larger than the limit or
  than the free space of the target filesystem.

Members are extracted, each right after its check, into a fresh staging
directory inside the target, with :mod:`tarfile`'s ``data`` filter as a
second line of defence, and moved into place only when all of them passed:
a refused archive leaves the target as it was and writes nothing outside it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointUnsafeArchiveError

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


def _check_source(root: Path) -> int:
    """Refuse what could not be restored safely; return the bytes of regular files."""
    total = 0
    for current, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(current) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                member = path.relative_to(root).as_posix()
                problem = link_target_problem(member, target)
                real_root = os.path.realpath(root)
                resolved = os.path.realpath(path)
                if problem is None and resolved != real_root and not resolved.startswith(real_root + os.sep):
                    problem = f"resolves to {resolved}, outside the directory"
                if problem is not None:
                    raise CheckpointUnsafeArchiveError(
                        f"cannot save {root}: the symbolic link {member} {problem}; it could not be restored safely",
                        member=member,
                    )
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
            elif not stat.S_ISDIR(info.st_mode):
                raise CheckpointUnsafeArchiveError(
                    f"cannot save {root}: {path} is not a regular file, directory or link",
                    member=str(path.relative_to(root)),
                )
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


class MemberChecker:
    """Checks members one by one, in archive order (see the module docstring)."""

    def __init__(
        self, target: Path, *, max_member_bytes: int | None = None, max_total_bytes: int | None = None
    ) -> None:
        self.target = Path(target)
        self.free = shutil.disk_usage(self.target).free
        self.limit_total = self.free if max_total_bytes is None else min(self.free, max_total_bytes)
        self.max_member_bytes = max_member_bytes
        self.links: set[str] = set()
        self.regular: set[str] = set()
        self.directories: set[str] = set()  # every directory a member created or lies in
        self.total = 0

    def _refuse(self, member: tarfile.TarInfo, why: str) -> None:
        raise CheckpointUnsafeArchiveError(
            f"refusing to extract the archive into {self.target}: member {member.name!r} {why}; nothing was extracted",
            member=member.name,
        )

    def check(self, member: tarfile.TarInfo) -> None:
        name = _normalized(member.name)
        if name is None:
            self._refuse(member, "has an absolute path or a '..' component")
        assert name is not None
        parts = name.split("/")
        self.directories.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        ancestors = name.split("/")[:-1]
        for depth in range(1, len(ancestors) + 1):
            if "/".join(ancestors[:depth]) in self.links:
                self._refuse(member, "lies below a symbolic link of the archive")
        if name in self.links:
            self._refuse(member, "replaces a symbolic link of the archive (it would be written through it)")
        if member.issym():
            problem = link_target_problem(name, member.linkname)
            if problem is not None:
                self._refuse(member, problem)
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
            steps = resolved.split("/")
            for depth in range(1, len(steps) + 1):
                if "/".join(steps[:depth]) in self.links:
                    self._refuse(
                        member, f"is a symbolic link to {member.linkname!r}, through another link of the archive"
                    )
            if name in self.directories:
                self._refuse(member, "turns a directory of the archive into a symbolic link")
            self.links.add(name)
            self.regular.discard(name)
        elif member.islnk():
            linked = _normalized(member.linkname)
            if linked is None or linked not in self.regular:
                self._refuse(member, f"is a hard link to {member.linkname!r}, not to an earlier file of the archive")
        elif member.isreg():
            if self.max_member_bytes is not None and member.size > self.max_member_bytes:
                self._refuse(member, f"is {member.size} bytes, over the limit of {self.max_member_bytes}")
            self.total += member.size
            if self.total > self.limit_total:
                why = "free space of the target filesystem" if self.limit_total == self.free else "limit"
                self._refuse(
                    member, f"brings the archive to {self.total} bytes, over the {why} ({self.limit_total} bytes)"
                )
            self.regular.add(name)
        elif member.isdir():
            self.directories.add(name)
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


def extract_archive(
    archive: Path | BinaryIO,
    target: Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
    on_member: Callable[[tarfile.TarInfo], None] | None = None,
    compression: str = "gz",
) -> None:
    """Extract a tarball (a path, or a readable stream) into ``target``, checking every member.

    ``compression`` is ``"gz"`` (what restartable writes), ``"bz2"``,
    ``"xz"`` or ``""`` for an uncompressed tar (what other writers may
    leave; see :func:`tar_compression`).

    Raises :class:`CheckpointUnsafeArchiveError` when a member is unsafe;
    the target is then untouched, as it is when reading the stream fails
    (a stream that verifies its bytes may raise at its very end, which is
    why nothing is moved into place before the archive has been read to its
    end). ``target`` is created if needed; its existing entries with the
    same names as members are replaced.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    checker = MemberChecker(target, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)
    staging = target / f".extract-{uuid.uuid4().hex}"
    try:
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(open(archive, "rb")) if isinstance(archive, (str, os.PathLike)) else archive
            gz = stack.enter_context(_decompressor(raw, compression))
            # One pass: each member is checked, then extracted into the
            # staging directory; nothing reaches the target until every
            # member passed. Mode "r:" reads forward only, so a stream works.
            tar = stack.enter_context(tarfile.open(fileobj=gz, mode="r:", copybufsize=1 << 20))  # type: ignore[call-overload]
            staging.mkdir()
            for member in tar:
                checker.check(member)
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, staging, filter="data")
                else:  # pragma: no cover - Python without extraction filters; the member was checked above
                    tar.extract(member, staging)
                if on_member is not None:
                    on_member(member)
            while gz.read(1 << 20):
                pass  # to the end of the stream: trailing bytes are verified too
        _move_into(staging, target)
    except tarfile.FilterError as exc:
        raise CheckpointUnsafeArchiveError(
            f"refusing to extract the archive into {target}: {exc}", member=exc.tarinfo.name
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

    A file is a tarball when :func:`tarfile.is_tarfile` says so (the test
    flyte's ``Checkpoint.load`` applies to the object it downloads); the
    compression is read from its magic bytes.
    """
    try:
        if not tarfile.is_tarfile(path):
            return None
    except (OSError, EOFError, tarfile.TarError, ValueError):
        return None
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return ""


def _move_into(staging: Path, target: Path) -> None:
    for entry in sorted(os.listdir(staging)):
        destination = target / entry
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif os.path.lexists(destination):
            destination.unlink()
        os.replace(staging / entry, destination)
