"""RemoteCheckpoint: checkpoints of retried tasks on object stores.

Every behaviour is checked against three real backends: an S3 server
(moto's server mode, reached through s3fs exactly as a job reaches S3),
``file://`` on the local disk and fsspec's process-global ``memory://``.
Remote objects are inspected and damaged through fsspec directly, never
through the code under test.

Most writing attempts below make an earlier save before the one whose
content is checked, so that every load must pick the *newest* save. The lone
first save of a fresh ``RemoteCheckpoint`` has its own tests
(``test_first_save_of_a_fresh_checkpoint_is_loadable``; at 946a840 that save
deleted its own payload while collecting orphans).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import queue
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
import uuid
from pathlib import Path

import fsspec
import pytest

from restartable import (
    CheckpointFallbackWarning,
    CheckpointRemoteError,
    CheckpointUnsafeArchiveError,
)
from restartable.remote import RemoteCheckpoint
from restartable.store import objects
from restartable.store.objects import RetryPolicy

BACKENDS = ["s3", "file", "memory"]
_RECORD = re.compile(r"^saves/(\d{12})-([0-9a-f]{32})\.json$")
# A payload is one object, or several parts: <key>, <key>.000001, ...
_PAYLOAD = re.compile(r"^payloads/([0-9a-f]{32})\.(bin|tar\.gz)(\.\d{6})?$")


# --------------------------------------------------------------------------- backends and raw access


@pytest.fixture(params=BACKENDS)
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty URL prefix on one backend; attempts live below it."""
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_module_bucket")
        return f"{bucket}/run-{uuid.uuid4().hex[:16]}"
    if request.param == "file":
        return f"file://{tmp_path}/remote/run"
    name = uuid.uuid4().hex
    request.addfinalizer(lambda: _drop_memory(name))
    return f"memory://{name}/run"


@pytest.fixture(params=["s3", "file"])
def durable_base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A prefix that another process can see (memory:// is per process)."""
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_module_bucket')}/run-{uuid.uuid4().hex[:16]}"
    return f"file://{tmp_path}/remote/run"


def _on_backends(*axes: list, keep: set[tuple]) -> list:
    """``(base, *axes)`` cases for ``indirect=["base"]``: every combination on ``memory://``,
    on ``s3`` and ``file`` those in ``keep`` (``(backend, *ids)``); the other
    s3 and file combinations repeat a code path the kept ones cover and run in
    the stress run."""
    cases = []
    for backend in BACKENDS:
        for combo in itertools.product(*axes):
            ids = [getattr(value, "__name__", str(value)) for value in combo]
            default = backend == "memory" or (backend, *ids) in keep
            marks = () if default else (pytest.mark.stress,)
            cases.append(pytest.param(backend, *combo, marks=marks, id="-".join([backend, *ids])))
    return cases


def _drop_memory(name: str) -> None:
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def _fs(url: str):
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def _keys(url: str, prefix: str = "") -> set[str]:
    """Every object under ``url`` (below ``prefix``), as keys relative to ``url``."""
    fs, root = _fs(url)
    top = f"{root}/{prefix}".rstrip("/")
    try:
        found = fs.find(top, withdirs=False)
    except FileNotFoundError:
        return set()
    keys = set()
    for path in found:
        path = fs._strip_protocol(path).rstrip("/")
        assert path.startswith(root + "/"), (path, root)
        keys.add(path[len(root) + 1 :])
    return keys


def _get(url: str, key: str) -> bytes:
    fs, root = _fs(url)
    return fs.cat_file(f"{root}/{key}")


def _put(url: str, key: str, data: bytes) -> None:
    fs, root = _fs(url)
    if url.startswith("file://"):
        fs.makedirs(f"{root}/{key}".rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(f"{root}/{key}", data)
    fs.invalidate_cache()


def _records(url: str) -> list[str]:
    """Save record keys under ``url``, oldest first."""
    keys = sorted(k for k in _keys(url, "saves") if _RECORD.match(k))
    assert keys == sorted(_keys(url, "saves")), "unexpected objects under saves/"
    return keys


def _payloads(url: str) -> set[str]:
    keys = _keys(url, "payloads")
    assert all(_PAYLOAD.match(k) for k in keys), keys
    return keys


def _uid(key: str) -> str:
    match = _RECORD.match(key) or _PAYLOAD.match(key)
    assert match, key
    return match.group(2) if key.startswith("saves/") else match.group(1)


def _payload_of(url: str, record_key: str, part: int = 0) -> str:
    """A payload object of a save record (record and payload share the save's uuid).

    ``part`` 0 is the payload's own key; part ``i`` of a payload stored in
    several objects is ``<key>.<i:06d>``.
    """
    uid = _uid(record_key)
    matches = sorted(k for k in _payloads(url) if _uid(k) == uid)
    assert matches and part < len(matches), (record_key, part, _payloads(url))
    assert matches[0].endswith((".bin", ".tar.gz")), matches
    return matches[part]


def _payload_bytes(url: str, record_key: str) -> bytes:
    """The stored bytes of a save's payload, its parts joined in order."""
    keys = sorted(k for k in _payloads(url) if _uid(k) == _uid(record_key))
    assert keys, (record_key, _payloads(url))
    return b"".join(_get(url, k) for k in keys)


def _referenced(url: str) -> set[str]:
    """uuids of the saves that have a record under ``url``."""
    return {_uid(k) for k in _records(url)}


# --------------------------------------------------------------------------- data


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: directories, symlinks (target) and files (size, sha256)."""
    entries: dict[str, tuple] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                entries[rel] = ("symlink", os.readlink(path))
            elif path.is_dir():
                entries[rel] = ("dir",)
            else:
                data = path.read_bytes()
                entries[rel] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return entries


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nested directory: empty files, an empty directory, unicode names, 20 MB, a relative symlink, a hard link."""
    root = tmp_path_factory.mktemp("tree") / "model"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "sub" / "Ωmega 日本").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "deeper" / "empty.bin").write_bytes(b"")
    (root / "données ünïcödé.txt").write_text("héllo wörld ✓\n", encoding="utf-8")
    (root / "sub" / "Ωmega 日本" / "ファイル.bin").write_bytes(_random_bytes(4099, 1))
    (root / "sub" / "state.json").write_text(json.dumps({"step": 41, "lr": 0.001}))
    (root / "weights.bin").write_bytes(_random_bytes(20 << 20, 2))
    (root / "sub" / "deeper" / "weights-link").symlink_to("../../weights.bin")
    os.link(root / "sub" / "state.json", root / "sub" / "deeper" / "hard-link-to-state.json")
    (root / ("long-name-" + "n" * 150 + ".txt")).write_text("past the 100-character ustar limit")
    return root


def _save(cp: RemoteCheckpoint, data, mode: str) -> None:
    if mode == "sync":
        cp.save_sync(data)
    else:
        assert asyncio.run(cp.save(data)) is None


def _load(cp: RemoteCheckpoint, mode: str) -> Path | None:
    return cp.load_sync() if mode == "sync" else asyncio.run(cp.load())


# --------------------------------------------------------------------------- 1. round trips


# Default: every kind and mode on memory://; on s3 and file the empty and the large payload, one mode each.
@pytest.mark.parametrize(
    "base, kind, mode",
    _on_backends(
        ["empty-bytes", "bytes-5mb", "bytearray", "memoryview"],
        ["sync", "async"],
        keep={
            ("s3", "empty-bytes", "sync"),
            ("s3", "bytes-5mb", "async"),
            ("file", "empty-bytes", "async"),
            ("file", "bytes-5mb", "sync"),
        },
    ),
    indirect=["base"],
)
def test_bytes_round_trip(base: str, kind: str, mode: str) -> None:
    data = {
        "empty-bytes": b"",
        "bytes-5mb": _random_bytes(5 << 20, 3),
        "bytearray": bytearray(b"\x00\xff" * 1000),
        "memoryview": memoryview(b"checkpoint at step 17"),
    }[kind]
    first = RemoteCheckpoint(f"{base}/attempt-1")
    _save(first, b"an older save", mode)
    _save(first, data, mode)

    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    restored = _load(second, mode)

    assert restored == second.path / "payload"
    assert restored.read_bytes() == bytes(data)
    assert second.read() == bytes(data)
    record = second.restored
    assert record is not None and record.kind == "bytes" and record.size == len(data)
    assert record.attempt == f"{base}/attempt-1" and record.sequence == 2
    assert record.url == f"{base}/attempt-1/{_records(f'{base}/attempt-1')[-1]}"
    # The stored payload holds exactly the saved bytes.
    assert _payload_bytes(f"{base}/attempt-1", _records(f"{base}/attempt-1")[-1]) == bytes(data)


# Default: every kind and mode on memory://; on s3 and file the multipart upload and one plain file, one mode each.
@pytest.mark.parametrize(
    "base, kind, mode",
    _on_backends(
        ["str-path", "pathlib-path", "17mb-multipart"],
        ["sync", "async"],
        keep={
            ("s3", "17mb-multipart", "sync"),
            ("s3", "str-path", "async"),
            ("file", "pathlib-path", "sync"),
            ("file", "17mb-multipart", "async"),
        },
    ),
    indirect=["base"],
)
def test_file_round_trip(base: str, tmp_path: Path, kind: str, mode: str) -> None:
    # 17 MB is more than one 16 MB upload part: the payload is streamed in parts.
    data = _random_bytes((17 << 20) if kind == "17mb-multipart" else 3 << 20, 4)
    source = tmp_path / "work" / "model.ckpt"
    source.parent.mkdir()
    source.write_bytes(data)
    first = RemoteCheckpoint(f"{base}/attempt-1")
    _save(first, b"an older save", mode)
    _save(first, str(source) if kind == "str-path" else source, mode)

    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    restored = _load(second, mode)

    assert restored == second.path / "payload"
    assert restored.read_bytes() == data
    assert second.restored.kind == "file"
    assert second.restored.name == "model.ckpt"
    assert second.restored.size == len(data)
    assert source.read_bytes() == data  # the source is left alone


# Default: both modes on memory://, one on s3 and the other on file.
@pytest.mark.parametrize(
    "base, mode", _on_backends(["sync", "async"], keep={("s3", "sync"), ("file", "async")}), indirect=["base"]
)
def test_directory_round_trip(base: str, tree: Path, mode: str) -> None:
    expected = _snapshot(tree)
    assert expected["sub/deeper/weights-link"] == ("symlink", "../../weights.bin")
    assert expected["empty-dir"] == ("dir",)
    first = RemoteCheckpoint(f"{base}/attempt-1")
    _save(first, b"an older save", mode)
    _save(first, tree, mode)
    assert _snapshot(tree) == expected  # saving does not touch the source

    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    restored = _load(second, mode)

    assert restored == second.path
    # Same relative paths (nothing missing, no leftovers of the download), same bytes.
    assert _snapshot(restored) == expected
    assert (restored / "sub" / "deeper" / "weights-link").read_bytes() == (tree / "weights.bin").read_bytes()
    record = second.restored
    assert record.kind == "directory" and record.name == "model"
    assert record.payload.endswith(".tar.gz")
    with pytest.raises(ValueError, match="directory"):
        second.read()


def test_write_and_read_are_a_bytes_round_trip(base: str) -> None:
    first = RemoteCheckpoint(f"{base}/attempt-1")
    first.write(b"first")
    first.write(b"\x00second\xff")
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    assert second.read() == b"\x00second\xff"
    assert second.read() == b"\x00second\xff"


@pytest.mark.parametrize("dest_state", ["empty", "has-saves"])
def test_first_save_of_a_fresh_checkpoint_is_loadable(base: str, dest_state: str) -> None:
    dest = f"{base}/attempt-1"
    if dest_state == "has-saves":
        earlier = RemoteCheckpoint(dest)
        earlier.save_sync(b"earlier 1")
        earlier.save_sync(b"earlier 2")
    fresh = RemoteCheckpoint(dest)
    fresh.save_sync(b"the only save of this object")
    # Every save record's payload is there...
    records = _records(dest)
    payload_uids = {_uid(k) for k in _payloads(dest)}
    assert {_uid(k) for k in records} <= payload_uids, f"records {records} reference missing payloads"
    # ...and the next attempt restores the newest save.
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest)
    path = second.load_sync()
    assert path is not None and path.read_bytes() == b"the only save of this object"


def test_saving_the_restored_directory_saves_only_its_content(base: str, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_bytes(b"a" * 1000)
    (source / "weights.bin").write_bytes(_random_bytes(1 << 20, 5))
    first = RemoteCheckpoint(f"{base}/attempt-1")
    first.save_sync(b"an older save")
    first.save_sync(source)

    # The usual retry loop: restore the directory, work in it, save it again.
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    work = second.load_sync()
    (work / "step.txt").write_text("42")
    expected = _snapshot(work)
    second.save_sync(b"an older save")
    second.save_sync(work)

    third = RemoteCheckpoint(f"{base}/attempt-3", checkpoint_src=f"{base}/attempt-2")
    restored = third.load_sync()
    assert restored is not None
    assert sorted(_snapshot(restored)) == sorted(expected)
    assert _snapshot(restored) == expected


# --------------------------------------------------------------------------- 2. prev_exists, idempotent load


def test_prev_exists_and_empty_loads(base: str) -> None:
    a1, a2, a3, a4 = (f"{base}/attempt-{i}" for i in (1, 2, 3, 4))
    alone = RemoteCheckpoint(a1)
    assert alone.remote_source is None
    assert alone.prev_exists() is False
    assert alone.has_loadable_save() is False
    assert alone.load_sync() is None and alone.restored is None

    # A source prefix where nothing was ever written: flyte's prev_exists()
    # says a source was given; has_loadable_save() asks the store.
    empty = RemoteCheckpoint(a2, checkpoint_src=f"{base}/never-written")
    assert empty.remote_source == f"{base}/never-written"
    assert empty.prev_exists() is True
    assert empty.has_loadable_save() is False
    assert empty.load_sync() is None

    alone.save_sync(b"one")
    alone.save_sync(b"two")
    assert alone.has_loadable_save() is False  # an object's own saves are not earlier ones
    assert RemoteCheckpoint(a1).has_loadable_save() is True  # a rerun of the same attempt finds them
    nxt = RemoteCheckpoint(a3, checkpoint_src=a1)
    assert nxt.prev_exists() is True and nxt.has_loadable_save() is True
    assert nxt.read() == b"two"
    # a3 loaded a1's save and "died" without saving: its link leads a4 to it.
    assert _keys(a3) == {"source.json"}
    assert RemoteCheckpoint(a4, checkpoint_src=a3).has_loadable_save() is True
    assert RemoteCheckpoint(a4, checkpoint_src=a3).read() == b"two"


def test_second_load_returns_the_same_path_without_downloading(base: str) -> None:
    first = RemoteCheckpoint(f"{base}/attempt-1")
    first.save_sync(b"older")
    first.save_sync(b"weights v2")
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    path = second.load_sync()
    record = second.restored
    assert path.read_bytes() == b"weights v2"

    fs, root = _fs(f"{base}/attempt-1")
    fs.rm(root, recursive=True)
    assert _keys(f"{base}/attempt-1") == set()

    assert second.load_sync() == path
    assert asyncio.run(second.load()) == path
    assert path.read_bytes() == b"weights v2"
    assert second.restored is record
    # A new object really would find nothing now: the repeat loads did not download.
    assert RemoteCheckpoint(f"{base}/attempt-3", checkpoint_src=f"{base}/attempt-1").load_sync() is None


def test_second_load_of_nothing_stays_nothing(base: str) -> None:
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    assert second.load_sync() is None
    first = RemoteCheckpoint(f"{base}/attempt-1")
    first.save_sync(b"late")
    first.save_sync(b"later")
    assert second.load_sync() is None  # answered once per object
    assert RemoteCheckpoint(f"{base}/attempt-3", checkpoint_src=f"{base}/attempt-1").read() == b"later"


def test_explicit_path_and_properties(base: str, tmp_path: Path) -> None:
    work = tmp_path / "restore-here"
    first = RemoteCheckpoint(f"{base}/a1/")  # trailing slash is not part of the prefix
    assert first.remote_destination == f"{base}/a1"
    first.save_sync(b"x")
    first.save_sync(b"y")
    second = RemoteCheckpoint(f"{base}/a2", checkpoint_src=f"{base}/a1", path=work)
    assert second.path == work and work.is_dir()
    assert second.load_sync() == work / "payload"
    assert (work / "payload").read_bytes() == b"y"
    assert sorted(os.listdir(work)) == ["payload"]  # no download leftovers
    assert "a2" in repr(second) and "a1" in repr(second)


@pytest.mark.parametrize("keep", [0, -1, True, 1.5, "2"])
def test_keep_must_be_a_positive_integer(tmp_path: Path, keep) -> None:
    with pytest.raises(ValueError, match="keep"):
        RemoteCheckpoint(f"file://{tmp_path}/a", keep=keep)


# --------------------------------------------------------------------------- 3. SIGKILL between payload and record

_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from restartable.remote import RemoteCheckpoint
    from restartable.store.objects import ObjectStore

    cp = RemoteCheckpoint(sys.argv[1], keep=None)
    cp.save_sync(b"committed 1")
    cp.save_sync(b"committed 2")

    original = ObjectStore.put_bytes

    def stalled(self, key, data, *, create=False):
        if key.startswith("saves/"):
            print("PAYLOAD-UPLOADED", flush=True)
            time.sleep(600)
        return original(self, key, data, create=create)

    ObjectStore.put_bytes = stalled
    cp.save_sync(b"never committed")
    print("SAVE-RETURNED", flush=True)
    """
)


def _wait_for_line(proc: subprocess.Popen, marker: str, timeout: float) -> None:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {marker!r} within {timeout} s; output so far: {seen}") from None
        if line is None:
            proc.wait(timeout=10)
            raise AssertionError(f"writer exited ({proc.returncode}) before {marker!r}: {seen}\n{proc.stderr.read()}")
        seen.append(line)
        if line.strip() == marker:
            return


def test_save_killed_between_payload_and_record(durable_base: str, tmp_path: Path) -> None:
    dest = f"{durable_base}/attempt-1"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, dest],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        cwd=tmp_path,
    )
    try:
        _wait_for_line(proc, "PAYLOAD-UPLOADED", timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Two committed saves; the third save's payload is there without a record.
    records = _records(dest)
    assert len(records) == 2
    orphans = {k for k in _payloads(dest) if _uid(k) not in _referenced(dest)}
    assert len(orphans) == 1
    (orphan,) = orphans
    assert _get(dest, orphan) == b"never committed"

    # The next attempt restores the newest committed save, with no warning.
    second = RemoteCheckpoint(f"{durable_base}/attempt-2", checkpoint_src=dest)
    assert second.has_loadable_save()
    assert second.read() == b"committed 2"
    assert second.restored.url == f"{dest}/{records[-1]}"

    # The same attempt, retried in place, saves again: the orphan is collected.
    retried = RemoteCheckpoint(dest)
    retried.save_sync(b"after the crash")
    payloads = _payloads(dest)
    assert orphan not in payloads
    assert {_uid(k) for k in payloads} <= _referenced(dest), "payloads/ holds an unreferenced payload"
    assert len(_records(dest)) == 2  # keep=2


# --------------------------------------------------------------------------- 4. damaged saves


def _three_saves(base: str) -> tuple[str, list[str]]:
    dest = f"{base}/attempt-1"
    cp = RemoteCheckpoint(dest, keep=None)
    for step in (1, 2, 3):
        cp.save_sync(f"save {step}".encode())
    records = _records(dest)
    assert len(records) == 3
    return dest, records


def _damage(dest: str, record: str, how: str, part: int = 0) -> str:
    """Damage one save; return the URL of the damaged object."""
    if how == "record-flipped-byte":
        raw = bytearray(_get(dest, record))
        middle = len(raw) // 2
        raw[middle] = ord("7") if raw[middle] != ord("7") else ord("8")
        _put(dest, record, bytes(raw))
        return f"{dest}/{record}"
    if how == "record-truncated":
        raw = _get(dest, record)
        _put(dest, record, raw[: len(raw) // 2])
        return f"{dest}/{record}"
    payload = _payload_of(dest, record, part)
    original = _get(dest, payload)
    assert original, "the payloads here are never empty"
    if how == "payload-garbage":
        garbage = bytes(b ^ 0x5A for b in original)  # same size, every byte different
        assert len(garbage) == len(original) and garbage != original
        _put(dest, payload, garbage)
    elif how == "payload-truncated":
        _put(dest, payload, original[:-1])
    elif how == "payload-deleted":
        fs, root = _fs(dest)
        fs.rm_file(f"{root}/{payload}")
    else:  # pragma: no cover
        raise AssertionError(how)
    return f"{dest}/{payload}"


# Default: every damage on memory://, and each one on s3 or on file.
@pytest.mark.parametrize(
    "base, how",
    _on_backends(
        ["payload-garbage", "payload-truncated", "payload-deleted", "record-flipped-byte", "record-truncated"],
        keep={
            ("s3", "payload-garbage"),
            ("s3", "payload-deleted"),
            ("s3", "record-truncated"),
            ("file", "payload-truncated"),
            ("file", "record-flipped-byte"),
        },
    ),
    indirect=["base"],
)
def test_damaged_newest_save_falls_back_to_the_previous_one(base: str, how: str) -> None:
    dest, records = _three_saves(base)
    damaged_url = _damage(dest, records[-1], how)

    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest)
    assert second.has_loadable_save()
    with pytest.warns(CheckpointFallbackWarning) as caught:
        path = second.load_sync()
    assert path.read_bytes() == b"save 2"
    assert second.restored.url == f"{dest}/{records[1]}"
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointFallbackWarning)]
    assert len(messages) == 1, messages
    assert damaged_url in messages[0]


def test_damaged_tail_of_a_large_payload_falls_back(base: str, tmp_path: Path) -> None:
    """A 17 MB payload (more than one 16 MB upload part): damage its last bytes."""
    dest = f"{base}/attempt-1"
    big = tmp_path / "big.ckpt"
    big.write_bytes(_random_bytes(17 << 20, 6))
    cp = RemoteCheckpoint(dest)
    cp.save_sync(b"small and valid")
    cp.save_sync(big)
    newest = _records(dest)[-1]
    objects_of_newest = sorted(k for k in _payloads(dest) if _uid(k) == _uid(newest))
    last = objects_of_newest[-1]
    original = _get(dest, last)
    damaged = bytearray(original)
    damaged[-100:] = bytes(b ^ 0xFF for b in damaged[-100:])
    _put(dest, last, bytes(damaged))

    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest)
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert second.read() == b"small and valid"
    assert any(f"{dest}/{last}" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert not [p for p in second.path.iterdir() if p.name != "payload"], "a rejected download was left behind"


def test_every_save_damaged_loads_nothing_with_warnings(base: str) -> None:
    dest, records = _three_saves(base)
    damaged = [
        _damage(dest, records[0], "record-flipped-byte"),
        _damage(dest, records[1], "payload-garbage"),
        _damage(dest, records[2], "payload-truncated"),
    ]
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest)
    assert second.has_loadable_save()  # records exist; only loading checks them
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert second.load_sync() is None
    assert second.restored is None
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointFallbackWarning)]
    for url in damaged:
        assert any(url in m for m in messages), (url, messages)
    assert "no valid checkpoint save" in messages[-1]
    assert not [p for p in second.path.iterdir()], "a rejected download was left behind"


# --------------------------------------------------------------------------- 5. attempt chains


def test_chain_skips_an_attempt_that_saved_nothing(base: str) -> None:
    a1, a2, a3 = (f"{base}/attempt-{i}" for i in (1, 2, 3))
    one = RemoteCheckpoint(a1)
    one.save_sync(b"attempt 1 step 1")
    one.save_sync(b"attempt 1 step 2")

    two = RemoteCheckpoint(a2, checkpoint_src=a1)
    assert two.read() == b"attempt 1 step 2"
    # Attempt 2 dies without saving; it left only its link.
    assert _keys(a2) == {"source.json"}

    three = RemoteCheckpoint(a3, checkpoint_src=a2)
    assert three.has_loadable_save()
    assert three.read() == b"attempt 1 step 2"
    assert three.restored.attempt == a1


def test_chain_falls_back_past_an_attempt_whose_only_save_is_damaged(base: str) -> None:
    a1, a2, a3 = (f"{base}/attempt-{i}" for i in (1, 2, 3))
    one = RemoteCheckpoint(a1)
    one.save_sync(b"attempt 1 step 1")
    one.save_sync(b"attempt 1 step 2")
    two = RemoteCheckpoint(a2, checkpoint_src=a1, keep=1)
    two.save_sync(b"attempt 2 step 1")
    two.save_sync(b"attempt 2 step 2")
    (only,) = _records(a2)
    assert RemoteCheckpoint(f"{base}/probe", checkpoint_src=a2).read() == b"attempt 2 step 2"
    damaged_url = _damage(a2, only, "payload-garbage")

    three = RemoteCheckpoint(a3, checkpoint_src=a2)
    with pytest.warns(CheckpointFallbackWarning) as caught:
        assert three.read() == b"attempt 1 step 2"
    assert three.restored.attempt == a1
    assert any(damaged_url in str(w.message) for w in caught)


@pytest.mark.timeout(60)
def test_a_cycle_of_links_terminates(base: str) -> None:
    a, b, c = f"{base}/A", f"{base}/B", f"{base}/C"
    # Links A -> B and B -> A and no saves: each link is written by a first
    # save, whose record and payload are then removed.
    for dest, src in ((a, b), (b, a)):
        RemoteCheckpoint(dest, checkpoint_src=src, keep=None).save_sync(b"removed")
        fs, root = _fs(dest)
        for key in _keys(dest) - {"source.json"}:
            fs.rm_file(f"{root}/{key}")
    assert _keys(a) == {"source.json"} and _keys(b) == {"source.json"}

    assert RemoteCheckpoint(c, checkpoint_src=a).has_loadable_save() is False
    assert RemoteCheckpoint(c, checkpoint_src=a).load_sync() is None
    assert RemoteCheckpoint(a, checkpoint_src=b).load_sync() is None

    writer = RemoteCheckpoint(b, checkpoint_src=a)
    writer.save_sync(b"b 1")
    writer.save_sync(b"b 2")
    assert RemoteCheckpoint(c, checkpoint_src=a).read() == b"b 2"
    assert RemoteCheckpoint(a, checkpoint_src=b).read() == b"b 2"


def test_damaged_link_stops_the_chain_with_a_warning(base: str) -> None:
    a1, a2, a3 = (f"{base}/attempt-{i}" for i in (1, 2, 3))
    one = RemoteCheckpoint(a1)
    one.save_sync(b"x")
    one.save_sync(b"y")
    RemoteCheckpoint(a2, checkpoint_src=a1)
    _put(a2, "source.json", b"{not a link")
    with pytest.warns(CheckpointFallbackWarning, match=re.escape(f"{a2}/source.json")):
        assert RemoteCheckpoint(a3, checkpoint_src=a2).load_sync() is None


# --------------------------------------------------------------------------- 6. retention


def test_keep_two_leaves_two_saves(base: str) -> None:
    dest = f"{base}/attempt-1"
    cp = RemoteCheckpoint(dest, keep=2)
    for step in range(1, 6):
        cp.save_sync(f"step {step}".encode())
    records = _records(dest)
    assert len(records) == 2
    assert [int(_RECORD.match(k).group(1)) for k in records] == [4, 5]
    payloads = _payloads(dest)
    assert len(payloads) == 2
    assert {_uid(k) for k in payloads} == {_uid(k) for k in records}
    assert _payload_bytes(dest, records[-1]) == b"step 5"
    assert _payload_bytes(dest, records[0]) == b"step 4"
    assert RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest).read() == b"step 5"


def test_keep_none_keeps_every_save(base: str) -> None:
    dest = f"{base}/attempt-1"
    cp = RemoteCheckpoint(dest, keep=None)
    cp.save_sync(b"step 1")
    cp.save_sync(b"step 2")
    records_early, payloads_early = set(_records(dest)), _payloads(dest)
    for step in range(3, 6):
        cp.save_sync(f"step {step}".encode())
    records, payloads = _records(dest), _payloads(dest)
    assert len(records) == 5
    assert [int(_RECORD.match(k).group(1)) for k in records] == [1, 2, 3, 4, 5]
    assert records_early <= set(records)
    # Nothing was retired: every object present after save 2 is still there,
    # and each later save added its own payload.
    assert payloads_early <= payloads and len(payloads) == len(payloads_early) + 3
    assert RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest).read() == b"step 5"


# --------------------------------------------------------------------------- 7. errors

_DEAD_ENDPOINT = {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}


@pytest.fixture
def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retry delays slept by the object store (not actually slept)."""
    sleeps: list[float] = []
    monkeypatch.setattr(objects, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps


def test_unreachable_endpoint_on_save(s3_server: str, recorded_sleeps: list[float]) -> None:
    dest = "s3://some-bucket/run/attempt-1"
    cp = RemoteCheckpoint(
        dest, storage_options=_DEAD_ENDPOINT, retry=RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02)
    )
    with pytest.raises(CheckpointRemoteError) as info:
        cp.save_sync(b"payload")
    assert info.value.url.startswith(dest + "/")
    assert info.value.url in str(info.value)
    assert isinstance(info.value.__cause__, Exception)
    # Bounded: 3 attempts, so 2 pauses, each within the policy.
    assert len(recorded_sleeps) == 2
    assert all(0 <= d <= 0.02 for d in recorded_sleeps)


def test_unreachable_source_on_load(s3_server: str, tmp_path: Path, recorded_sleeps: list[float]) -> None:
    src = "s3://some-bucket/run/attempt-1"
    cp = RemoteCheckpoint(
        f"file://{tmp_path}/attempt-2",
        checkpoint_src=src,
        storage_options=_DEAD_ENDPOINT,
        retry=RetryPolicy(attempts=3, first_delay=0.01),
    )
    with pytest.raises(CheckpointRemoteError) as info:
        cp.load_sync()
    assert info.value.url.startswith(src)
    assert info.value.url in str(info.value)
    assert len(recorded_sleeps) == 2
    assert cp.prev_exists() is True  # flyte's meaning: a source was given (no I/O)
    with pytest.raises(CheckpointRemoteError):
        cp.has_loadable_save()


def test_missing_bucket_on_save(s3_server: str) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    dest = f"s3://{bucket}/run/attempt-1"
    cp = RemoteCheckpoint(dest)
    with pytest.raises(CheckpointRemoteError) as info:
        cp.save_sync(b"payload")
    assert info.value.url.startswith(dest)
    assert info.value.url in str(info.value)
    assert "bucket" in str(info.value).lower()
    assert isinstance(info.value.__cause__, Exception)


def test_missing_bucket_on_load(s3_server: str, tmp_path: Path) -> None:
    """A typo in the source bucket must not read as "nothing saved yet" (a silent restart from scratch)."""
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    src = f"s3://{bucket}/run/attempt-1"
    cp = RemoteCheckpoint(f"file://{tmp_path}/attempt-2", checkpoint_src=src)
    with pytest.raises(CheckpointRemoteError) as info:
        cp.load_sync()
    assert info.value.url.startswith(src)
    assert info.value.url in str(info.value)
    with pytest.raises(CheckpointRemoteError) as info:
        cp.has_loadable_save()
    assert info.value.url.startswith(src)


# Default: both types on memory://, one on s3 and the other on file (refused before anything is uploaded).
@pytest.mark.parametrize(
    "base, as_type", _on_backends([str, Path], keep={("s3", "str"), ("file", "Path")}), indirect=["base"]
)
def test_saving_a_missing_path(base: str, tmp_path: Path, as_type) -> None:
    missing = tmp_path / "no-such-checkpoint.pt"
    cp = RemoteCheckpoint(f"{base}/attempt-1")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        cp.save_sync(as_type(missing))
    assert _keys(f"{base}/attempt-1") == set()


# Default: every value on memory://, one each on s3 and file (refused before anything is uploaded).
@pytest.mark.parametrize(
    "base, value",
    _on_backends([42, 4.2, None, ["a"], {"a": b"x"}], keep={("s3", "None"), ("file", "42")}),
    indirect=["base"],
)
def test_saving_a_non_path_non_bytes(base: str, value) -> None:
    cp = RemoteCheckpoint(f"{base}/attempt-1")
    with pytest.raises(TypeError):
        cp.save_sync(value)
    with pytest.raises(TypeError):
        asyncio.run(cp.save(value))
    with pytest.raises(TypeError):
        cp.write("a str is not bytes")
    assert _keys(f"{base}/attempt-1") == set()


def _in_child_as_nobody(action) -> dict:
    """Run ``action`` in a forked child with uid/gid 65534; return what it reports."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                action()
                result = {"raised": None}
            except BaseException as exc:  # reported to the parent
                result = {"raised": type(exc).__name__, "message": str(exc), "url": getattr(exc, "url", None)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        ready, _, _ = select.select([fh], [], [], 60)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child running as nobody hung")
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_read_only_local_destination(tmp_path: Path) -> None:
    if os.geteuid() == 0 and not hasattr(os, "fork"):  # pragma: no cover
        pytest.skip("running as root without fork: permissions are not enforced")
    if os.geteuid() == 0:
        # Root ignores permission bits: try as "nobody" in a forked child, in
        # a directory it can traverse but not write.
        top = Path(tempfile.mkdtemp(prefix="restartable-ro-"))
        try:
            os.chmod(top, 0o755)
            readonly = top / "readonly"
            readonly.mkdir()
            os.chmod(readonly, 0o555)
            dest = f"file://{readonly}/attempt-1"
            cp = RemoteCheckpoint(dest)  # created (and its imports done) before the fork
            result = _in_child_as_nobody(lambda: cp.save_sync(b"payload"))
            assert os.listdir(readonly) == []
        finally:
            shutil.rmtree(top, ignore_errors=True)
    else:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        os.chmod(readonly, 0o500)
        dest = f"file://{readonly}/attempt-1"
        try:
            try:
                RemoteCheckpoint(dest).save_sync(b"payload")
            except BaseException as exc:
                result = {"raised": type(exc).__name__, "message": str(exc), "url": getattr(exc, "url", None)}
            else:
                result = {"raised": None}
            assert os.listdir(readonly) == []
        finally:
            os.chmod(readonly, 0o700)
    assert result["raised"] == "CheckpointRemoteError", result
    assert result["url"].startswith(dest + "/")
    assert result["url"] in result["message"]


# --------------------------------------------------------------------------- 8. unsafe directories


def _unsafe_tree(root: Path, what: str) -> str:
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(b"w" * 100)
    if what == "fifo":
        os.mkfifo(root / "sub" / "pipe")
        return "sub/pipe"
    if what == "relative-link-out":
        (root.parent / "secret.txt").write_text("outside")
        (root / "sub" / "escape").symlink_to("../../secret.txt")
        return "sub/escape"
    (root / "abs-link").symlink_to("/etc/hostname")
    return "abs-link"


# Default: every kind on memory://, and each one on s3 or on file.
@pytest.mark.parametrize(
    "base, what",
    _on_backends(
        ["fifo", "relative-link-out", "absolute-link"],
        keep={("s3", "relative-link-out"), ("file", "fifo"), ("file", "absolute-link")},
    ),
    indirect=["base"],
)
def test_unsafe_directory_is_refused_at_save(base: str, tmp_path: Path, what: str) -> None:
    if what == "fifo" and not hasattr(os, "mkfifo"):  # pragma: no cover
        pytest.skip("no FIFOs here")
    source = tmp_path / "model"
    member = _unsafe_tree(source, what)
    dest = f"{base}/attempt-1"
    cp = RemoteCheckpoint(dest)
    cp.save_sync(b"older 1")
    cp.save_sync(b"older 2")
    before = _keys(dest)

    with pytest.raises(CheckpointUnsafeArchiveError) as info:
        cp.save_sync(source)
    assert info.value.member == member
    assert str(source) in str(info.value)

    # Nothing published: the same objects as before, and no spool left locally.
    assert _keys(dest) == before
    assert not [p.name for p in cp.path.iterdir() if p.name.startswith(".upload-")]
    assert RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=dest).read() == b"older 2"


# Default: both kinds on memory://, one on s3 and the other on file.
@pytest.mark.parametrize(
    "base, what",
    _on_backends(["fifo", "relative-link-out"], keep={("s3", "fifo"), ("file", "relative-link-out")}),
    indirect=["base"],
)
def test_unsafe_directory_as_first_save_publishes_nothing(base: str, tmp_path: Path, what: str) -> None:
    source = tmp_path / "model"
    _unsafe_tree(source, what)
    cp = RemoteCheckpoint(f"{base}/attempt-1")
    with pytest.raises(CheckpointUnsafeArchiveError):
        asyncio.run(cp.save(source))
    assert _keys(f"{base}/attempt-1") == set()
    second = RemoteCheckpoint(f"{base}/attempt-2", checkpoint_src=f"{base}/attempt-1")
    assert second.has_loadable_save() is False
