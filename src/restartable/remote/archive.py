"""Directory archives: gzipped tarballs written while hashed, extracted safely.

Extraction trusts nothing in the archive. Every member is checked before a
single byte is written, and the whole archive is refused if any member:

* has an absolute name, a drive, or a ``..`` component;
* lies below a member that is a symbolic link (writing through a link is
  how a link that looks harmless redirects later members);
* is a symbolic link whose target is absolute or leaves the target
  directory, or a hard link to anything but an earlier regular file;
* is a device file, a FIFO or any other special file;
* is larger than the limit, or makes the total larger than the limit or
  than the free space of the target filesystem.

Members are then extracted into a fresh staging directory inside the target
with :mod:`tarfile`'s ``data`` filter as a second line of defence, and moved
into place only when all of them are out.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import shutil
import stat
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointUnsafeArchiveError

# Fast: a checkpoint is written far more often than it is read, and most of
# its bytes (float arrays) barely compress anyway.
COMPRESS_LEVEL = 1


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


def _check_source(root: Path) -> int:
    """Refuse what could not be restored safely; return the bytes of regular files."""
    total = 0
    for current, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(current) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                relative = posixpath.normpath(posixpath.join(path.parent.relative_to(root).as_posix(), target))
                if posixpath.isabs(target) or relative == ".." or relative.startswith("../"):
                    raise CheckpointUnsafeArchiveError(
                        f"cannot save {root}: the symbolic link {path} points outside the directory ({target}); "
                        "it could not be restored safely",
                        member=str(path.relative_to(root)),
                    )
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
            elif not stat.S_ISDIR(info.st_mode):
                raise CheckpointUnsafeArchiveError(
                    f"cannot save {root}: {path} is not a regular file, directory or link",
                    member=str(path.relative_to(root)),
                )
    return total


def write_archive(source: Path, destination: Path, hasher: Any) -> tuple[int, int]:
    """Write ``source`` (a directory) as a gzipped tarball to ``destination``.

    The checksum is computed while the archive is written. Returns the
    archive's size and the total size of the regular files in it.
    """
    source = Path(source)
    unpacked = _check_source(source)
    with open(destination, "wb") as raw:
        counted = _HashingWriter(raw, hasher)
        # mtime=0: the same directory gives the same archive bytes.
        with gzip.GzipFile(fileobj=counted, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz:  # type: ignore[arg-type]
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for current, dirs, files in os.walk(source):
                    dirs.sort()
                    base = Path(current)
                    for name in dirs + sorted(files):
                        path = base / name
                        tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
        raw.flush()
        os.fsync(raw.fileno())
    return counted.size, unpacked


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


def check_members(
    members: list[tarfile.TarInfo],
    target: Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> None:
    """Refuse the archive if any member is unsafe (see the module docstring)."""
    free = shutil.disk_usage(target).free
    limit_total = free if max_total_bytes is None else min(free, max_total_bytes)
    links: set[str] = set()
    regular: set[str] = set()
    total = 0

    def refuse(member: tarfile.TarInfo, why: str) -> None:
        raise CheckpointUnsafeArchiveError(
            f"refusing to extract the archive into {target}: member {member.name!r} {why}; nothing was extracted",
            member=member.name,
        )

    for member in members:
        name = _normalized(member.name)
        if name is None:
            refuse(member, "has an absolute path or a '..' component")
        assert name is not None
        ancestors = name.split("/")[:-1]
        for depth in range(1, len(ancestors) + 1):
            if "/".join(ancestors[:depth]) in links:
                refuse(member, "lies below a symbolic link of the archive")
        if member.issym():
            target_name = member.linkname
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target_name))
            if not target_name or posixpath.isabs(target_name) or joined == ".." or joined.startswith("../"):
                refuse(member, f"is a symbolic link to {target_name!r}, outside the target")
            links.add(name)
        elif member.islnk():
            linked = _normalized(member.linkname)
            if linked is None or linked not in regular:
                refuse(member, f"is a hard link to {member.linkname!r}, not to an earlier file of the archive")
        elif member.isreg():
            if max_member_bytes is not None and member.size > max_member_bytes:
                refuse(member, f"is {member.size} bytes, over the limit of {max_member_bytes}")
            total += member.size
            if total > limit_total:
                why = "free space of the target filesystem" if limit_total == free else "limit"
                refuse(member, f"brings the archive to {total} bytes, over the {why} ({limit_total} bytes)")
            regular.add(name)
            links.discard(name)
        elif member.isdir():
            links.discard(name)
        else:
            refuse(member, "is a device file, FIFO or other special file")


def extract_archive(
    archive: Path,
    target: Path,
    *,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
    on_member: Callable[[tarfile.TarInfo], None] | None = None,
) -> None:
    """Extract a gzipped tarball into ``target`` after checking every member.

    Raises :class:`CheckpointUnsafeArchiveError` before anything is written
    when a member is unsafe. ``target`` is created if needed; its existing
    entries with the same names as members are replaced.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            check_members(members, target, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)
            staging = target / f".extract-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                for member in members:
                    if hasattr(tarfile, "data_filter"):
                        tar.extract(member, staging, filter="data")
                    else:  # pragma: no cover - Python without extraction filters; members were checked above
                        tar.extract(member, staging)
                    if on_member is not None:
                        on_member(member)
                _move_into(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise CheckpointUnsafeArchiveError(
                f"refusing to extract the archive into {target}: {exc}", member=getattr(exc, "tarinfo", None) and exc.tarinfo.name
            ) from exc
        raise


def _move_into(staging: Path, target: Path) -> None:
    for entry in sorted(os.listdir(staging)):
        destination = target / entry
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif os.path.lexists(destination):
            destination.unlink()
        os.replace(staging / entry, destination)
