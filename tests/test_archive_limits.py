"""Archives that cost far more than their size: refused within fixed limits, before the cost is paid.

Each hostile archive here is real bytes in ``tmp_path`` or a stream made as
it is read, never a mock: a pax header or a GNU long name that claims
gigabytes, gigabytes of gzipped zeros after the end of the tar, a member
40,000 directories deep, 100,000 empty members, chains of extended
headers, floods of pax records. Each must be refused with
:class:`CheckpointUnsafeArchiveError` naming the rule, leave the target as
it was, and stay cheap. Cheap is measured without clocks: the bytes read
from the source (through a counting stream) or the peak of Python's
allocations (``tracemalloc``), each against a bound set by the limit that
refuses the archive, far below what reading the whole archive would cost.

Gigabytes are made from a gzip member of 16 MiB of zeros (16 KB
compressed), repeated: a valid gzip stream of many members.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import tarfile
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from restartable import CheckpointUnsafeArchiveError
from restartable.remote import RemoteCheckpoint
from restartable.remote.archive import (
    MAX_DEPTH,
    MAX_EXTENDED_HEADER_BYTES,
    MAX_EXTENDED_HEADERS,
    MAX_HEADER_BYTES,
    MAX_MEMBERS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_PAX_BYTES,
    MAX_PAX_DIGITS,
    MAX_PAX_RECORDS,
    MAX_TRAILER_BYTES,
    check_members,
    extract_archive,
    write_archive,
)
from restartable.store.manifest import dump_manifest, load_manifest
from restartable.store.objects import STREAM_BYTES
from support import tree_snapshot

BLOCK = tarfile.BLOCKSIZE
ZEROS_PER_MEMBER = 16 << 20
# What a source may be read beyond the bytes a rule lets through: the
# read-ahead of the gzip reader (and of a buffered file), never more.
READ_AHEAD = 256 << 10

# --------------------------------------------------------------------------- helpers


class CountingReader(io.RawIOBase):
    """A read-only stream over ``chunks`` (made lazily), counting the bytes handed out."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        size = min(len(buffer), len(self._current))
        buffer[:size] = self._current[:size]
        self._current = self._current[size:]
        self.count += size
        return size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(64 << 10):
            yield chunk


def _counting(path: Path) -> CountingReader:
    return CountingReader(_file_chunks(path))


@functools.cache
def _gzipped_zeros() -> bytes:
    """One gzip member: 16 MiB of zeros in about 16 KB."""
    return gzip.compress(bytes(ZEROS_PER_MEMBER), compresslevel=9, mtime=0)


def _zeros(size: int) -> bytes:
    """``size`` bytes of zeros (a multiple of 16 MiB), gzipped as a sequence of members."""
    assert size % ZEROS_PER_MEMBER == 0
    return _gzipped_zeros() * (size // ZEROS_PER_MEMBER)


def _header(name: str, kind: bytes, size: int = 0, **fields: Any) -> bytes:
    """One 512-byte header block, as a writer would make it (claiming ``size`` bytes of data)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    gnu = kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_SPARSE)
    return info.tobuf(tarfile.GNU_FORMAT if gnu else tarfile.USTAR_FORMAT)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _record(keyword: str, value: bytes) -> bytes:
    """One pax record, "<length> <keyword>=<value>\\n", its length counting itself."""
    body = b" " + keyword.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _pax(records: bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    """A pax header (extended or global) and its records."""
    return _header("././@PaxHeader", kind, len(records)) + _padded(records)


def _file(name: str, data: bytes = b"") -> bytes:
    return _header(name, tarfile.REGTYPE, len(data)) + _padded(data)


END = bytes(2 * BLOCK)


def _tarball(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A gzipped tarball written by tarfile itself (pax format)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry in members:
            info, data = entry if isinstance(entry, tuple) else (entry, b"")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    """A restore directory with something in it, which a refused archive must leave as it was."""
    target = tmp_path / "target"
    (target / "kept").mkdir(parents=True)
    (target / "kept" / "state.bin").write_bytes(b"the previous restore")
    before = tree_snapshot(target)
    yield target
    assert tree_snapshot(target) == before, "a refused archive changed the target"


def _refused(extract: Callable[[], object], *rule: str) -> CheckpointUnsafeArchiveError:
    """Run ``extract``, which must raise exactly CheckpointUnsafeArchiveError, naming ``rule``."""
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        extract()
    assert type(caught.value) is CheckpointUnsafeArchiveError
    message = str(caught.value)
    for words in rule:
        assert words in message, f"{words!r} not in {message!r}"
    return caught.value


def _refused_within(extract: Callable[[], object], *rule: str) -> tuple[CheckpointUnsafeArchiveError, int]:
    """:func:`_refused`, and the peak of the Python allocations made meanwhile."""
    tracemalloc.start()
    try:
        error = _refused(extract, *rule)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return error, peak


# --------------------------------------------------------------------------- the hostile archives of the issue


def test_pax_header_claiming_2_gib_is_refused_before_it_is_read(tmp_path: Path, target: Path) -> None:
    """A 2 MB archive: a pax header that claims 2 GiB, and 2 GiB of gzipped zeros to fill it."""
    archive = tmp_path / "pax-bomb.tar.gz"
    archive.write_bytes(gzip.compress(_header("././@PaxHeader", tarfile.XHDTYPE, 2 << 30), mtime=0) + _zeros(2 << 30))
    assert archive.stat().st_size < 3 << 20
    source = _counting(archive)
    _, peak = _refused_within(
        lambda: extract_archive(source, target, name=str(archive)),
        f"refusing to extract the archive {archive} into {target}: the headers of member #1",
        "pax extended header of 2,147,483,648 bytes",
        f"the limit is {MAX_EXTENDED_HEADER_BYTES:,}",
    )
    assert source.count <= READ_AHEAD, "the header's data was read"
    assert peak <= 2 * MAX_EXTENDED_HEADER_BYTES


def test_gnu_long_name_of_1_gib_is_refused_before_it_is_read(tmp_path: Path, target: Path) -> None:
    archive = tmp_path / "long-name.tar.gz"
    long_name = _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 1 << 30)
    archive.write_bytes(gzip.compress(long_name, mtime=0) + _zeros(1 << 30))
    source = _counting(archive)
    _, peak = _refused_within(
        lambda: extract_archive(source, target),
        "GNU long name of 1,073,741,824 bytes",
        f"the limit is {MAX_EXTENDED_HEADER_BYTES:,}",
    )
    assert source.count <= READ_AHEAD
    assert peak <= 2 * MAX_EXTENDED_HEADER_BYTES


def test_gigabytes_of_gzipped_zeros_after_the_end_are_not_unpacked(tmp_path: Path, target: Path) -> None:
    """A genuine archive, then 4 GiB of zeros: reading stops at the end of the tar and its padding."""
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (source_dir / "state.bin").write_bytes(os.urandom(3000))
    genuine = tmp_path / "genuine.tar.gz"
    write_archive(source_dir, genuine)
    archive = tmp_path / "trailing-zeros.tar.gz"
    archive.write_bytes(genuine.read_bytes() + _zeros(4 << 30))
    source = _counting(archive)

    _refused(
        lambda: extract_archive(source, target),
        f"goes on for more than {MAX_TRAILER_BYTES:,} bytes after its end-of-archive marker",
    )

    # 1 MiB of zeros is about 1 KB of gzip: little past the genuine archive was read.
    assert source.count <= genuine.stat().st_size + READ_AHEAD
    assert archive.stat().st_size > 3 << 20


def test_member_40000_directories_deep_is_refused_in_linear_memory(tmp_path: Path, target: Path) -> None:
    """The old check built every prefix of the path: quadratic, and then a RecursionError on extraction."""
    deep = "a/" * 40_000 + "f"
    archive = tmp_path / "deep.tar.gz"
    archive.write_bytes(_tarball([tarfile.TarInfo("first.txt"), tarfile.TarInfo(deep)]))

    error, peak = _refused_within(
        lambda: extract_archive(archive, target),
        "member #2 'a/a/a/",
        "is 40,000 directories deep",
        f"the limit is {MAX_DEPTH}",
    )
    assert error.member == deep
    # The path, its pax record and its components, a few times over; the
    # prefixes alone would take 40,000 * 40,000 bytes.
    assert peak <= 100 * len(deep)


def test_100000_empty_members_are_refused_at_the_member_limit(target: Path) -> None:
    """Each member costs a file; the archive is refused at the first member past the limit."""
    made = [0]

    def members() -> Iterator[bytes]:
        for index in range(100_000):
            made[0] += 1
            yield _header(f"empty-{index:06d}", tarfile.REGTYPE)
        yield END

    source = CountingReader(members())
    _refused(
        lambda: extract_archive(source, target, compression=""),
        f"member #{MAX_MEMBERS + 1:,} 'empty-{MAX_MEMBERS:06d}' is one member too many",
        f"the limit is {MAX_MEMBERS:,}",
    )
    assert source.count == (MAX_MEMBERS + 1) * BLOCK, "members past the limit were read"
    assert made[0] == MAX_MEMBERS + 1


# --------------------------------------------------------------------------- the other limits on headers


def test_chain_of_10000_pax_headers_is_refused_without_recursion(tmp_path: Path, target: Path) -> None:
    """tarfile recurses once per chained header: the chain is cut at MAX_EXTENDED_HEADERS."""
    header = _pax(_record("comment", b"chained"))
    archive = tmp_path / "chain.tar.gz"
    archive.write_bytes(gzip.compress(header * 10_000 + _file("f", b"x") + END, mtime=0))
    source = _counting(archive)
    _refused(
        lambda: extract_archive(source, target),
        f"chain more than {MAX_EXTENDED_HEADERS} extended headers",
    )
    assert source.count <= READ_AHEAD


def test_pax_records_past_the_limit_are_refused_before_tarfile_parses_them(tmp_path: Path, target: Path) -> None:
    """A 1 MiB header of 6-byte records: 170,000 records, parsed one by one in Python by tarfile."""
    records = _record("k", b"") * (MAX_EXTENDED_HEADER_BYTES // len(_record("k", b"")))
    assert records.count(b"\n") > MAX_PAX_RECORDS
    archive = tmp_path / "records.tar.gz"
    archive.write_bytes(gzip.compress(_pax(records) + _file("f") + END, mtime=0))
    # Parsed, the records would be a dict of 200,000 entries (tens of MB).
    _, peak = _refused_within(lambda: extract_archive(archive, target), f"past {MAX_PAX_RECORDS:,} pax records")
    assert peak <= 4 * MAX_EXTENDED_HEADER_BYTES


def test_global_pax_records_count_once_for_every_member(target: Path) -> None:
    """tarfile copies the global records into every later member: 1,000 of them, 200 members."""
    global_records = b"".join(_record(f"k{index:04d}", b"v") for index in range(1000))
    members = [_pax(global_records, tarfile.XGLTYPE)] + [_file(f"f{index:03d}") for index in range(200)] + [END]
    source = CountingReader(iter(members))
    _refused(
        lambda: extract_archive(source, target, compression=""),
        f"member #{MAX_PAX_RECORDS // 1000:,}",
        f"past {MAX_PAX_RECORDS:,} pax records",
    )


def _pax_comment() -> bytes:
    """A pax header of nearly MAX_EXTENDED_HEADER_BYTES: one comment record."""
    comment = _pax(_record("comment", b"c" * (MAX_EXTENDED_HEADER_BYTES - 20)))
    assert len(comment) <= MAX_EXTENDED_HEADER_BYTES + BLOCK
    return comment


def test_pax_headers_past_their_budget_are_refused(target: Path) -> None:
    """Members behind 1 MiB pax comments: each within the limits, together past MAX_PAX_BYTES."""
    comment = _pax_comment()

    def members() -> Iterator[bytes]:
        for index in range(1000):  # a GiB, were it read
            yield comment
            yield _file(f"f{index:03d}")
        yield END

    source = CountingReader(members())
    beyond = MAX_PAX_BYTES // (len(comment) - BLOCK) + 1
    _refused(
        lambda: extract_archive(source, target, compression=""),
        f"the headers of member #{beyond}",
        f"take the archive's pax headers past {MAX_PAX_BYTES:,} bytes",
    )
    assert source.count <= beyond * (len(comment) + BLOCK)


def test_headers_past_their_budget_are_refused(target: Path) -> None:
    """Members behind chains of 1 MiB GNU long link names: each within the limits, together past MAX_HEADER_BYTES."""
    long_link = (
        _header("././@LongLink", tarfile.GNUTYPE_LONGLINK, MAX_EXTENDED_HEADER_BYTES)
        + b"l" * (MAX_EXTENDED_HEADER_BYTES - 1)
        + b"\0"
    )

    def members() -> Iterator[bytes]:
        for index in range(1000):  # 4 GiB, were it read
            yield long_link * MAX_EXTENDED_HEADERS
            yield _file(f"f{index:03d}")
        yield END

    source = CountingReader(members())
    _refused(
        lambda: extract_archive(source, target, compression=""),
        f"past {MAX_HEADER_BYTES:,} bytes, the limit",
    )
    assert source.count <= MAX_HEADER_BYTES + len(long_link) * MAX_EXTENDED_HEADERS


def test_long_run_of_digits_is_refused_before_tarfile_parses_the_pax_header(tmp_path: Path, target: Path) -> None:
    """Before CVE-2024-6232 was fixed, tarfile took time quadratic in a run of digits: an hour for 1 MiB."""
    digits = _pax(_record("comment", b"7" * (MAX_EXTENDED_HEADER_BYTES - 20)))
    archive = tmp_path / "digits.tar.gz"
    archive.write_bytes(gzip.compress(digits + _file("f") + END, mtime=0))
    _refused(
        lambda: extract_archive(archive, target),
        f"include a pax header with a run of more than {MAX_PAX_DIGITS} digits",
    )

    # A SHA-256 in hex may be all digits: accepted.
    accepted = tarfile.TarInfo("sha256-named")
    accepted.pax_headers = {"comment": "7" * MAX_PAX_DIGITS}
    archive.write_bytes(_tarball([accepted]))
    extract_archive(archive, tmp_path / "restored")
    assert (tmp_path / "restored" / "sha256-named").read_bytes() == b""


@pytest.mark.parametrize(
    "members",
    [
        [_header("holes", tarfile.GNUTYPE_SPARSE, 0)],
        [_pax(_record("GNU.sparse.major", b"1") + _record("GNU.sparse.minor", b"0")), _file("holes", b"1\n")],
    ],
    ids=["old-gnu", "pax-1.0"],
)
def test_gnu_sparse_members_are_refused_before_their_map_is_read(target: Path, members: list[bytes]) -> None:
    """tarfile reads a sparse file's map, of any length, before the member can be checked."""
    source = CountingReader(iter([*members, END]))
    _refused(lambda: extract_archive(source, target, compression=""), "GNU sparse file")


# --------------------------------------------------------------------------- the limits on paths


@pytest.mark.parametrize(
    ("member", "rule"),
    [
        (tarfile.TarInfo("/".join(["d" * 200] * 25)), f"has a path of 5,024 bytes, the limit is {MAX_PATH_BYTES:,}"),
        (tarfile.TarInfo("d/" + "n" * 300), f"with a name of 300 bytes, the limit is {MAX_NAME_BYTES}"),
        (tarfile.TarInfo("d/" + "é" * 128), f"with a name of 256 bytes, the limit is {MAX_NAME_BYTES}"),
    ],
    ids=["path", "name", "name-in-utf8-bytes"],
)
def test_paths_past_the_length_limits_are_refused(
    tmp_path: Path, target: Path, member: tarfile.TarInfo, rule: str
) -> None:
    archive = tmp_path / "long.tar.gz"
    archive.write_bytes(_tarball([member]))
    _refused(lambda: extract_archive(archive, target), rule)


def test_link_target_past_the_length_limit_is_refused(tmp_path: Path, target: Path) -> None:
    link = tarfile.TarInfo("link")
    link.type = tarfile.SYMTYPE
    link.linkname = "x/" * 2100
    archive = tmp_path / "link.tar.gz"
    archive.write_bytes(_tarball([link]))
    _refused(lambda: extract_archive(archive, target), "has a link target of 4,200 bytes")


def test_directories_that_paths_imply_count_as_members(target: Path) -> None:
    """Few members, each implying MAX_DEPTH directories: the tree they make, not their number, is what costs.

    Checked by the member check alone (extract_archive runs the same check
    before extracting each member): ten thousand directories made and
    removed would only slow the test down.
    """
    paths = [f"{top}/" + "d/" * (MAX_DEPTH - 1) + "f" for top in range(MAX_MEMBERS // MAX_DEPTH + 1)]
    first_over = MAX_MEMBERS // (MAX_DEPTH + 1) + 1  # each member adds its top, MAX_DEPTH - 1 levels and itself
    error = _refused(
        lambda: check_members([tarfile.TarInfo(path) for path in paths], target),
        f"member #{first_over} '{first_over - 1}/d/d/",
        f"takes the archive past {MAX_MEMBERS:,} files, directories and links",
    )
    assert error.member == paths[first_over - 1]


def test_members_at_every_path_limit_are_extracted(tmp_path: Path) -> None:
    """The limits are inclusive: a path MAX_DEPTH deep, and a name of MAX_NAME_BYTES."""
    deep = "d/" * MAX_DEPTH + "f"
    wide = "n" * MAX_NAME_BYTES
    archive = tmp_path / "edge.tar.gz"
    archive.write_bytes(_tarball([(tarfile.TarInfo(deep), b"deep"), (tarfile.TarInfo(wide), b"wide")]))
    extract_archive(archive, tmp_path / "restored")
    assert (tmp_path / "restored" / deep).read_bytes() == b"deep"
    assert (tmp_path / "restored" / wide).read_bytes() == b"wide"


# --------------------------------------------------------------------------- the end of the archive


def test_data_after_the_end_marker_is_refused(tmp_path: Path, target: Path) -> None:
    """tarfile stops at the first zero block: a member hidden behind it would be dropped silently."""
    archive = tmp_path / "hidden.tar.gz"
    archive.write_bytes(gzip.compress(_file("shown", b"a") + END + _file("hidden", b"b") + END, mtime=0))
    _refused(
        lambda: extract_archive(archive, target),
        f"has data at byte {2 * BLOCK + len(END):,}, after its end-of-archive marker",
    )


def test_zero_padding_up_to_the_limit_is_accepted(tmp_path: Path, target: Path) -> None:
    """Writers pad to a whole record: up to a blocking factor of 2048 blocks (1 MiB) is accepted."""
    archive = tmp_path / "padded.tar"
    # The end-of-archive marker's first block, then MAX_TRAILER_BYTES of padding.
    archive.write_bytes(_file("f", b"data") + bytes(BLOCK + MAX_TRAILER_BYTES))
    extract_archive(archive, tmp_path / "restored", compression="")
    assert (tmp_path / "restored" / "f").read_bytes() == b"data"

    archive.write_bytes(_file("f", b"data") + bytes(BLOCK + MAX_TRAILER_BYTES + BLOCK))
    _refused(lambda: extract_archive(archive, target, compression=""), "after its end-of-archive marker")


def test_archive_cut_at_a_member_boundary_is_unreadable(tmp_path: Path, target: Path) -> None:
    """Without its end-of-archive marker, an archive cut short would be extracted as if whole."""
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(gzip.compress(_file("a", b"first") + _file("b", b"second"), mtime=0))
    with pytest.raises(tarfile.ReadError, match="no end-of-archive marker"):
        extract_archive(archive, target)
    assert not [name for name in os.listdir(target) if name.startswith(".extract-")]


# --------------------------------------------------------------------------- archives that restartable writes


def _checkpoint_directory(root: Path) -> Path:
    source = root / "source"
    (source / "model" / "layers").mkdir(parents=True)
    (source / "model" / "layers" / "weights.npy").write_bytes(os.urandom(70_000))
    (source / "model" / "config.json").write_text('{"depth": 3}')
    (source / "empty").mkdir()
    (source / ("long-name-" + "n" * 150 + ".bin")).write_bytes(b"past the 100-character ustar name field")
    (source / "latest").symlink_to("model/config.json")
    os.link(source / "model" / "config.json", source / "config-link.json")
    return source


def test_archive_written_by_write_archive_round_trips(tmp_path: Path) -> None:
    source = _checkpoint_directory(tmp_path)
    archive = tmp_path / "out.tar.gz"
    size, unpacked = write_archive(source, archive)
    assert size == archive.stat().st_size
    restored = tmp_path / "restored"
    extract_archive(archive, restored, max_total_bytes=unpacked)
    assert tree_snapshot(restored) == tree_snapshot(source)
    assert os.path.samefile(restored / "config-link.json", restored / "model" / "config.json")


def _state_directory(root: Path) -> Path:
    """Files whose sizes add up to the unpacked size exactly (no hard link is counted twice)."""
    source = root / "state"
    (source / "optimizer").mkdir(parents=True)
    (source / "model.npy").write_bytes(os.urandom(50_000))
    (source / "optimizer" / "moments.npy").write_bytes(os.urandom(20_000))
    return source


def test_the_recorded_unpacked_size_bounds_extraction(tmp_path: Path, target: Path) -> None:
    archive = tmp_path / "out.tar.gz"
    _, unpacked = write_archive(_state_directory(tmp_path), archive)
    assert unpacked == 70_000
    extract_archive(archive, tmp_path / "restored", max_total_bytes=unpacked)
    _refused(
        lambda: extract_archive(archive, target, max_total_bytes=unpacked - 1),
        "member #3 'optimizer/moments.npy' brings the archive to 70000 bytes, over the limit (69999 bytes)",
    )


def test_remote_load_refuses_a_save_whose_record_was_lowered(tmp_path: Path) -> None:
    """The unpacked size in the save record, measured at save, bounds the restore (tampered lower here)."""
    RemoteCheckpoint(f"file://{tmp_path}/attempt-0", path=tmp_path / "work").save_sync(_state_directory(tmp_path))
    (record_path,) = (tmp_path / "attempt-0" / "saves").glob("*.json")
    record = load_manifest(record_path.read_bytes(), "restartable-remote-save")
    assert record["unpacked_size"] == 70_000
    record["unpacked_size"] = 69_999
    record_path.write_bytes(dump_manifest(record))

    restore = RemoteCheckpoint(
        f"file://{tmp_path}/attempt-1", checkpoint_src=f"file://{tmp_path}/attempt-0", path=tmp_path / "restore" / "cp"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not skipped as damaged
        _refused(
            restore.load_sync,
            f"refusing to extract the archive file://{tmp_path}/attempt-0/{record['payload']} into",
            "over the limit (69999 bytes)",
        )
    assert os.listdir(tmp_path / "restore") == ["cp"]
    assert os.listdir(tmp_path / "restore" / "cp") == []


def _too_deep(source: Path) -> str:
    (source / Path(*["d"] * (MAX_DEPTH + 2))).mkdir(parents=True)
    return f"is {MAX_DEPTH + 1} directories deep, the limit is {MAX_DEPTH}"


def _too_many(source: Path) -> str:
    # Hard links: the cheapest entries to make.
    (source / "f").touch()
    for index in range(MAX_MEMBERS):
        os.link(source / "f", source / f"{index:05d}")
    return f"it holds more than {MAX_MEMBERS:,} files, directories and links"


def _digits(source: Path) -> str:
    (source / ("9" * (MAX_PAX_DIGITS + 1))).touch()
    return f"has a run of more than {MAX_PAX_DIGITS} digits"


@pytest.mark.parametrize("make", [_too_deep, _too_many, _digits], ids=lambda make: make.__name__.strip("_"))
def test_write_archive_refuses_what_extraction_would_refuse(tmp_path: Path, make: Callable[[Path], str]) -> None:
    """A save that was written can be restored: the limits that depend on the directory apply at save too."""
    source = tmp_path / "source"
    source.mkdir()
    rule = make(source)
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        write_archive(source, tmp_path / "out.tar.gz")
    assert rule in str(caught.value)
    assert not (tmp_path / "out.tar.gz").exists()


def test_flyte_tarball_with_a_2_gib_pax_header_is_refused_without_unpacking_it(tmp_path: Path) -> None:
    """An object flyte would have saved: telling whether it is a tarball must not read the header either."""
    saved = tmp_path / "flyte-saved"
    saved.write_bytes(gzip.compress(_header("././@PaxHeader", tarfile.XHDTYPE, 2 << 30), mtime=0) + _zeros(2 << 30))
    restore = RemoteCheckpoint(tmp_path / "attempt-1", checkpoint_src=saved, path=tmp_path / "restore" / "cp")
    assert restore.has_loadable_save()  # the modules of the store are imported before the measure
    _, peak = _refused_within(
        restore.load_sync, f"{saved} into", "pax extended header of 2,147,483,648 bytes, the limit is"
    )
    # The download, copied in pieces of STREAM_BYTES, and a header: not the 2 GiB it claims.
    assert peak <= STREAM_BYTES + saved.stat().st_size + 2 * MAX_EXTENDED_HEADER_BYTES
    assert os.listdir(tmp_path / "restore" / "cp") == []
