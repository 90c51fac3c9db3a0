"""Safe extraction of directory checkpoints against hand-crafted malicious tarballs.

Every malicious archive here is built member by member from ``TarInfo``
objects, so that it holds exactly what an attacker (or a damaged writer)
would put there: absolute names, ``..`` components, links out of the
target, members written through links, devices, FIFOs, oversized members,
drive names and NUL bytes. Each one must be refused with
:class:`CheckpointUnsafeArchiveError` naming the member, and nothing may be
written: not in the target (left empty, or exactly as it was), not beside
it (the would-be escape locations are siblings inside ``tmp_path``), and no
``.extract-*`` staging directory may be left behind.

The same archives are then pushed through a real store (``file://`` and the
moto S3 server) as a tampered directory save whose record matches the
payload's size and checksum, so that only the archive check stands between
the payload and the restore directory.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from restartable import CheckpointError, CheckpointUnsafeArchiveError
from restartable.remote import RemoteCheckpoint
from restartable.remote.archive import check_members, extract_archive, write_archive
from restartable.store.files import checksum_bytes, new_hasher
from restartable.store.manifest import dump_manifest, load_manifest
from support import tree_snapshot

# --------------------------------------------------------------------------- helpers

Member = tuple[tarfile.TarInfo, "bytes | None"]


def _member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    linkname: str = "",
    size: int | None = None,
    pax: dict[str, str] | None = None,
    dev: tuple[int, int] = (0, 0),
) -> Member:
    """One hand-made member: a TarInfo and the bytes that follow it (regular files only)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mtime = 1_700_000_000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.devmajor, info.devminor = dev
    if pax is not None:
        info.pax_headers = dict(pax)
    if kind == tarfile.REGTYPE:
        info.size = len(data) if size is None else size
        return info, data
    info.size = 0
    return info, None


def _reg(name: str, data: bytes = b"", **kw: Any) -> Member:
    return _member(name, tarfile.REGTYPE, data, **kw)


def _dir(name: str) -> Member:
    return _member(name, tarfile.DIRTYPE)


def _sym(name: str, target: str) -> Member:
    return _member(name, tarfile.SYMTYPE, linkname=target)


def _hard(name: str, target: str) -> Member:
    return _member(name, tarfile.LNKTYPE, linkname=target)


def _tarball_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _write_tarball(path: Path, members: list[Member]) -> Path:
    path.write_bytes(_tarball_bytes(members))
    return path


# A benign prefix put in front of every malicious archive: if extraction
# started before the bad member was noticed, these would show up.
BENIGN_PREFIX = [_reg("first.txt", b"benign"), _dir("firstdir"), _reg("firstdir/inner.txt", b"inner")]
BENIGN_PREFIX_BYTES = 6 + 5


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], tuple[list[Member], str]]
    """Given tmp_path: the members after the benign prefix, and the name of the member to refuse."""
    limits: dict[str, int] = field(default_factory=dict)
    first_line: bool = True
    """Whether check_members itself must refuse it (False: only tarfile's data filter catches it)."""


def _case(id: str, members: list[Member], bad: str, **kw: Any) -> Case:
    return Case(id, lambda _root: (members, bad), **kw)


CASES = [
    # ---- absolute names
    _case("abs-tmp-evil", [_reg("/tmp/evil", b"pwned")], "/tmp/evil"),
    Case("abs-into-tmp_path", lambda root: ([_reg(f"{root}/abs-evil", b"pwned")], f"{root}/abs-evil")),
    _case("abs-double-slash", [_reg("//x", b"pwned")], "//x"),
    _case("abs-directory", [_dir("/tmp/evil-dir")], "/tmp/evil-dir"),
    # ---- '..' escapes
    _case("dotdot-prefix", [_reg("../evil", b"pwned")], "../evil"),
    _case("dotdot-two-levels", [_reg("../../evil", b"pwned")], "../../evil"),
    _case("dotdot-inner", [_dir("a"), _reg("a/../../evil", b"pwned")], "a/../../evil"),
    _case("dotdot-plain-directory", [_dir("..")], ".."),
    _case("dotdot-plain-file", [_reg("..", b"pwned")], ".."),
    _case("dotdot-backslashes", [_reg("a\\..\\..\\evil", b"pwned")], "a\\..\\..\\evil"),
    # ---- symbolic links out of the target, then a member written through them
    _case("symlink-absolute-then-through", [_sym("link", "/etc"), _reg("link/evil", b"pwned")], "link"),
    _case("symlink-dotdot-then-through", [_sym("link", "../../x"), _reg("link/evil", b"pwned")], "link"),
    _case("symlink-nested-dotdot", [_dir("d"), _sym("d/link", "../../x"), _reg("d/link/evil", b"pwned")], "d/link"),
    _case("symlink-to-parent", [_sym("up", ".."), _reg("up/evil", b"pwned")], "up"),
    # ---- symbolic links inside the target, with a member below them
    _case("symlink-dot-then-dotdot-below", [_sym("d", "."), _reg("d/../../evil", b"pwned")], "d/../../evil"),
    _case("symlink-inside-then-file-below", [_dir("sub"), _sym("d", "sub"), _reg("d/x", b"through")], "d/x"),
    _case("symlink-inside-then-dotslash-below", [_dir("sub"), _sym("d", "sub"), _reg("./d/x", b"through")], "./d/x"),
    _case("symlink-inside-then-double-slash-below", [_dir("sub"), _sym("d", "sub"), _reg("d//x", b"through")], "d//x"),
    _case("symlink-inside-then-dir-below", [_dir("sub"), _sym("d", "sub"), _dir("d/inner")], "d/inner"),
    _case(
        "symlink-inside-then-hardlink-below",
        [_dir("sub"), _sym("d", "sub"), _hard("d/h", "first.txt")],
        "d/h",
    ),
    _case(
        "symlink-deep-then-below",
        [_dir("a"), _dir("a/b"), _sym("a/b/l", "."), _reg("a/b/l/x", b"through")],
        "a/b/l/x",
    ),
    # ---- hard links
    _case("hardlink-absolute", [_hard("h", "/etc/passwd")], "h"),
    _case("hardlink-dotdot", [_hard("h", "../x")], "h"),
    _case("hardlink-missing", [_hard("h", "nothing-here")], "h"),
    _case("hardlink-to-later-member", [_hard("h", "later"), _reg("later", b"data")], "h"),
    _case("hardlink-to-directory", [_dir("d"), _hard("h", "d")], "h"),
    _case("hardlink-to-symlink", [_reg("f", b"data"), _sym("s", "f"), _hard("h", "s")], "h"),
    # ---- special files
    _case("char-device", [_member("null", tarfile.CHRTYPE, dev=(1, 3))], "null"),
    _case("block-device", [_member("disk", tarfile.BLKTYPE, dev=(8, 0))], "disk"),
    _case("fifo", [_member("pipe", tarfile.FIFOTYPE)], "pipe"),
    # ---- sizes
    _case("member-over-limit", [_reg("big", b"x" * 100)], "big", limits={"max_member_bytes": 99}),
    _case(
        "total-over-limit",
        [_reg("a", b"x" * 60), _reg("b", b"y" * 60)],
        "b",
        limits={"max_total_bytes": BENIGN_PREFIX_BYTES + 119},
    ),
    # ---- Windows drives and NUL bytes
    _case("drive-relative", [_reg("C:evil", b"pwned")], "C:evil"),
    _case("drive-backslash", [_reg("C:\\evil", b"pwned")], "C:\\evil"),
    _case("drive-slash", [_reg("C:/evil", b"pwned")], "C:/evil"),
    _case("backslash-root", [_reg("\\evil", b"pwned")], "\\evil"),
    # tarfile stores a short name in the ustar field, which is NUL-terminated
    # on reading; a pax "path" record carries the NUL through.
    _case("nul-in-name", [_reg("placeholder", b"pwned", pax={"path": "a\x00b"})], "a\x00b"),
    # ---- links that leave the target only through an earlier link: the lexical
    # check of check_members misses them, tarfile's data filter catches them.
    _case("symlink-chain-parent", [_sym("a", "."), _sym("b", "a/..")], "b", first_line=False),
    _case(
        "symlink-chain-write-through",
        [
            _dir("d1"),
            _dir("d1/d2"),
            _sym("d1/d2/r", "../.."),
            _sym("d1/d2/l", "r/../../evil"),
            _reg("d1/d2/l", b"pwned"),
        ],
        "d1/d2/l",
        first_line=False,
    ),
]
CASE_IDS = [case.id for case in CASES]


def _assert_names_member(exc: CheckpointUnsafeArchiveError, member: str) -> None:
    assert isinstance(exc, CheckpointError) and isinstance(exc, ValueError)
    assert exc.member == member, f"member attribute {exc.member!r}, expected {member!r}"
    assert repr(member) in str(exc), f"the message does not name {member!r}: {exc}"


# Absolute names used by the cases, outside tmp_path: they must not appear.
_OUTSIDE = ["/tmp/evil", "/tmp/evil-dir", "/x", "//x"]


# --------------------------------------------------------------------------- extract_archive


@pytest.mark.parametrize("prefilled", [False, True], ids=["empty-target", "prefilled-target"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_malicious_archive_is_refused_and_nothing_is_written(tmp_path: Path, case: Case, prefilled: bool) -> None:
    members, bad = case.build(tmp_path)
    archive = _write_tarball(tmp_path / "bad.tar.gz", BENIGN_PREFIX + members)
    with tarfile.open(archive) as tar:  # the archive really holds the crafted member
        assert bad in tar.getnames()
    box = tmp_path / "box"
    target = box / "target"
    target.mkdir(parents=True)
    if prefilled:
        (target / "keep.txt").write_bytes(b"kept")
        (target / "first.txt").write_bytes(b"old first")
        (target / "firstdir").mkdir()
        (target / "firstdir" / "old.txt").write_bytes(b"old")
        (target / "sub").mkdir()
    before = tree_snapshot(target)
    outside_before = {path: os.path.lexists(path) for path in _OUTSIDE}

    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        extract_archive(archive, target, **case.limits)

    _assert_names_member(caught.value, bad)
    assert tree_snapshot(target) == before, "the target was changed by a refused archive"
    assert sorted(os.listdir(box)) == ["target"], "something was written beside the target"
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.gz", "box"], "something escaped to tmp_path"
    assert {path: os.path.lexists(path) for path in _OUTSIDE} == outside_before


@pytest.mark.parametrize("case", [case for case in CASES if case.first_line], ids=[c.id for c in CASES if c.first_line])
def test_check_members_refuses_before_extraction(tmp_path: Path, case: Case) -> None:
    """The first line of defence (the member check) alone refuses each of these members."""
    members, bad = case.build(tmp_path)
    archive = _write_tarball(tmp_path / "bad.tar.gz", BENIGN_PREFIX + members)
    target = tmp_path / "target"
    target.mkdir()
    with tarfile.open(archive) as tar:
        read_back = tar.getmembers()
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        check_members(read_back, target, **case.limits)
    _assert_names_member(caught.value, bad)
    assert os.listdir(target) == []


def test_check_members_refuses_member_larger_than_free_space(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    small, _ = _reg("small.txt", b"ok")
    huge = tarfile.TarInfo("huge.bin")
    huge.size = 10**15
    assert huge.size > free
    # No explicit limit, and a limit far above the free space: both refused.
    for limits in ({}, {"max_total_bytes": 10**18, "max_member_bytes": 10**18}):
        with pytest.raises(CheckpointUnsafeArchiveError) as caught:
            check_members([small, huge], tmp_path, **limits)
        _assert_names_member(caught.value, "huge.bin")
        assert "free space" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_check_members_accepts_sizes_at_the_limits(tmp_path: Path) -> None:
    """The size limits are inclusive: the refusals above are not off by one."""
    a, _ = _reg("a", b"x" * 60)
    b, _ = _reg("b", b"y" * 40)
    check_members([a, b], tmp_path, max_member_bytes=60, max_total_bytes=100)
    with pytest.raises(CheckpointUnsafeArchiveError, match="'a'"):
        check_members([a, b], tmp_path, max_member_bytes=59)
    with pytest.raises(CheckpointUnsafeArchiveError, match="'b'"):
        check_members([a, b], tmp_path, max_total_bytes=99)


def test_extract_archive_refuses_archive_larger_than_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _write_tarball(tmp_path / "bad.tar.gz", [*BENIGN_PREFIX, _reg("big.bin", b"z" * 4096)])
    target = tmp_path / "box" / "target"
    target.mkdir(parents=True)
    real = shutil.disk_usage

    def little_space(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", little_space)
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        extract_archive(archive, target)
    _assert_names_member(caught.value, "big.bin")
    assert "free space" in str(caught.value)
    assert tree_snapshot(target) == {}
    assert sorted(os.listdir(tmp_path / "box")) == ["target"]


def _benign_members() -> list[Member]:
    return [
        _dir("a"),
        _dir("a/b"),
        _dir("a/b/c"),
        _reg("a/b/c/deep.txt", b"deep contents\n"),
        _reg("a/top.bin", bytes(range(256)) * 3),
        _reg("empty"),
        _reg("a/b/empty-too"),
        _dir("a/empty-dir"),
        _sym("a/link-to-deep", "b/c/deep.txt"),
        _sym("dirlink", "a/b"),
        _sym("a/b/c/up-to-top", "../../top.bin"),
        _hard("a/hard-to-deep", "a/b/c/deep.txt"),
        _reg("same.txt", b"new"),
    ]


def test_benign_archive_extracts_correctly(tmp_path: Path) -> None:
    archive = _write_tarball(tmp_path / "good.tar.gz", _benign_members())
    target = tmp_path / "box" / "target"
    extract_archive(archive, target)  # the target is created

    assert tree_snapshot(target) == {
        "a": ("dir",),
        "a/b": ("dir",),
        "a/b/c": ("dir",),
        "a/b/c/deep.txt": ("file", b"deep contents\n"),
        "a/b/c/up-to-top": ("link", "../../top.bin"),
        "a/top.bin": ("file", bytes(range(256)) * 3),
        "empty": ("file", b""),
        "a/b/empty-too": ("file", b""),
        "a/empty-dir": ("dir",),
        "a/link-to-deep": ("link", "b/c/deep.txt"),
        "dirlink": ("link", "a/b"),
        "a/hard-to-deep": ("file", b"deep contents\n"),
        "same.txt": ("file", b"new"),
    }
    assert os.path.samefile(target / "a/hard-to-deep", target / "a/b/c/deep.txt"), "the hard link was copied"
    assert (target / "a/link-to-deep").read_bytes() == b"deep contents\n"
    assert (target / "dirlink/c/deep.txt").read_bytes() == b"deep contents\n"
    assert (target / "a/b/c/up-to-top").read_bytes() == bytes(range(256)) * 3
    assert sorted(os.listdir(tmp_path / "box")) == ["target"]


def test_existing_entries_are_replaced_and_others_kept(tmp_path: Path) -> None:
    archive = _write_tarball(tmp_path / "good.tar.gz", _benign_members())
    target = tmp_path / "target"
    target.mkdir()
    (target / "same.txt").write_bytes(b"old contents, longer than the new ones")
    (target / "empty").mkdir()  # a directory where the archive has a file
    (target / "empty" / "inside.txt").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"precious")
    (target / "dirlink").symlink_to(outside)  # a link where the archive has another link
    (target / "keep.txt").write_bytes(b"keep me")
    (target / "keepdir").mkdir()
    (target / "keepdir" / "k.txt").write_bytes(b"k")

    extract_archive(archive, target)

    tree = tree_snapshot(target)
    assert tree["same.txt"] == ("file", b"new")
    assert tree["empty"] == ("file", b"")
    assert "empty/inside.txt" not in tree
    assert tree["dirlink"] == ("link", "a/b")
    assert tree["keep.txt"] == ("file", b"keep me")
    assert tree["keepdir/k.txt"] == ("file", b"k")
    assert tree["a/b/c/deep.txt"] == ("file", b"deep contents\n")
    assert tree_snapshot(outside) == {"precious.txt": ("file", b"precious")}, "replacing a link followed it"
    assert not [name for name in os.listdir(target) if name.startswith(".extract-")]


# --------------------------------------------------------------------------- write_archive


def _source_with_everything(root: Path) -> Path:
    source = root / "source"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "deep.txt").write_bytes(b"deep")
    (source / "empty").write_bytes(b"")
    (source / "a" / "empty-dir").mkdir()
    (source / "a" / "link").symlink_to("b/deep.txt")
    (source / "dirlink").symlink_to("a/b")
    os.link(source / "a" / "b" / "deep.txt", source / "hard.txt")
    return source


def test_write_archive_round_trips_a_safe_directory(tmp_path: Path) -> None:
    source = _source_with_everything(tmp_path)
    hasher = new_hasher()
    size, unpacked = write_archive(source, tmp_path / "out.tar.gz", hasher)
    data = (tmp_path / "out.tar.gz").read_bytes()
    assert size == len(data) and hasher.hexdigest() == checksum_bytes(data)
    assert unpacked == 2 * len(b"deep")
    target = tmp_path / "restored"
    extract_archive(tmp_path / "out.tar.gz", target, max_total_bytes=unpacked)
    assert tree_snapshot(target) == tree_snapshot(source)
    assert os.path.samefile(target / "hard.txt", target / "a" / "b" / "deep.txt")


def _link_absolute(source: Path) -> str:
    (source / "link").symlink_to("/etc")
    return "link"


def _link_dotdot(source: Path) -> str:
    (source / "link").symlink_to("../x")
    return "link"


def _link_nested_dotdot(source: Path) -> str:
    (source / "sub").mkdir()
    (source / "sub" / "link").symlink_to("../../x")
    return "sub/link"


def _fifo(source: Path) -> str:
    os.mkfifo(source / "pipe")
    return "pipe"


@pytest.mark.parametrize(
    "make", [_link_absolute, _link_dotdot, _link_nested_dotdot, _fifo], ids=lambda f: f.__name__.strip("_")
)
def test_write_archive_refuses_what_cannot_be_restored_safely(tmp_path: Path, make: Callable[[Path], str]) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "ok.txt").write_bytes(b"ok")
    bad = make(source)
    destination = tmp_path / "out.tar.gz"
    # Opening the FIFO would block forever (pytest's timeout would end it): it is refused unopened.
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        write_archive(source, destination, new_hasher())
    assert caught.value.member == bad
    assert bad in str(caught.value)
    assert not destination.exists()


def test_write_archive_refuses_symlink_escaping_through_another_link(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a").symlink_to(".")
    (source / "b").symlink_to("a/..")
    assert os.path.realpath(source / "b") == str(tmp_path.resolve())  # it does leave the directory
    with pytest.raises(CheckpointUnsafeArchiveError):
        write_archive(source, tmp_path / "out.tar.gz", new_hasher())


# --------------------------------------------------------------------------- links made to escape by other links


@pytest.mark.parametrize("case", [c for c in CASES if not c.first_line], ids=[c.id for c in CASES if not c.first_line])
def test_check_members_refuses_symlink_escaping_through_earlier_link(tmp_path: Path, case: Case) -> None:
    members, bad = case.build(tmp_path)
    with tarfile.open(_write_tarball(tmp_path / "bad.tar.gz", BENIGN_PREFIX + members)) as tar:
        read_back = tar.getmembers()
    with pytest.raises(CheckpointUnsafeArchiveError) as caught:
        check_members(read_back, tmp_path)
    assert caught.value.member == bad


# 'l -> x/../evil' is lexically inside ("evil") and, while 'x' does not
# exist yet, also really inside, so tarfile's data filter lets it through;
# the later 'x -> .' then makes 'l' resolve to <target>/../evil.
LATE_ESCAPE = [_sym("l", "x/../evil"), _sym("x", ".")]


def test_extract_archive_refuses_link_made_to_escape_by_a_later_link(tmp_path: Path) -> None:
    archive = _write_tarball(tmp_path / "bad.tar.gz", BENIGN_PREFIX + LATE_ESCAPE)
    box = tmp_path / "box"
    target = box / "target"
    target.mkdir(parents=True)
    try:
        extract_archive(archive, target)
    except CheckpointUnsafeArchiveError as exc:
        assert exc.member in ("l", "x")
    else:
        escaped = [
            str(path)
            for path in target.rglob("*")
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(target.resolve())
        ]
        pytest.fail(f"the archive was extracted and left links out of the target: {escaped}")
    assert tree_snapshot(target) == {}
    assert sorted(os.listdir(box)) == ["target"]


# --------------------------------------------------------------------------- end to end through a store


class _Prefix:
    """Raw access to one attempt prefix, bypassing restartable (an attacker's view)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("file://"):
            self.fs: Any = None
            self.root = url[len("file://") :]
        else:
            import s3fs

            self.fs = s3fs.S3FileSystem(skip_instance_cache=True)
            self.root = url[len("s3://") :]

    def records(self) -> list[str]:
        if self.fs is None:
            return sorted(p.relative_to(self.root).as_posix() for p in Path(self.root, "saves").glob("*.json"))
        return sorted(p[len(self.root) + 1 :] for p in self.fs.glob(f"{self.root}/saves/*.json"))

    def read(self, key: str) -> bytes:
        if self.fs is None:
            return Path(self.root, key).read_bytes()
        return self.fs.cat_file(f"{self.root}/{key}")

    def write(self, key: str, data: bytes) -> None:
        if self.fs is None:
            Path(self.root, key).write_bytes(data)
        else:
            self.fs.pipe_file(f"{self.root}/{key}", data)


@pytest.fixture(params=["file", "s3"])
def attempt_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The prefixes of a first attempt (which saves) and of the next one (which loads)."""
    if request.param == "file":
        return f"file://{tmp_path}/dest", f"file://{tmp_path}/dest2"
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/run/attempt-0", f"{bucket}/run/attempt-1"


def _save_then_tamper(tmp_path: Path, dest: str, payload: bytes, unpacked: int) -> None:
    """A genuine directory save, whose payload is then replaced and its record made to match."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "genuine.txt").write_bytes(b"genuine")
    RemoteCheckpoint(dest, path=tmp_path / "w0").save_sync(source)
    prefix = _Prefix(dest)
    (record_key,) = prefix.records()
    body = load_manifest(prefix.read(record_key), "restartable-remote-save")
    assert body["kind"] == "directory" and body["payload"].endswith(".tar.gz")
    prefix.write(body["payload"], payload)
    body.pop("parts", None)  # a small payload is one object
    body.update(size=len(payload), checksum=checksum_bytes(payload), unpacked_size=unpacked)
    prefix.write(record_key, dump_manifest(body))


def _load_refused(
    tmp_path: Path, urls: tuple[str, str], payload: bytes, unpacked: int = 10_000
) -> tuple[CheckpointUnsafeArchiveError, Path]:
    dest, dest2 = urls
    _save_then_tamper(tmp_path, dest, payload, unpacked)
    (tmp_path / "restore").mkdir()
    cp = RemoteCheckpoint(dest2, checkpoint_src=dest, path=tmp_path / "restore" / "cp")
    before = sorted(os.listdir(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped (mismatching) save would warn instead of refusing
        with pytest.raises(CheckpointUnsafeArchiveError) as caught:
            cp.load_sync()
    assert sorted(os.listdir(tmp_path)) == before, "something escaped to tmp_path"
    assert sorted(os.listdir(tmp_path / "restore")) == ["cp"], "something was written beside cp.path"
    assert cp.path == tmp_path / "restore" / "cp"
    assert tree_snapshot(cp.path) == {}, "cp.path holds extracted members or leftovers"
    assert cp.restored is None
    return caught.value, cp.path


E2E_CASES = [
    c
    for c in CASES
    if c.id
    in {
        "abs-into-tmp_path",
        "dotdot-inner",
        "dotdot-two-levels",
        "symlink-dotdot-then-through",
        "symlink-inside-then-file-below",
        "hardlink-absolute",
        "char-device",
        "fifo",
        "nul-in-name",
        "symlink-chain-write-through",
    }
]


@pytest.mark.parametrize("case", E2E_CASES, ids=[c.id for c in E2E_CASES])
def test_remote_load_refuses_malicious_directory_save(
    tmp_path: Path, attempt_urls: tuple[str, str], case: Case
) -> None:
    members, bad = case.build(tmp_path)
    error, _ = _load_refused(tmp_path, attempt_urls, _tarball_bytes(BENIGN_PREFIX + members))
    _assert_names_member(error, bad)


def test_remote_load_refuses_archive_larger_than_its_record_says(tmp_path: Path, attempt_urls: tuple[str, str]) -> None:
    """The record's unpacked size bounds the extraction (the payload was rewritten behind it)."""
    payload = _tarball_bytes([*BENIGN_PREFIX, _reg("bulk.bin", b"b" * 5000)])
    error, _ = _load_refused(tmp_path, attempt_urls, payload, unpacked=BENIGN_PREFIX_BYTES + 4999)
    _assert_names_member(error, "bulk.bin")


def test_remote_load_restores_tampered_benign_save(tmp_path: Path, attempt_urls: tuple[str, str]) -> None:
    """Control: the tampering itself is accepted, so the refusals above come from the archive check."""
    dest, dest2 = attempt_urls
    _save_then_tamper(tmp_path, dest, _tarball_bytes(_benign_members()), 10_000)
    cp = RemoteCheckpoint(dest2, checkpoint_src=dest, path=tmp_path / "restore" / "cp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = cp.load_sync()
    assert restored == cp.path
    tree = tree_snapshot(cp.path)
    assert "genuine.txt" not in tree
    assert tree["a/b/c/deep.txt"] == ("file", b"deep contents\n")
    assert tree["dirlink"] == ("link", "a/b")
    assert os.path.samefile(cp.path / "a/hard-to-deep", cp.path / "a/b/c/deep.txt")
    assert sorted(os.listdir(tmp_path / "restore")) == ["cp"]


def test_remote_load_refuses_link_made_to_escape_by_a_later_link(tmp_path: Path, attempt_urls: tuple[str, str]) -> None:
    error, _ = _load_refused(tmp_path, attempt_urls, _tarball_bytes(BENIGN_PREFIX + LATE_ESCAPE))
    assert error.member in ("l", "x")
