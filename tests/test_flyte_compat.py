"""RemoteCheckpoint as flyte's ``flyte.Checkpoint``.

* ``prev_exists()`` means what it means in flyte (a source was given);
  ``has_loadable_save()`` asks the store.
* The constructor does no I/O, local or remote.
* Checkpoints in flyte's layout (one object at the URL: raw bytes or a
  file, or a gzipped tarball of a directory's entries) load, hostile
  tarballs are refused.
* ``s3://`` works where another library (flyte's storage) re-registered
  fsspec's ``s3`` protocol with a filesystem that rejects s3fs's options.
* A path returned by a load outlives the RemoteCheckpoint object.
* ``RemoteCheckpoint.from_flyte_context()`` takes the paths from the
  running flyte task.

Everything runs against real backends: moto's S3 server, local files and
fsspec's memory filesystem; flyte itself where it is installed. Objects in
flyte's layout are written here with tarfile and s3fs directly, never
through the code under test.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import uuid
import warnings
import weakref
from pathlib import Path

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from restartable import CheckpointFallbackWarning, CheckpointRemoteError, CheckpointUnsafeArchiveError
from restartable.remote import RemoteCheckpoint
from restartable.store.objects import RetryPolicy

# --------------------------------------------------------------------------- backends and raw access


BACKENDS = ["s3", "file", "memory"]


@pytest.fixture(params=BACKENDS)
def base(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh URL prefix on one backend."""
    if request.param == "s3":
        yield f"{request.getfixturevalue('s3_module_bucket')}/run-{uuid.uuid4().hex[:16]}"
    elif request.param == "file":
        yield f"file://{tmp_path}/remote/run"
    else:
        name = uuid.uuid4().hex
        yield f"memory://{name}/run"
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


def _on_backends(values: list[str], keep: set[tuple[str, str]]) -> list:
    """``(base, value)`` cases for ``indirect=["base"]``: every value on ``memory://``,
    on ``s3`` and ``file`` those in ``keep``; the other s3 and file cases repeat a
    code path the kept ones cover and run in the stress run."""
    cases = []
    for backend in BACKENDS:
        for value in values:
            default = backend == "memory" or (backend, value) in keep
            marks = () if default else (pytest.mark.stress,)
            cases.append(pytest.param(backend, value, marks=marks, id=f"{backend}-{value}"))
    return cases


def _raw(url: str):
    """A filesystem for ``url`` (s3fs itself for s3://) and the path of ``url`` in it."""
    if url.startswith("s3://"):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True), url[len("s3://") :]
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root


def _put_object(url: str, data: bytes) -> None:
    """Write one object at ``url`` itself: what flyte.Checkpoint leaves."""
    fs, root = _raw(url)
    if url.startswith("file://"):
        Path(root).parent.mkdir(parents=True, exist_ok=True)
    fs.pipe_file(root, data)
    fs.invalidate_cache()


def _keys(url: str) -> set[str]:
    fs, root = _raw(url)
    fs.invalidate_cache()
    try:
        found = fs.find(root, withdirs=False)
    except FileNotFoundError:
        return set()
    keys = set()
    for path in found:
        path = fs._strip_protocol(path).rstrip("/")
        keys.add(path[len(root) + 1 :] if path != root else "")
    return keys


def _tarball(entries: list[tuple[tarfile.TarInfo, bytes | None]], compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _flyte_directory_tarball(directory: Path, compression: str = "gz") -> bytes:
    """A directory the way flyte.Checkpoint.save stores one: a tar of its top-level entries (recursively)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)
    return buf.getvalue()


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", path.read_bytes())
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "state.json").write_text(json.dumps({"step": 12}))
    (root / "sub" / "weights.bin").write_bytes(os.urandom(1 << 20))
    (root / "sub" / "deeper" / "ünïcode.txt").write_text("ok")
    (root / "sub" / "link").symlink_to("../state.json")
    return root


# --------------------------------------------------------------------------- prev_exists


def test_prev_exists_is_whether_a_source_was_given(base: str) -> None:
    assert RemoteCheckpoint(f"{base}/a1").prev_exists() is False
    for blank in ("", "   ", '""', ' "" '):
        assert RemoteCheckpoint(f"{base}/a1", blank).prev_exists() is False  # flyte strips blanks and quotes
    given = RemoteCheckpoint(f"{base}/a1", f"{base}/never-written")
    assert given.prev_exists() is True
    assert given.remote_source == f"{base}/never-written"
    assert given.has_loadable_save() is False
    assert given.load_sync() is None
    assert _keys(f"{base}/a1") == set()  # a load that found nothing writes nothing


def test_has_loadable_save_sees_both_layouts(base: str) -> None:
    ours, theirs = f"{base}/ours", f"{base}/theirs"
    assert RemoteCheckpoint(f"{base}/x", ours).has_loadable_save() is False
    RemoteCheckpoint(ours).save_sync(b"saved by restartable")
    assert RemoteCheckpoint(f"{base}/x", ours).has_loadable_save() is True
    assert RemoteCheckpoint(f"{base}/x", theirs).has_loadable_save() is False
    _put_object(theirs, b"saved by flyte")
    assert RemoteCheckpoint(f"{base}/x", theirs).has_loadable_save() is True


# --------------------------------------------------------------------------- no I/O in the constructor


class _Listener:
    """A TCP endpoint that records connections in order (and drops them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            first = b""
            try:
                conn.settimeout(5)
                first = conn.recv(64)
            except OSError:
                pass
            conn.close()
            with self.cond:
                self.accepted.append(first.decode("latin-1"))
                self.cond.notify_all()

    def connections_before_a_probe(self) -> list[str]:
        """Every connection accepted so far: one of ours is sent last and waited for (FIFO backlog)."""
        marker = f"PROBE-{uuid.uuid4().hex}"
        with socket.create_connection(("127.0.0.1", self.port)) as probe:
            probe.sendall(marker.encode())
            with self.cond:
                assert self.cond.wait_for(lambda: any(marker in a for a in self.accepted), timeout=30)
                index = next(i for i, a in enumerate(self.accepted) if marker in a)
                before = self.accepted[:index]
                del self.accepted[index]
                return before

    def close(self) -> None:
        self.sock.close()


def test_constructor_touches_nothing_on_an_unreachable_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Construction, prev_exists, the URLs and repr reach no endpoint and create no local directory."""
    pytest.importorskip("s3fs")
    listener = _Listener()
    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(local_tmp))
    options = {
        "endpoint_url": f"http://127.0.0.1:{listener.port}",
        "key": "k",
        "secret": "s",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    try:
        cp = RemoteCheckpoint(
            "s3://bucket/run/attempt-2",
            "s3://bucket/run/attempt-1",
            storage_options=options,
            retry=RetryPolicy(attempts=1),
        )
        local = RemoteCheckpoint(tmp_path / "dest" / "attempt-2", tmp_path / "dest" / "attempt-1")
        assert cp.prev_exists() and cp.remote_destination == "s3://bucket/run/attempt-2"
        assert "attempt-1" in repr(cp) and local.prev_exists()
        assert listener.connections_before_a_probe() == []
        assert not (tmp_path / "dest").exists()
        assert list(local_tmp.iterdir()) == []  # not even the temporary restore directory

        # The same object does reach the endpoint once asked to save: this
        # test sees I/O when there is some.
        with pytest.raises(CheckpointRemoteError):
            cp.save_sync(b"payload")
        assert listener.connections_before_a_probe() != []
    finally:
        listener.close()


def test_constructor_writes_no_link_on_s3(s3_bucket: str) -> None:
    RemoteCheckpoint(f"{s3_bucket}/a1", f"{s3_bucket}/a0")
    assert _keys(s3_bucket) == set()


def test_link_is_written_by_the_first_save(base: str) -> None:
    cp = RemoteCheckpoint(f"{base}/a1", f"{base}/a0")
    assert _keys(f"{base}/a1") == set()
    cp.save_sync(b"first")
    assert "source.json" in _keys(f"{base}/a1")
    # ...so the chain reaches a0 past a1 when a1's only save is gone.
    RemoteCheckpoint(f"{base}/a0").save_sync(b"a0's save")
    fs, root = _raw(f"{base}/a1")
    for key in _keys(f"{base}/a1") - {"source.json"}:
        fs.rm_file(f"{root}/{key}")
    assert RemoteCheckpoint(f"{base}/a2", f"{base}/a1").read() == b"a0's save"


def test_an_attempt_that_never_touched_its_checkpoint_leaves_no_link(base: str) -> None:
    RemoteCheckpoint(f"{base}/a0").save_sync(b"a0's save")
    RemoteCheckpoint(f"{base}/a1", f"{base}/a0")  # dies before loading or saving
    assert _keys(f"{base}/a1") == set()
    assert RemoteCheckpoint(f"{base}/a2", f"{base}/a1").load_sync() is None


# --------------------------------------------------------------------------- flyte's layout


# Default: both modes on memory://, one on s3 and the other on file.
@pytest.mark.parametrize(
    "base, mode", _on_backends(["sync", "async"], keep={("s3", "sync"), ("file", "async")}), indirect=["base"]
)
def test_loads_bytes_saved_in_flyte_layout(base: str, mode: str) -> None:
    src = f"{base}/flyte-attempt-0"
    _put_object(src, b"\x00hello-checkpoint\xff")
    cp = RemoteCheckpoint(f"{base}/a1", src)
    assert cp.has_loadable_save()
    if mode == "sync":
        restored = cp.load_sync()
    else:
        import asyncio

        restored = asyncio.run(cp.load())
    assert restored == cp.path / "payload"
    assert restored.read_bytes() == b"\x00hello-checkpoint\xff"
    assert cp.read() == b"\x00hello-checkpoint\xff"
    record = cp.restored
    assert record.layout == "flyte" and record.kind == "file" and record.url == src and record.size == 18
    assert sorted(p.name for p in cp.path.iterdir()) == ["payload"]  # no download left behind


def test_loads_a_large_file_saved_in_flyte_layout(base: str, tmp_path: Path) -> None:
    data = os.urandom(17 << 20)
    src = f"{base}/flyte-attempt-0"
    _put_object(src, data)
    assert RemoteCheckpoint(f"{base}/a1", src).read() == data


# Default: every compression on memory://; gz (flyte's default) on s3, xz on file (unpacked locally).
@pytest.mark.parametrize(
    "base, compression", _on_backends(["gz", "", "xz", "bz2"], keep={("s3", "gz"), ("file", "xz")}), indirect=["base"]
)
def test_loads_a_directory_saved_in_flyte_layout(base: str, tree: Path, compression: str) -> None:
    src = f"{base}/flyte-attempt-0"
    _put_object(src, _flyte_directory_tarball(tree, compression))
    cp = RemoteCheckpoint(f"{base}/a1", src)
    restored = cp.load_sync()
    assert restored == cp.path
    assert _snapshot(restored) == _snapshot(tree)
    assert cp.restored.kind == "directory" and cp.restored.layout == "flyte"
    with pytest.raises(ValueError, match="directory"):
        cp.read()


def test_loads_an_empty_directory_saved_in_flyte_layout(base: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    src = f"{base}/flyte-attempt-0"
    _put_object(src, _flyte_directory_tarball(tmp_path / "empty"))
    cp = RemoteCheckpoint(f"{base}/a1", src)
    assert cp.load_sync() == cp.path
    assert list(cp.path.iterdir()) == []


def test_an_empty_flyte_object_is_no_checkpoint(base: str) -> None:
    """flyte's load treats a zero-byte download as "no checkpoint"; so does ours, without a warning."""
    src = f"{base}/flyte-attempt-0"
    _put_object(src, b"")
    cp = RemoteCheckpoint(f"{base}/a1", src)
    assert cp.has_loadable_save() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cp.load_sync() is None


def test_a_chain_reaches_a_flyte_save_through_an_attempt_that_loaded_it(base: str) -> None:
    """flyte saved in attempt 0; attempt 1 ran restartable, loaded it and died; attempt 2 still gets it."""
    a0, a1, a2 = f"{base}/a0", f"{base}/a1", f"{base}/a2"
    _put_object(a0, b"flyte's step 5")
    assert RemoteCheckpoint(a1, a0).read() == b"flyte's step 5"
    assert _keys(a1) == {"source.json"}
    later = RemoteCheckpoint(a2, a1)
    assert later.read() == b"flyte's step 5"
    assert later.restored.attempt == a0


def test_a_damaged_flyte_tarball_is_skipped_with_a_warning(base: str, tree: Path) -> None:
    src = f"{base}/flyte-attempt-0"
    whole = _flyte_directory_tarball(tree)
    _put_object(src, whole[: len(whole) // 2])
    cp = RemoteCheckpoint(f"{base}/a1", src)
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert cp.load_sync() is None
    assert any(src in str(w.message) for w in caught)
    assert list(cp.path.iterdir()) == []  # nothing half-extracted, no download left


def test_restartable_saves_come_before_a_flyte_object_at_the_same_url(base: str) -> None:
    if not base.startswith("s3://"):
        pytest.skip("only an object store holds an object and keys below it at once")
    url = f"{base}/both"
    _put_object(url, b"flyte's")
    RemoteCheckpoint(url).save_sync(b"restartable's")
    assert RemoteCheckpoint(f"{base}/x", url).read() == b"restartable's"
    # With restartable's save gone, the flyte object is what is left.
    fs, root = _raw(url)
    for key in _keys(url) - {""}:
        fs.rm_file(f"{root}/{key}")
    assert RemoteCheckpoint(f"{base}/y", url).read() == b"flyte's"


def test_saving_to_a_local_flyte_file_is_a_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint"
    dest.write_bytes(b"saved by flyte")
    cp = RemoteCheckpoint(dest)
    with pytest.raises(CheckpointRemoteError, match="is a file") as info:
        cp.save_sync(b"new")
    assert info.value.url == f"file://{dest}"
    assert dest.read_bytes() == b"saved by flyte"
    # As a source it loads.
    assert RemoteCheckpoint(tmp_path / "next", dest).read() == b"saved by flyte"


_HOSTILE = {
    "tar-slip": [_file("ok.txt", b"ok"), _file("../evil.txt", b"pwned")],
    "absolute": [_file("/tmp/restartable-evil-abs.txt", b"pwned")],
    "symlink-out": [_entry("out", tarfile.SYMTYPE, "../../.."), _file("out/evil.txt", b"pwned")],
    "absolute-symlink": [_entry("etc", tarfile.SYMTYPE, "/etc")],
    "hardlink-out": [_entry("h", tarfile.LNKTYPE, "../../outside.txt")],
    "device": [_entry("dev", tarfile.CHRTYPE)],
    "fifo": [_entry("pipe", tarfile.FIFOTYPE)],
}


# Default: every hostile member on memory:// (the tarball is checked locally, after the download);
# one on s3 and two on file.
@pytest.mark.parametrize(
    "base, kind",
    _on_backends(sorted(_HOSTILE), keep={("s3", "tar-slip"), ("file", "symlink-out"), ("file", "hardlink-out")}),
    indirect=["base"],
)
def test_a_hostile_flyte_tarball_is_refused(base: str, tmp_path: Path, kind: str) -> None:
    src = f"{base}/flyte-attempt-0"
    _put_object(src, _tarball(_HOSTILE[kind]))
    work = tmp_path / "restore" / "work"
    cp = RemoteCheckpoint(f"{base}/a1", src, path=work)
    with pytest.raises(CheckpointUnsafeArchiveError):
        cp.load_sync()
    assert list(work.iterdir()) == []  # nothing extracted, no download left
    assert not (tmp_path / "restore" / "evil.txt").exists()
    assert not Path("/tmp/restartable-evil-abs.txt").exists()
    assert _keys(f"{base}/a1") == set()  # and nothing restored means no link


# --------------------------------------------------------------------------- s3 re-registered (flyte's storage)


class UnknownConfigurationKeyError(Exception):
    """What obstore raises (obstore.exceptions.UnknownConfigurationKeyError derives from Exception)."""


class _FlyteLikeS3(AbstractFileSystem):
    """Stands in for the obstore store flyte registers as fsspec's "s3": it takes
    any keyword when built and rejects, at the first request, every option
    that is not its own, as obstore does with s3fs's use_listings_cache."""

    protocol = ("s3", "s3a")
    cachable = False
    built = 0
    _OWN = frozenset(
        {
            "config",
            "client_options",
            "retry_config",
            "credential_provider",
            "asynchronous",
            "loop",
            "batch_size",
            "max_cache_size",
        }
    )

    def __init__(self, *args, **kwargs) -> None:
        type(self).built += 1
        self._unknown = sorted(set(kwargs) - self._OWN)
        super().__init__()

    def _reject(self) -> None:
        if self._unknown:
            raise UnknownConfigurationKeyError(f"Configuration key: '{self._unknown[0]}' is not valid for store 'S3'.")
        raise NotImplementedError("a stand-in: no requests")

    def ls(self, path, detail=True, **kwargs):
        self._reject()

    def info(self, path, **kwargs):
        self._reject()

    def _open(self, path, mode="rb", **kwargs):
        self._reject()

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._reject()

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._reject()

    def put_file(self, lpath, rpath, **kwargs):
        self._reject()

    def rm_file(self, path):
        self._reject()

    def rm(self, path, recursive=False, maxdepth=None):
        self._reject()


@pytest.fixture
def flyte_like_s3():
    """Register the stand-in as fsspec's s3 and s3a, as importing flyte.io does; restore the registry after."""
    registry = importlib.import_module("fsspec.registry")._registry  # fsspec has no public unregister
    saved = {name: registry[name] for name in ("s3", "s3a") if name in registry}
    for name in ("s3", "s3a"):
        fsspec.register_implementation(name, _FlyteLikeS3, clobber=True)
    try:
        yield _FlyteLikeS3
    finally:
        for name in ("s3", "s3a"):
            registry.pop(name, None)
        registry.update(saved)
        assert fsspec.get_filesystem_class("s3") is not _FlyteLikeS3


def test_s3_works_where_another_library_registered_its_own_s3(s3_bucket: str, flyte_like_s3, tree: Path) -> None:
    # The clash is real in this process: fsspec's s3 rejects s3fs's options.
    with pytest.raises(UnknownConfigurationKeyError, match="use_listings_cache"):
        fsspec.filesystem("s3", use_listings_cache=False).ls(s3_bucket)
    built = flyte_like_s3.built

    a0, a1, a2 = (f"{s3_bucket}/a{i}" for i in range(3))
    first = RemoteCheckpoint(a0)
    first.save_sync(b"older")
    first.save_sync(tree)
    second = RemoteCheckpoint(a1, a0)
    assert second.has_loadable_save()
    assert _snapshot(second.load_sync()) == _snapshot(tree)
    second.save_sync(b"step 2")
    assert RemoteCheckpoint(a2, a1).read() == b"step 2"
    _put_object(f"{s3_bucket}/flyte", b"saved by flyte")
    assert RemoteCheckpoint(f"{s3_bucket}/a3", f"{s3_bucket}/flyte").read() == b"saved by flyte"
    # s3fs did all of it; the registered filesystem was never even built.
    assert flyte_like_s3.built == built


def test_object_store_opens_s3_with_s3fs_whatever_is_registered(s3_bucket: str, flyte_like_s3) -> None:
    import s3fs

    from restartable.store.objects import ObjectStore

    store = ObjectStore(f"{s3_bucket}/catalog")
    assert isinstance(store.fs, s3fs.S3FileSystem)
    store.put_bytes("a/b.json", b"{}", create=True)
    with pytest.raises(FileExistsError):
        store.put_bytes("a/b.json", b"{}", create=True)
    assert store.list("a") == {"a/b.json": 2}


_REAL_FLYTE_CLASH = textwrap.dedent(
    """
    import sys
    import fsspec
    import flyte.io, flyte.storage  # flyte's storage: fsspec's s3 becomes obstore's store
    assert type(fsspec.filesystem("s3")).__module__.startswith("obstore"), fsspec.filesystem("s3")
    from restartable.remote import RemoteCheckpoint
    bucket = sys.argv[1]
    RemoteCheckpoint(f"{bucket}/a0").save_sync(b"saved beside flyte")
    assert RemoteCheckpoint(f"{bucket}/a1", f"{bucket}/a0").read() == b"saved beside flyte"
    print("OK")
    """
)


def test_s3_in_a_process_that_imported_flyte_storage(s3_bucket: str) -> None:
    pytest.importorskip("flyte")
    result = subprocess.run(
        [sys.executable, "-c", _REAL_FLYTE_CLASH, s3_bucket],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr


# --------------------------------------------------------------------------- the restore directory's lifetime


def test_a_loaded_path_outlives_the_object(base: str, tree: Path) -> None:
    RemoteCheckpoint(f"{base}/bytes").save_sync(b"weights")
    RemoteCheckpoint(f"{base}/dir").save_sync(tree)

    cp = RemoteCheckpoint(f"{base}/a1", f"{base}/bytes")
    alive = weakref.ref(cp)
    payload = cp.load_sync()
    del cp
    gc.collect()
    assert alive() is None  # the object is gone...
    assert payload.read_bytes() == b"weights"  # ...its restored file is not

    restored = RemoteCheckpoint(f"{base}/a2", f"{base}/dir").load_sync()  # the one-liner
    gc.collect()
    assert _snapshot(restored) == _snapshot(tree)

    cp = RemoteCheckpoint(f"{base}/a3")
    workdir = cp.path  # handed out through .path: kept as well
    (workdir / "mine.txt").write_text("kept")
    del cp
    gc.collect()
    assert (workdir / "mine.txt").read_text() == "kept"


def test_a_restore_directory_never_handed_out_goes_with_the_object(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_tmp = tmp_path / "tmp"
    local_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(local_tmp))
    whole = _tarball([_file("a.txt", os.urandom(100_000))])
    _put_object(f"{base}/damaged", whole[: len(whole) // 2])  # a tarball cut short: a restore is tried and fails
    cp = RemoteCheckpoint(f"{base}/a1", f"{base}/damaged")
    with pytest.warns(CheckpointFallbackWarning):
        assert cp.load_sync() is None
    assert len(list(local_tmp.iterdir())) == 1  # made for the attempt, never handed out
    alive = weakref.ref(cp)
    del cp
    gc.collect()
    assert alive() is None
    assert list(local_tmp.iterdir()) == []


def test_cleanup_removes_the_restore_directory(base: str) -> None:
    RemoteCheckpoint(f"{base}/a0").save_sync(b"x")
    cp = RemoteCheckpoint(f"{base}/a1", f"{base}/a0")
    first = cp.load_sync()
    cp.cleanup()
    assert not first.exists()
    again = cp.load_sync()  # a later load downloads again
    assert again.read_bytes() == b"x" and again != first
    cp.cleanup()


def test_cleanup_never_removes_a_given_path(base: str, tmp_path: Path) -> None:
    RemoteCheckpoint(f"{base}/a0").save_sync(b"x")
    cp = RemoteCheckpoint(f"{base}/a1", f"{base}/a0", path=tmp_path / "mine")
    assert cp.load_sync() == tmp_path / "mine" / "payload"
    cp.cleanup()
    assert (tmp_path / "mine" / "payload").read_bytes() == b"x"


_AT_EXIT = textwrap.dedent(
    """
    import io, os, sys, tarfile, warnings
    from restartable.remote import RemoteCheckpoint
    base = sys.argv[1]
    RemoteCheckpoint(f"{base}/a0").save_sync(b"x")
    path = RemoteCheckpoint(f"{base}/a1", f"{base}/a0").load_sync()
    # A restore directory never handed out: a load of a damaged tarball.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("a.txt"); info.size = 100000
        tar.addfile(info, io.BytesIO(os.urandom(100000)))
    with open(base[len("file://"):] + "/bad", "wb") as fh:
        fh.write(buf.getvalue()[:30000])
    unused = RemoteCheckpoint(f"{base}/b1", f"{base}/bad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert unused.load_sync() is None
    unused_dir = unused._workdir.path
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a forked child's normal exit leaves its parent's directories alone
    os.waitpid(pid, 0)
    assert path.read_bytes() == b"x", "the forked child removed its parent's directory"
    assert unused_dir.is_dir(), "the forked child removed its parent's unused directory"
    print(unused_dir, flush=True)
    print(path.parent, flush=True)
    """
)


def test_restore_directories_are_removed_at_process_exit(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):  # pragma: no cover
        pytest.skip("no fork here")
    result = subprocess.run(
        [sys.executable, "-c", _AT_EXIT, f"file://{tmp_path}/remote"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    unused, workdir = (Path(line) for line in result.stdout.strip().splitlines()[-2:])
    assert workdir.name.startswith("restartable-remote-") and unused.name.startswith("restartable-remote-")
    assert not workdir.exists() and not unused.exists()  # the process has exited: its directories are gone


# --------------------------------------------------------------------------- from_flyte_context


def test_from_flyte_context_without_flyte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flyte", None)  # import flyte raises ImportError
    with pytest.raises(ImportError, match=r"pip install flyte"):
        RemoteCheckpoint.from_flyte_context()


def test_from_flyte_context_outside_a_task() -> None:
    pytest.importorskip("flyte")
    with pytest.raises(RuntimeError, match=r"inside a running flyte task.*flyte\.ctx\(\)"):
        RemoteCheckpoint.from_flyte_context()


def _task_context(checkpoint_paths):
    """A flyte TaskContext made of flyte's public models, entered the way flyte's runtime enters one."""
    from flyte._context import internal_ctx  # test only: how flyte's runtime installs a task context
    from flyte.models import ActionID, RawDataPath, TaskContext
    from flyte.report import Report

    tctx = TaskContext(
        action=ActionID(name="a0"),
        version="v1",
        raw_data_path=RawDataPath(path="/tmp/rd"),
        output_path="/tmp/o",
        run_base_dir="/tmp",
        report=Report(name="t"),
        checkpoint_paths=checkpoint_paths,
    )
    return internal_ctx().replace_task_context(tctx)


def test_from_flyte_context_with_flyte_context_objects(tmp_path: Path) -> None:
    pytest.importorskip("flyte")
    from flyte.models import CheckpointPaths

    with _task_context(None):
        with pytest.raises(RuntimeError, match=r"checkpoint_paths is None"):
            RemoteCheckpoint.from_flyte_context()
    with _task_context(CheckpointPaths(checkpoint_path="  ", prev_checkpoint_path=None)):
        with pytest.raises(RuntimeError, match=r"checkpoint_paths\.checkpoint_path is empty"):
            RemoteCheckpoint.from_flyte_context()
    with _task_context(CheckpointPaths(checkpoint_path=str(tmp_path / "out"), prev_checkpoint_path=" ")):
        cp = RemoteCheckpoint.from_flyte_context()
        assert cp.prev_exists() is False and cp.remote_destination == f"file://{tmp_path}/out"
    _put_object(f"file://{tmp_path}/prev", b"from the previous attempt")
    paths = CheckpointPaths(
        checkpoint_path=(tmp_path / "out2").as_uri(), prev_checkpoint_path=(tmp_path / "prev").as_uri()
    )
    with _task_context(paths):
        cp = RemoteCheckpoint.from_flyte_context()
        assert cp is RemoteCheckpoint.from_flyte_context()  # one per task context, as flyte.ctx().checkpoint
        assert cp.remote_source == f"file://{tmp_path}/prev" and cp.prev_exists()
        assert cp.read() == b"from the previous attempt"
        assert RemoteCheckpoint.from_flyte_context(keep=None) is not cp


_FLYTE_TASK = textwrap.dedent(
    """
    import sys
    import flyte
    from restartable.remote import RemoteCheckpoint

    env = flyte.TaskEnvironment(name="restartable-test")

    @env.task(retries=2)
    def work(goal: int) -> str:
        cp = RemoteCheckpoint.from_flyte_context()
        previous = cp.load_sync()
        step = int(previous.read_bytes()) if previous else 0
        print(f"ATTEMPT loaded={step} prev_exists={cp.prev_exists()} dest={cp.remote_destination}", flush=True)
        cp.save_sync(str(step + 1).encode())
        if step + 1 < goal:
            raise RuntimeError("killed on purpose")
        return f"done at {step + 1}"

    flyte.init()
    run = flyte.with_runcontext(raw_data_path=sys.argv[1]).run(work, 3)
    print("RESULT", run.outputs(), flush=True)
    """
)


# Default: the s3 run (retries, and s3fs reaching the endpoint through flyte's own settings); local
# destinations from a task context are covered in-process (test_from_flyte_context_with_flyte_context_objects).
@pytest.mark.parametrize("where", [pytest.param("file", marks=pytest.mark.stress), "s3"])
def test_from_flyte_context_in_a_retried_flyte_task(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A real local flyte run: every attempt gets the same destination; each resumes from the last save."""
    pytest.importorskip("flyte")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        raw = f"{bucket}/raw"
        # flyte's own S3 settings only: s3fs must get the endpoint through them.
        env.update(
            FLYTE_AWS_ENDPOINT=env.pop("AWS_ENDPOINT_URL"),
            FLYTE_AWS_ACCESS_KEY_ID="testing",
            FLYTE_AWS_SECRET_ACCESS_KEY="testing",
            AWS_ALLOW_HTTP="true",
        )
    else:
        raw = str(tmp_path / "raw")
    result = subprocess.run(
        [sys.executable, "-c", _FLYTE_TASK, raw], capture_output=True, text=True, timeout=300, env=env
    )
    attempts = [line for line in result.stdout.splitlines() if line.startswith("ATTEMPT")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[1] for line in attempts] == ["loaded=0", "loaded=1", "loaded=2"], attempts
    assert all("prev_exists=True" in line for line in attempts)
    assert 'RESULT ActionOutputs(o0="done at 3")' in result.stdout
