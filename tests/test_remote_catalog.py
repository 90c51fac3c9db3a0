"""Catalogs on object stores: ``Checkpoint(path="s3://bucket/prefix")``.

Rows on an object store are uploaded payloads first and ``manifest.json``
last (create-only); a row is retired by deleting its manifest first; one
writer per prefix holds the ``.lock`` lease (see
:mod:`restartable.store._fsspec`). These tests run against a real
S3-protocol server (moto, ``s3_bucket``) and fsspec's ``memory://``, with
real processes killed with SIGKILL, and check what is left on the store
object by object.

Subprocess writers get ``RESTARTABLE_LEASE_SECONDS=600``: a resumed writer
that waited for the lease of a killed one instead of taking it over at once
(same host, dead process) would run into the subprocess timeout.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from restartable import (
    Checkpoint,
    CheckpointCleanupWarning,
    CheckpointCorruptError,
    CheckpointFallbackWarning,
    CheckpointLockedError,
)
from restartable.cli import main as cli_main
from restartable.store import RowWriter, Snapshot, objects, scan_rows
from restartable.store import _fsspec as object_rows
from restartable.store._layout import LOCK_NAME
from restartable.store.manifest import MANIFEST_NAME, load_manifest
from support import assert_same, tensor_bytes
from warm_python import XARRAY_WARMUP, WarmProcess, WarmPython

# This module damages and inspects named .npy payload files (see conftest.one_file_per_array).
pytestmark = pytest.mark.usefixtures("one_file_per_array")

TESTS_DIR = Path(__file__).resolve().parent
CHILD_TIMEOUT = 120  # a hang guard, never a timing assertion
LONG_LEASE = "600"  # seconds: waiting for a lease would hit CHILD_TIMEOUT

# What the children import (the writers, the round-trip reader that imports
# this module, the workflow harness's child), imported once by a warm server.
# The server's environment has RESTARTABLE_LEASE_SECONDS=LONG_LEASE, read at
# import by restartable.store._fsspec: every child here runs with it.
_PRELOAD = (
    f"""
import sys
sys.path.insert(0, {str(TESTS_DIR)!r})
import json, numpy, torch, s3fs, fsspec, xarray, zarr
import restartable, restartable.cli, restartable.store.objects, restartable.components, restartable.workflows
import test_remote_catalog
"""
    + XARRAY_WARMUP
)


@pytest.fixture(scope="module")
def warm(s3_server: str) -> Any:
    """A warm interpreter that forks this module's children (see tests/warm_python.py)."""
    env = dict(os.environ, RESTARTABLE_LEASE_SECONDS=LONG_LEASE, RESTARTABLE_PACK_BELOW="0")
    with WarmPython(_PRELOAD, env, TESTS_DIR) as server:
        yield server


def _run_child(warm: WarmPython, code: str, *args: str) -> tuple[int, str]:
    """Run ``code`` in a warm child to its end; its exit code and output (stdout and stderr merged)."""
    proc = warm.popen([sys.executable, "-c", code, *args], env=dict(os.environ))
    watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)  # a hang guard
    watchdog.start()
    try:
        out = proc.stdout.read()
        return proc.wait(CHILD_TIMEOUT), out
    finally:
        watchdog.cancel()
        proc.stdout.close()


# --------------------------------------------------------------------------- state


@dataclass
class RemoteState:
    values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int32))
    tensor: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    step: int = 0
    tag: str = ""


def state_at(step: int) -> RemoteState:
    """The state after ``step`` steps: every field differs from step to step."""
    return RemoteState(
        values=np.linspace(-1.0, 1.0, 257) * step + 1.0 / 3.0,
        counts=np.arange(24, dtype=np.int32).reshape(4, 6) * step - 7,
        tensor=torch.arange(10, dtype=torch.float32) / 7.0 * step,
        step=step,
        tag=f"step-{step}",
    )


def set_state(proxy: Any, step: int) -> None:
    target = state_at(step)
    proxy.values, proxy.counts, proxy.tensor = target.values, target.counts, target.tensor
    proxy.step, proxy.tag = target.step, target.tag


def state_record(state: Any) -> dict[str, Any]:
    """A JSON-able, bit-exact description of a RemoteState (for other processes)."""
    return {
        "values": [state.values.dtype.str, list(state.values.shape), state.values.tobytes().hex()],
        "counts": [state.counts.dtype.str, list(state.counts.shape), state.counts.tobytes().hex()],
        "tensor": [str(state.tensor.dtype), list(state.tensor.shape), tensor_bytes(state.tensor).hex()],
        "step": state.step,
        "tag": state.tag,
    }


def in_fresh_context(func: Any, *args: Any) -> Any:
    """Run ``func`` with restartable's context variables unset."""
    return contextvars.Context().run(func, *args)


# --------------------------------------------------------------------------- object-store helpers


def _fs(url: str, *, shared: bool = False) -> tuple[Any, str]:
    """The filesystem the test looks at the store through.

    By default not the instance fsspec caches for the library in this
    process: the test's listings must neither fill nor refresh the library's
    caches. ``shared=True`` gives that instance, for damage done "in this
    process" (its writes refresh the library's listings cache).
    """
    import fsspec

    if shared:
        fs, root = fsspec.core.url_to_fs(url)
        return fs, root.rstrip("/")
    protocol = url.split("://", 1)[0]
    if protocol not in _OWN_FS:
        options: dict[str, Any] = {"skip_instance_cache": True}
        if protocol == "s3":
            options["use_listings_cache"] = False
        _OWN_FS[protocol] = fsspec.filesystem(protocol, **options)
    fs = _OWN_FS[protocol]
    return fs, fs._strip_protocol(url).rstrip("/")


_OWN_FS: dict[str, Any] = {}


def objects_under(url: str) -> dict[str, int]:
    """Every object under ``url`` as key (relative to ``url``) -> size, listed fresh."""
    fs, root = _fs(url)
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    out = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        path = fs._strip_protocol(path).rstrip("/")
        assert path.startswith(root + "/"), (path, root)
        out[path[len(root) + 1 :]] = int(info["size"])
    return out


def row_objects(url: str) -> dict[str, set[str]]:
    """Objects under ``url/commits/`` grouped by row: row name -> file names."""
    rows: dict[str, set[str]] = {}
    for key in objects_under(url):
        parts = key.split("/")
        if parts[0] == "commits":
            assert len(parts) == 3, f"unexpected object {key}"
            rows.setdefault(parts[1], set()).add(parts[2])
    return rows


def orphans(url: str) -> dict[str, set[str]]:
    """Rows with objects but no manifest: leftovers of interrupted commits or retirements."""
    return {name: files for name, files in row_objects(url).items() if MANIFEST_NAME not in files}


def read_object(url: str) -> bytes:
    fs, path = _fs(url)
    return fs.cat_file(path)


def write_object(url: str, data: bytes) -> None:
    fs, path = _fs(url, shared=True)
    fs.pipe_file(path, data)


def delete_object(url: str) -> None:
    fs, path = _fs(url, shared=True)
    fs.rm(path)


def garble(url: str) -> None:
    """Overwrite the last bytes of an object with garbage of the same size.

    A silent bit-rot: the size and the ``.npy`` header stay valid, so only
    the checksum can tell.
    """
    data = bytearray(read_object(url))
    data[-16:] = bytes(b ^ 0x5A for b in data[-16:])
    write_object(url, bytes(data))


def assert_whole_rows_only(url: str, commit_ids: list[str]) -> None:
    """The store holds exactly these rows, each with its manifest and exactly the files it lists."""
    rows = row_objects(url)
    assert sorted(rows) == sorted(commit_ids), f"rows on the store {sorted(rows)} != catalog {sorted(commit_ids)}"
    for name, files in rows.items():
        body = load_manifest(read_object(f"{url}/commits/{name}/{MANIFEST_NAME}"))
        assert files == {MANIFEST_NAME, *(entry["name"] for entry in body["files"])}, name


@pytest.fixture(params=["s3", "memory"])
def catalog_url(request: pytest.FixtureRequest) -> Any:
    """A fresh catalog prefix on S3 (moto) or on fsspec's in-process memory store."""
    if request.param == "s3":
        yield f"{request.getfixturevalue('s3_bucket')}/runs/forecast"
        return
    pytest.importorskip("fsspec")
    root = f"memory://{uuid.uuid4().hex}"
    yield f"{root}/runs/forecast"
    fs, path = _fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- 1. round trip


def test_catalog_round_trip_on_an_object_store(catalog_url: str, request: pytest.FixtureRequest) -> None:
    url = catalog_url
    checkpoint = Checkpoint("roundtrip", path=url, mode="append", history_size=3, level=2)
    assert checkpoint.remote and checkpoint.rank_path == url
    assert checkpoint.catalog == ()
    with checkpoint as session:
        assert not session.exists
        state = session.bind(RemoteState())
        for step in range(1, 7):
            set_state(state, step)
            entry = session.write(lead_time=np.timedelta64(6 * step, "h"), tag=f"row-{step}")
            assert entry is not None and entry.lead_time == np.timedelta64(6 * step, "h")
            assert len(checkpoint.catalog) == min(step, 3)
        # The writer holds the lease while inside the session.
        assert LOCK_NAME in objects_under(url)
    assert LOCK_NAME not in objects_under(url), "the lease outlived the session"

    catalog = checkpoint.catalog
    assert [e.lead_time for e in catalog] == [np.timedelta64(h, "h") for h in (24, 30, 36)]
    assert [e.sequence for e in catalog] == [4, 5, 6]
    assert [e.write_count for e in catalog] == [4, 5, 6]
    assert [e.metadata["tag"] for e in catalog] == ["row-4", "row-5", "row-6"]
    sid = f"{RemoteState.__module__}.{RemoteState.__qualname__}"
    assert all(e.state_ids == (sid,) for e in catalog)
    assert all(str(e.path) == f"{url}/commits/{e.commit_id}" for e in catalog)
    assert_whole_rows_only(url, [e.commit_id for e in catalog])

    # select(-1) restores the newest row bit for bit; select(0) the oldest kept one.
    for index, step in ((-1, 6), (0, 4)):
        restored = RemoteState()
        selected = checkpoint.select(index)
        assert selected.commit_id == catalog[index].commit_id
        proxy = selected.bind(restored)
        assert proxy.checkpoint_state_loaded
        assert_same(restored, state_at(step))

    # A new Checkpoint object sees the same catalog (and, for s3, a fresh process).
    if url.startswith("memory://"):
        other = Checkpoint("roundtrip", path=url, mode="append", history_size=3)
        assert [e.commit_id for e in other.catalog] == [e.commit_id for e in catalog]
        restored = RemoteState()
        other.select(-1).bind(restored)
        assert_same(restored, state_at(6))
        return
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        tests = importlib.import_module({RemoteState.__module__!r})
        from restartable import Checkpoint
        checkpoint = Checkpoint("roundtrip", path={url!r}, mode="append", history_size=3)
        restored = tests.RemoteState()
        session = checkpoint.select(-1)
        session.bind(restored)
        print(json.dumps({{
            "catalog": [[e.commit_id, str(e.lead_time), e.write_count, e.metadata["tag"]] for e in checkpoint.catalog],
            "session": session.commit_id,
            "state": tests.state_record(restored),
        }}))
        """
    )
    rc, out = _run_child(request.getfixturevalue("warm"), code)
    assert rc == 0, out
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["catalog"] == [[e.commit_id, str(e.lead_time), e.write_count, e.metadata["tag"]] for e in catalog]
    assert seen["session"] == catalog[-1].commit_id
    assert seen["state"] == state_record(state_at(6))


# --------------------------------------------------------------------------- 2. kill and resume across processes

STEP_SOURCE = r'''
import numpy as np


def initial():
    return np.linspace(0.0, 1.0, 64)


def advance(x, step):
    """One deterministic step of a toy model (float64, bit-reproducible on one machine)."""
    return np.sin(1.3 * x + step) + 0.25 * np.cos(x * step)
'''

LOOP_CHILD = (
    STEP_SOURCE
    + r"""
import json, sys
from dataclasses import dataclass, field

from restartable import Checkpoint


@dataclass
class LoopState:
    step: int = 0
    x: np.ndarray = field(default_factory=initial)


def emit(record):
    print(json.dumps(record), flush=True)


url, total = sys.argv[1], int(sys.argv[2])  # total 0: run until killed
checkpoint = Checkpoint("loop", path=url, mode="append", history_size=3, flush_interval=1, level=2)
with checkpoint as session:
    state = session.bind(LoopState())
    lead = session.lead_time
    emit({"start": state.step, "commit_id": session.commit_id, "lead_time": None if lead is None else int(lead),
          "x": state.x.tobytes().hex()})
    while total == 0 or state.step < total:
        state.x = advance(state.x, state.step)
        state.step += 1
        session.write(lead_time=state.step)
        emit({"committed": state.step})
emit({"final": state.step, "x": state.x.tobytes().hex()})
"""
)


def _reference(steps: int) -> np.ndarray:
    namespace: dict[str, Any] = {}
    exec(STEP_SOURCE, namespace)
    x = namespace["initial"]()
    for step in range(steps):
        x = namespace["advance"](x, step)
    return x


def _start_until(warm: WarmPython, code: str, argv: list[str], ready: Any) -> tuple[WarmProcess, list[dict[str, Any]]]:
    """Start a warm child and read its JSON lines until ``ready(lines)``; it is left running.

    Its stderr comes merged into its stdout: lines that are not JSON are kept for messages.
    """
    proc = warm.popen([sys.executable, "-c", code, *argv], env=dict(os.environ), stdin=subprocess.PIPE)
    watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)  # a hang guard
    watchdog.start()
    lines: list[dict[str, Any]] = []
    other: list[str] = []
    try:
        while not ready(lines):
            line = proc.stdout.readline()
            if not line:
                proc.wait()
                raise AssertionError(f"child ended early (rc {proc.returncode}):\n{lines}\n{''.join(other)}")
            if line.startswith("{"):
                lines.append(json.loads(line))
            else:
                other.append(line)
    except BaseException:
        proc.kill()
        _finish(proc)
        raise
    finally:
        watchdog.cancel()
    return proc, lines


def _finish(proc: WarmProcess, stdin: str = "") -> str:
    """Write ``stdin`` to the child, read the rest of its output and wait for its end (reaped by the server)."""
    if proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
            proc.stdin.close()
    out = proc.stdout.read()
    proc.stdout.close()
    proc.wait(CHILD_TIMEOUT)
    return out


def _sigkill(proc: WarmProcess) -> None:
    """SIGKILL the child and wait until it is reaped (a zombie's pid would still look alive to the lease)."""
    os.kill(proc.pid, signal.SIGKILL)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def test_catalog_of_a_killed_process_is_resumed_by_another(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, warm: WarmPython
) -> None:
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", LONG_LEASE)
    url = f"{s3_bucket}/loop"
    min_rows = 4
    proc, lines = _start_until(
        warm, LOOP_CHILD, [url, "0"], lambda lines: sum("committed" in r for r in lines) >= min_rows
    )
    _sigkill(proc)  # at whatever point of its next commit it is
    assert lines[0]["start"] == 0 and lines[0]["commit_id"] is None
    reported = max(r["committed"] for r in lines if "committed" in r)

    # Only whole rows: the newest is at least the last commit the child reported.
    catalog = Checkpoint("loop", path=url, mode="append", history_size=3).catalog
    leads = [e.lead_time for e in catalog]
    newest = catalog[-1]
    assert newest.lead_time >= reported
    # history_size=3; a kill between publishing a row and retiring the oldest leaves one more.
    assert len(leads) in (3, 4) and leads == list(range(newest.lead_time - len(leads) + 1, newest.lead_time + 1))
    assert newest.write_count == newest.lead_time

    # A second process resumes from the newest row with that row's state and finishes the run.
    total = newest.lead_time + 4
    code, stdout = _run_child(warm, LOOP_CHILD, url, str(total))
    assert code == 0, stdout
    out = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    start, final = out[0], out[-1]
    assert start["commit_id"] == newest.commit_id
    assert start["start"] == start["lead_time"] == newest.lead_time
    assert start["x"] == _reference(newest.lead_time).tobytes().hex()
    assert [r["committed"] for r in out if "committed" in r] == list(range(newest.lead_time + 1, total + 1))
    # Bit for bit what an uninterrupted run computes.
    assert final == {"final": total, "x": _reference(total).tobytes().hex()}

    catalog = Checkpoint("loop", path=url, mode="append", history_size=3).catalog
    assert [e.lead_time for e in catalog] == [total - 2, total - 1, total]
    assert_whole_rows_only(url, [e.commit_id for e in catalog])
    assert LOCK_NAME not in objects_under(url)


# --------------------------------------------------------------------------- 3. kill mid-commit

HANG_CHILD = r'''
import json, os, sys, time
from dataclasses import dataclass, field

import numpy as np

from restartable import Checkpoint
from restartable.store.objects import ObjectStore

url, stage, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
last = int(sys.argv[4]) if len(sys.argv) > 4 else 99
done = [0]  # commits returned so far


@dataclass
class Blob:
    a: np.ndarray = field(default_factory=lambda: np.zeros(4096))
    b: np.ndarray = field(default_factory=lambda: np.zeros(16, dtype=np.int64))


def hang(what):
    """Stop here until the parent says "go" (or SIGKILLs us)."""
    print(json.dumps({"hang": what}), flush=True)
    if sys.stdin.readline().strip() != "go":
        time.sleep(600)
        os._exit(7)


original_put, original_delete = ObjectStore.put_bytes, ObjectStore.delete


def put_bytes(self, key, data, *, create=False):
    if done[0] == hang_at - 1 and key.startswith("commits/"):
        if stage == "manifest" and key.endswith("/manifest.json"):
            hang(key)  # every payload of the row is uploaded, its manifest is not
        if stage == "payload" and key.endswith("/p000001.npy"):
            hang(key)  # the first payload is uploaded, the second is not
    return original_put(self, key, data, create=create)


def delete(self, keys):
    if stage == "retire" and done[0] == hang_at - 1 and keys and keys[0].endswith(".npy"):
        hang(keys[0])  # the oldest row's manifest is deleted, its payloads are not
    return original_delete(self, keys)


ObjectStore.put_bytes, ObjectStore.delete = put_bytes, delete

with Checkpoint("hang", path=url, mode="append", history_size=2) as session:
    state = session.bind(Blob())
    for step in range(1, last + 1):
        state.a = np.full(4096, float(step))
        state.b = np.arange(16, dtype=np.int64) * step
        session.write(lead_time=step)
        done[0] = step
        print(json.dumps({"committed": step}), flush=True)
'''


@pytest.mark.parametrize(
    "stage, whole_rows",
    [("manifest", [1, 2]), ("payload", [1, 2]), ("retire", [2, 3])],
    ids=["before-manifest", "between-payloads", "mid-retirement"],
)
def test_kill_mid_commit_leaves_whole_rows_and_the_next_writer_removes_leftovers(
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stage: str,
    whole_rows: list[int],
    warm: WarmPython,
) -> None:
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", LONG_LEASE)
    url = f"{s3_bucket}/hang"
    proc, lines = _start_until(warm, HANG_CHILD, [url, stage, "3"], lambda lines: any("hang" in r for r in lines))
    _sigkill(proc)
    assert [r["committed"] for r in lines if "committed" in r] == [1, 2]

    catalog = Checkpoint("hang", path=url, mode="append", history_size=2).catalog
    assert [e.lead_time for e in catalog] == whole_rows
    # The interrupted commit (or retirement) left objects of a row without manifest ...
    left = orphans(url)
    assert len(left) == 1, left
    ((left_row, left_files),) = left.items()
    assert left_files and all(name.endswith(".npy") for name in left_files)
    if stage == "payload":
        assert left_files == {"p000000.npy"}
    if stage == "retire":
        assert left_row == min(row_objects(url))  # the oldest row, retired half-way
    # ... which is not a row: readers, ls and verify see only the whole ones.
    code, out, err = cli(capsys, "verify", url, "--json")
    assert code == 0, err
    assert json.loads(out)["checked"] == len(whole_rows) and json.loads(out)["damaged"] == 0
    assert LOCK_NAME in objects_under(url)  # the killed writer's lease is left behind

    # The next writer (same host, the holder is dead) takes the lease at once,
    # removes the leftovers, and resumes from the last whole row.
    checkpoint = Checkpoint("hang", path=url, mode="append", history_size=2)
    with contextlib.ExitStack() as stack:
        if stage != "retire":  # an interrupted commit is reported; a retirement cut short is not
            stack.enter_context(pytest.warns(CheckpointCleanupWarning, match="incomplete commit"))
        session = stack.enter_context(checkpoint)
        assert orphans(url) == {}, "the next writer did not remove the manifest-less uploads"
        assert session.lead_time == whole_rows[-1]
        assert session.write_count == whole_rows[-1]
        session.write(lead_time=whole_rows[-1] + 1, extra=np.arange(300.0))
    catalog = checkpoint.catalog
    assert [e.lead_time for e in catalog] == [whole_rows[-1], whole_rows[-1] + 1]
    assert left_row not in {e.commit_id for e in catalog}
    assert catalog[-1].sequence > int(left_row.split("-")[0])  # never reuses the sequence of the leftover
    assert_whole_rows_only(url, [e.commit_id for e in catalog])
    assert LOCK_NAME not in objects_under(url)


def test_rows_committed_after_a_reader_saw_the_commit_in_progress_are_seen(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, warm: WarmPython
) -> None:
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", LONG_LEASE)
    url = f"{s3_bucket}/stale"
    proc, _lines = _start_until(
        warm, HANG_CHILD, [url, "manifest", "2", "2"], lambda lines: any("hang" in r for r in lines)
    )
    try:
        # Row 1 is whole; row 2's payloads are uploaded, its manifest is not: a reader sees row 1.
        assert [e.lead_time for e in Checkpoint("hang", path=url, mode="append").catalog] == [1]
    finally:
        out = _finish(proc, "go\n")  # row 2 is committed, the writer exits
    assert proc.returncode == 0, out
    assert '{"committed": 2}' in out
    assert sorted(row_objects(url)) and all(MANIFEST_NAME in files for files in row_objects(url).values())
    # Row 2 is committed now: every reader, in this process too, must see it.
    assert [e.lead_time for e in Checkpoint("hang", path=url, mode="append").catalog] == [1, 2]
    with Checkpoint("hang", path=url, mode="append", history_size=2) as session:
        assert session.lead_time == 2


# --------------------------------------------------------------------------- 4. damage


def _write_rows(url: str, steps: range, **kwargs: Any) -> Checkpoint:
    kwargs.setdefault("mode", "append")
    checkpoint = Checkpoint("rows", path=url, **kwargs)
    with checkpoint as session:
        state = session.bind(RemoteState())
        for step in steps:
            set_state(state, step)
            session.write(lead_time=step)
    return checkpoint


def test_damaged_rows_on_the_object_store(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{s3_bucket}/damage"
    catalog = _write_rows(url, range(1, 4)).catalog
    assert [e.lead_time for e in catalog] == [1, 2, 3]
    newest = catalog[-1]
    damaged_url = f"{url}/commits/{newest.commit_id}/p000000.npy"
    garble(damaged_url)

    # The listing cannot tell (same size); restoring can: fall back to the previous row.
    with pytest.warns(CheckpointFallbackWarning, match=newest.commit_id):
        with Checkpoint("rows", path=url, mode="append") as session:
            assert session.commit_id == catalog[-2].commit_id
            assert session.lead_time == 2
            restored = RemoteState()
            session.bind(restored)
            assert_same(restored, state_at(2))

    with pytest.raises(CheckpointCorruptError) as info:
        Checkpoint("rows", path=url, mode="append").select(-1)
    assert damaged_url in str(info.value)
    assert info.value.file == damaged_url

    code, out, err = cli(capsys, "verify", url)
    assert code == 1, (out, err)
    assert f"DAMAGED {url}/commits/{newest.commit_id}" in out
    assert damaged_url in out
    assert "3 row(s) checked, 1 damaged" in out
    code, out, _ = cli(capsys, "verify", url, "--json")
    report = json.loads(out)
    assert code == 1 and report["damaged"] == 1
    bad = [row for row in report["rows"] if not row["ok"]]
    assert [row["row"] for row in bad] == [f"{url}/commits/{newest.commit_id}"]
    assert [p["file"] for p in bad[0]["problems"]] == [damaged_url]

    # A row whose manifest is gone is no row at all (retired, as far as readers know).
    delete_object(f"{url}/commits/{catalog[0].commit_id}/{MANIFEST_NAME}")
    remaining = Checkpoint("rows", path=url, mode="append").catalog
    assert [e.commit_id for e in remaining] == [e.commit_id for e in catalog[1:]]
    code, out, _ = cli(capsys, "ls", url, "--json")
    assert code == 0
    assert [r["commit_id"] for r in json.loads(out)[0]["rows"]] == [e.commit_id for e in catalog[1:]]


def test_truncated_payload_is_skipped_when_the_catalog_is_read(
    s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{s3_bucket}/truncated"
    catalog = _write_rows(url, range(1, 4)).catalog
    target = f"{url}/commits/{catalog[1].commit_id}/p000000.npy"
    write_object(target, read_object(target)[:-8])
    with pytest.warns(CheckpointFallbackWarning, match=catalog[1].commit_id):
        leads = [e.lead_time for e in Checkpoint("rows", path=url, mode="append").catalog]
    assert leads == [1, 3]
    code, out, _ = cli(capsys, "ls", url, "--json")
    assert code == 1  # a damaged row is listed: exit 1, as documented
    listed = json.loads(out)[0]
    assert [r["lead_time"] for r in listed["rows"]] == [1, 3]
    assert [d["file"] for d in listed["damaged"]] == [target]


# --------------------------------------------------------------------------- 5. one writer per prefix


def _lease_record(url: str) -> dict[str, Any]:
    return json.loads(read_object(f"{url}/{LOCK_NAME}"))


def test_second_writer_waits_out_its_lease_wait_then_is_refused(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(object_rows, "LEASE_SECONDS", 1.0)
    # Longer than a lease period (the holder's heartbeat must renew meanwhile), shorter than the default 6 s.
    monkeypatch.setenv("RESTARTABLE_LEASE_WAIT", "1.5")
    url = f"{s3_bucket}/locked"
    first = Checkpoint("locked", path=url, mode="append")
    second = Checkpoint("locked", path=url, mode="append")
    with first as session:
        session.write(lead_time=1)
        holder = _lease_record(url)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        # The holder is alive (this very process): no takeover, a refusal naming the URL.
        # The second writer waits out its lease period in a thread while `restartable
        # push` waits out its own in this one: two refusals for the price of one wait.
        entered: list[bool] = []
        refused: list[BaseException] = []

        def enter_second() -> None:
            try:
                with second:
                    entered.append(True)  # pragma: no cover - a failure, reported below
            except CheckpointLockedError as exc:
                refused.append(exc)

        waiter = threading.Thread(target=enter_second)
        waiter.start()
        # `restartable push` into a prefix with a running writer: exit 3, nothing copied.
        local = tmp_path / "local"
        _write_rows(str(local), range(10, 12))
        code, out, err = cli(capsys, "push", str(local), url)
        waiter.join(CHILD_TIMEOUT)
        assert not waiter.is_alive()
        assert not entered, "a second writer entered while the first holds the lease"
        assert len(refused) == 1 and url in str(refused[0])
        # The heartbeat kept the first lease alive through the waits; the refusals left it alone.
        assert _lease_record(url)["owner"] == holder["owner"]
        assert _lease_record(url)["expires"] > holder["expires"]
        assert code == 3, (out, err)
        assert url in err
        assert len(row_objects(url)) == 1
        session.write(lead_time=2)
    assert LOCK_NAME not in objects_under(url)
    with second as session:
        assert session.lead_time == 2
        session.write(lead_time=3)
    assert [e.lead_time for e in Checkpoint("locked", path=url).catalog] == [1, 2, 3]


class _CountingObjects(objects.ObjectStore):
    """The real object store client, counting the listings and the lease reads it is asked for."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.listings = 0
        self.lease_reads = 0

    def list(self, prefix: str = "") -> dict[str, int]:
        self.listings += 1
        return super().list(prefix)

    def get_bytes(self, key: str, *, start: int | None = None, end: int | None = None) -> bytes:
        self.lease_reads += key == LOCK_NAME
        return super().get_bytes(key, start=start, end=end)


def test_commits_with_a_fresh_lease_neither_list_nor_read_the_lease_and_retire_exactly(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long lease: the heartbeat (a third of it) must not renew, and so read the lease, during the test.
    monkeypatch.setattr(object_rows, "LEASE_SECONDS", 600.0)
    url = f"{s3_bucket}/cheap"
    counting = _CountingObjects(url)
    store = object_rows.FsspecRowStore(url, objects=counting)
    writer = RowWriter(store, keep=2)  # the lease is taken, and the rows listed, here
    try:
        opened = (counting.listings, counting.lease_reads)
        for step in range(1, 7):
            writer.persist(Snapshot(body={"step": step}, payloads=[np.full(1000, step, dtype=np.int64)]))
        # Renewed by the heartbeat, not before each manifest; a writer knows
        # the files of the rows it published, so retiring one needs no listing.
        assert (counting.listings, counting.lease_reads) == opened
    finally:
        writer.close()
    rows = scan_rows(object_rows.FsspecRowStore(url)).rows
    assert [row.body["step"] for row in rows] == [5, 6]
    # Nothing of the four retired rows is left behind.
    assert sorted({key.split("/")[1] for key in objects.ObjectStore(url).list("commits")}) == [row.name for row in rows]


def test_lease_wait_zero_refuses_at_once_and_a_malformed_one_is_named(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3_bucket}/no-queue"
    with Checkpoint("rows", path=url, mode="append") as session:
        session.write(lead_time=1)
        monkeypatch.setenv("RESTARTABLE_LEASE_WAIT", "0")
        with (
            pytest.raises(CheckpointLockedError, match="being written by another writer"),
            Checkpoint("rows", path=url, mode="append"),
        ):
            pass  # pragma: no cover - refused on entry
        # Refused at the first look at the holder: no polling (the default waits 35 s, looking every second).
        counting = _CountingObjects(url)
        with pytest.raises(CheckpointLockedError):
            RowWriter(object_rows.FsspecRowStore(url, objects=counting), keep=None)
        assert counting.lease_reads == 1
        for bad in ("soon", "-1", "nan"):
            monkeypatch.setenv("RESTARTABLE_LEASE_WAIT", bad)
            with (
                pytest.raises(ValueError, match=re.escape(f"RESTARTABLE_LEASE_WAIT={bad!r} is not a non-negative")),
                Checkpoint("rows", path=url, mode="append"),
            ):
                pass  # pragma: no cover - refused on entry
        session.write(lead_time=2)
    assert [e.lead_time for e in Checkpoint("rows", path=url).catalog] == [1, 2]


def test_lease_of_a_writer_on_another_host_is_taken_once_expired(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_rows, "LEASE_SECONDS", 1.0)
    url = f"{s3_bucket}/expired"
    _write_rows(url, range(1, 3))
    expires = time.time() + 1.0
    stale = {"owner": "x" * 32, "host": "another-node.invalid", "pid": 1, "expires": expires}
    write_object(f"{url}/{LOCK_NAME}", json.dumps(stale).encode())
    with Checkpoint("rows", path=url, mode="append") as session:
        # Not taken over before it expired: nothing says the other node is dead.
        assert time.time() >= expires
        assert _lease_record(url)["pid"] == os.getpid()
        assert session.lead_time == 2
        session.write(lead_time=3)
    assert [e.lead_time for e in Checkpoint("rows", path=url).catalog] == [1, 2, 3]


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(object_rows, "LEASE_SECONDS", 1.0)
    url = f"{s3_bucket}/dead"
    _write_rows(url, range(1, 3))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pid = int(dead.stdout)
    # Valid for ten minutes: only the holder's death allows taking it (else CheckpointLockedError after ~6 s).
    record = {"owner": "y" * 32, "host": socket.gethostname(), "pid": pid, "expires": time.time() + 600}
    write_object(f"{url}/{LOCK_NAME}", json.dumps(record).encode())
    with Checkpoint("rows", path=url, mode="append") as session:
        assert _lease_record(url)["pid"] == os.getpid()
        session.write(lead_time=3)
    assert [e.lead_time for e in Checkpoint("rows", path=url).catalog] == [1, 2, 3]


def test_writer_whose_lease_was_taken_over_refuses_to_publish(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stalled writer: its lease is never refreshed between commits (no heartbeat).
    monkeypatch.setattr(object_rows, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(object_rows.Lease, "_heartbeat", lambda self: None)
    url = f"{s3_bucket}/stalled"
    stalled = Checkpoint("stalled", path=url, mode="append")
    with stalled as old:
        state = old.bind(RemoteState())
        set_state(state, 1)
        old.write(lead_time=1)
        expires = _lease_record(url)["expires"]
        while time.time() <= expires:
            time.sleep(0.05)
        with Checkpoint("stalled", path=url, mode="append") as new:
            assert new.lead_time == 1
            set_state(state, 2)
            with pytest.raises(CheckpointLockedError):
                old.write(lead_time=2)
            new.write(lead_time=3)
    catalog = Checkpoint("stalled", path=url).catalog
    assert [e.lead_time for e in catalog] == [1, 3]
    # The refused commit's uploads were discarded: nothing but whole rows.
    assert_whole_rows_only(url, [e.commit_id for e in catalog])
    assert LOCK_NAME not in objects_under(url)


READER_WRITER_CHILD = r"""
import sys, time
import numpy as np
from restartable import Checkpoint

with Checkpoint("busy", path=sys.argv[1], mode="append") as session:
    for step in range(1, int(sys.argv[2]) + 1):
        session.write(lead_time=step, values=np.full(2000, float(step)), counts=np.arange(64) * step)
        print(step, flush=True)
        time.sleep(0.02)  # leave the readers some commits to overlap
"""


# Default: 10 commits overlapped by readers; the stress run races them over 30.
@pytest.mark.parametrize("rows", [10, pytest.param(30, marks=pytest.mark.stress)])
def test_readers_never_see_a_partial_row_while_a_writer_commits(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, warm: WarmPython, rows: int
) -> None:
    # Readers take no lease: they list, read manifests and payloads while the
    # writer uploads payloads and publishes manifests. No retention here (see
    # test_reader_racing_a_retirement_rescans), and no listings cache (see
    # test_rows_committed_after_a_reader_saw_the_commit_in_progress_are_seen).
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", LONG_LEASE)
    url = f"{s3_bucket}/busy"
    options = {"use_listings_cache": False}
    proc, _ = _start_until(warm, READER_WRITER_CHILD, [url, str(rows)], lambda lines: True)
    watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)
    watchdog.start()
    seen: list[int] = []
    try:
        first = proc.stdout.readline()  # the first row is committed
        assert first.strip() == "1", first + _finish(proc)
        while proc.poll() is None:
            # Any CheckpointWarning is an error here (pyproject): no damaged row may ever show.
            leads = [e.lead_time for e in Checkpoint("busy", path=url, mode="append", storage_options=options).catalog]
            assert leads == list(range(1, len(leads) + 1)), leads
            session = Checkpoint("busy", path=url, mode="append", storage_options=options).select(-1)
            step = session.lead_time
            assert step >= leads[-1]
            assert session.metadata["values"].tobytes() == np.full(2000, float(step)).tobytes()
            assert session.metadata["counts"].tobytes() == (np.arange(64) * step).tobytes()
            seen.append(step)
        out = _finish(proc)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            _finish(proc)
    assert proc.returncode == 0, out
    assert seen == sorted(seen), "a reader went back in time"
    assert len(set(seen)) > 1, f"the readers did not overlap the commits: {seen}"
    assert [e.lead_time for e in Checkpoint("busy", path=url).catalog] == list(range(1, rows + 1))


def test_reader_racing_a_retirement_rescans(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{s3_bucket}/race"
    writer = Checkpoint("race", path=url, mode="overwrite")
    with writer as session:
        session.write(lead_time=1, values=np.arange(10.0))
        reader = Checkpoint("race", path=url, mode="overwrite")
        fetch = object_rows.FsspecRowStore.read_manifests
        raced: list[bool] = []

        def racing(store: Any, names: list[str]) -> Any:
            # The reader has listed commits/ (row 1 only); now the writer
            # publishes row 2 and retires row 1, before the reader reads manifests.
            if not raced:
                raced.append(True)
                session.write(lead_time=2, values=np.arange(10.0) * 2)
            return fetch(store, names)

        monkeypatch.setattr(object_rows.FsspecRowStore, "read_manifests", racing)
        leads = [e.lead_time for e in reader.catalog]
        assert raced
    # At every moment one whole row existed: a reader must see one of them.
    assert leads == [2]


# --------------------------------------------------------------------------- 6. retention


@pytest.mark.parametrize("mode, history_size, keep", [("overwrite", None, 1), ("append", 2, 2)])
def test_retention_on_the_object_store_leaves_no_orphans(
    catalog_url: str, mode: str, history_size: int | None, keep: int
) -> None:
    url = catalog_url
    step = 0
    for _session in range(2):  # retention applies across sessions (a new writer) too
        checkpoint = Checkpoint("keep", path=url, mode=mode, history_size=history_size)
        with checkpoint as session:
            state = session.bind(RemoteState())
            for _ in range(3):
                step += 1
                set_state(state, step)
                session.write(lead_time=step)
                assert len(row_objects(url)) == min(step, keep)
                assert orphans(url) == {}
    catalog = checkpoint.catalog
    assert [e.lead_time for e in catalog] == list(range(7 - keep, 7))
    assert [e.sequence for e in catalog] == list(range(7 - keep, 7))
    assert_whole_rows_only(url, [e.commit_id for e in catalog])
    assert set(objects_under(url)) == {
        f"commits/{e.commit_id}/{name}" for e in catalog for name in row_objects(url)[e.commit_id]
    }
    restored = RemoteState()
    checkpoint.select(-1).bind(restored)
    assert_same(restored, state_at(6))


# --------------------------------------------------------------------------- 7. async commits


def test_async_commit_to_s3(s3_bucket: str) -> None:
    url = f"{s3_bucket}/async"
    big = np.random.default_rng(3).standard_normal(300_000)  # 2.4 MB per row
    checkpoint = Checkpoint("async", path=url, mode="append", async_commit=True)
    with checkpoint as session:
        state = session.bind(RemoteState())
        for step in range(1, 6):
            set_state(state, step)
            state.values = big * step  # a fresh array: the snapshot must not see later steps
            assert session.write(lead_time=step) is None  # persisted in the background
    catalog = Checkpoint("async", path=url, mode="append").catalog
    assert [e.lead_time for e in catalog] == [1, 2, 3, 4, 5]
    for index, _entry in enumerate(catalog):
        restored = RemoteState()
        Checkpoint("async", path=url).select(index).bind(restored)
        expected = state_at(index + 1)
        expected.values = big * (index + 1)
        assert_same(restored, expected)
    assert_whole_rows_only(url, [e.commit_id for e in catalog])
    assert LOCK_NAME not in objects_under(url)


# --------------------------------------------------------------------------- 8. push and pull


def _write_local_ranks(path: Path, rows: int = 3) -> list[tuple[Any, ...]]:
    """A local two-rank store; returns each rank's catalog."""
    catalogs = []
    for rank in range(2):
        checkpoint = Checkpoint("sync", path=path, mode="append", rank=rank, world_size=2)
        with checkpoint as session:
            state = session.bind(RemoteState())
            for step in range(1, rows + 1):
                set_state(state, 100 * rank + step)
                session.write(lead_time=100 * rank + step)
        catalogs.append(checkpoint.catalog)
    return catalogs


def _same_catalog(actual: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    assert [e.commit_id for e in actual] == [e.commit_id for e in expected]
    assert [e.lead_time for e in actual] == [e.lead_time for e in expected]
    assert [e.write_count for e in actual] == [e.write_count for e in expected]
    assert [e.saved_at for e in actual] == [e.saved_at for e in expected]


def test_push_and_pull_two_ranks(s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "local"
    catalogs = _write_local_ranks(local)
    url = f"{s3_bucket}/sync"
    labels = [f"rank_{rank:06d}/{e.commit_id}" for rank in range(2) for e in catalogs[rank]]

    code, out, err = cli(capsys, "push", str(local), url, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["copied"] == labels and report["present"] == [] and report["damaged"] == []
    assert report["bytes_copied"] > 0

    code, out, err = cli(capsys, "ls", url, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [block["path"] for block in listed] == [f"{url}/rank_000000", f"{url}/rank_000001"]
    for rank, block in enumerate(listed):
        assert [r["commit_id"] for r in block["rows"]] == [e.commit_id for e in catalogs[rank]]
        assert [r["lead_time"] for r in block["rows"]] == [100 * rank + s for s in (1, 2, 3)]
        assert block["damaged"] == []
        assert_whole_rows_only(f"{url}/rank_{rank:06d}", [e.commit_id for e in catalogs[rank]])
        assert LOCK_NAME not in objects_under(f"{url}/rank_{rank:06d}")

    # Pushing again copies nothing.
    code, out, err = cli(capsys, "push", str(local), url, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["copied"] == [] and report["present"] == labels and report["bytes_copied"] == 0

    # Pull into an empty directory: the same catalogs and the same states.
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    code, out, err = cli(capsys, "pull", url, str(pulled), "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == labels
    for rank in range(2):
        mine = Checkpoint("sync", path=pulled, mode="append", rank=rank, world_size=2)
        remote = Checkpoint("sync", path=url, mode="append", rank=rank, world_size=2)
        _same_catalog(mine.catalog, catalogs[rank])
        _same_catalog(remote.catalog, catalogs[rank])
        for index in range(3):
            restored = RemoteState()
            mine.select(index).bind(restored)
            assert_same(restored, state_at(100 * rank + index + 1))
    code, out, err = cli(capsys, "verify", str(pulled))
    assert code == 0, out
    code, out, err = cli(capsys, "pull", url, str(pulled), "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == [] and json.loads(out)["present"] == labels


def test_push_skips_a_damaged_local_row(s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "local"
    catalog = _write_rows(str(local), range(1, 4)).catalog
    bad = catalog[1]
    payload = Path(bad.path) / "p000000.npy"
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum can tell
    os.chmod(payload, 0o644)
    payload.write_bytes(bytes(data))
    url = f"{s3_bucket}/pushed"

    code, out, err = cli(capsys, "push", str(local), url, "--json")
    assert code == 1, (out, err)
    report = json.loads(out)
    assert report["copied"] == [catalog[0].commit_id, catalog[2].commit_id]
    assert [d["row"] for d in report["damaged"]] == [bad.commit_id]
    assert str(payload) in report["damaged"][0]["reason"]
    # Never published, and no upload left behind.
    assert bad.commit_id not in row_objects(url)
    assert_whole_rows_only(url, [catalog[0].commit_id, catalog[2].commit_id])
    assert [e.commit_id for e in Checkpoint("rows", path=url).catalog] == [catalog[0].commit_id, catalog[2].commit_id]


def test_pull_skips_a_damaged_remote_row(s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{s3_bucket}/pulled"
    catalog = _write_rows(url, range(1, 4)).catalog
    bad = catalog[1]
    garble(f"{url}/commits/{bad.commit_id}/p000001.npy")
    local = tmp_path / "local"

    code, out, err = cli(capsys, "pull", url, str(local), "--json")
    assert code == 1, (out, err)
    report = json.loads(out)
    assert report["copied"] == [catalog[0].commit_id, catalog[2].commit_id]
    assert [d["row"] for d in report["damaged"]] == [bad.commit_id]
    assert f"{url}/commits/{bad.commit_id}/p000001.npy" in report["damaged"][0]["reason"]
    assert sorted(p.name for p in (local / "commits").iterdir()) == [catalog[0].commit_id, catalog[2].commit_id]
    assert sorted(p.name for p in local.iterdir() if p.name.startswith((".staging-", ".trash-"))) == []
    mine = Checkpoint("rows", path=local, mode="append")
    assert [e.lead_time for e in mine.catalog] == [1, 3]
    restored = RemoteState()
    mine.select(-1).bind(restored)
    assert_same(restored, state_at(3))
    assert cli(capsys, "verify", str(local))[0] == 0


def _damage_locally(row_path: Path, how: str) -> Path:
    """Damage one local row the way a crash, a careless user or bit rot would."""
    payload = row_path / "p000000.npy"
    os.chmod(payload, 0o644)
    if how == "truncated":
        payload.write_bytes(payload.read_bytes()[:-8])
    elif how == "manifest-missing":
        (row_path / MANIFEST_NAME).unlink()
    elif how == "bit-rot":
        data = bytearray(payload.read_bytes())
        data[-1] ^= 0xFF  # same size: only a checksum can tell
        payload.write_bytes(bytes(data))
    return payload


@pytest.mark.parametrize("how", ["truncated", "manifest-missing", "bit-rot"])
def test_pull_repairs_a_damaged_local_copy_of_a_row(
    s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    url = f"{s3_bucket}/repair-{how}"
    catalog = _write_rows(url, range(1, 4)).catalog
    local = tmp_path / "local"
    assert cli(capsys, "pull", url, str(local))[0] == 0
    ids = [entry.commit_id for entry in catalog]
    _damage_locally(local / "commits" / ids[1], how)
    assert cli(capsys, "verify", str(local))[0] == 1

    if how == "bit-rot":
        # Sizes and manifest are intact: only --verify reads the local files.
        code, out, err = cli(capsys, "pull", url, str(local), "--json")
        assert code == 0, err
        assert json.loads(out)["present"] == ids and json.loads(out)["repaired"] == []
        assert cli(capsys, "verify", str(local))[0] == 1
        code, out, err = cli(capsys, "pull", url, str(local), "--verify")
    else:
        code, out, err = cli(capsys, "pull", url, str(local))
    assert code == 0, (out, err)
    assert f"repaired {ids[1]} (the local copy was damaged)" in out
    assert "3 row(s) copied" not in out and ", 1 repaired, 0 damaged" in out

    assert cli(capsys, "verify", str(local))[0] == 0
    assert sorted(p.name for p in (local / "commits").iterdir()) == ids
    assert [p.name for p in local.iterdir() if p.name.startswith((".staging-", ".trash-"))] == []
    restored = RemoteState()
    Checkpoint("rows", path=local, mode="append").select(1).bind(restored)
    assert_same(restored, state_at(2))
    code, out, err = cli(capsys, "pull", url, str(local), "--json", "--verify")
    assert code == 0 and json.loads(out)["present"] == ids and json.loads(out)["repaired"] == []


def test_pull_keeps_a_damaged_local_copy_when_the_remote_one_is_damaged_too(
    s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{s3_bucket}/both-damaged"
    catalog = _write_rows(url, range(1, 3)).catalog
    local = tmp_path / "local"
    assert cli(capsys, "pull", url, str(local))[0] == 0
    bad = catalog[1].commit_id
    payload = _damage_locally(local / "commits" / bad, "truncated")
    damaged_bytes = payload.read_bytes()
    garble(f"{url}/commits/{bad}/p000001.npy")

    code, out, err = cli(capsys, "pull", url, str(local), "--json")
    assert code == 1, (out, err)
    report = json.loads(out)
    assert report["repaired"] == [] and [d["row"] for d in report["damaged"]] == [bad]
    reason = report["damaged"][0]["reason"]
    assert "the local copy is damaged" in reason and str(payload) in reason
    assert f"{url}/commits/{bad}/p000001.npy" in reason
    # Not made worse: the local copy is as it was, nothing is left behind.
    assert payload.read_bytes() == damaged_bytes
    assert sorted(p.name for p in (local / "commits" / bad).iterdir()) == sorted(
        p.name for p in (local / "commits" / catalog[0].commit_id).iterdir()
    )
    assert [p.name for p in local.iterdir() if p.name.startswith((".staging-", ".trash-"))] == []
    # Readers fall back to the older, whole row.
    with pytest.warns(CheckpointFallbackWarning):
        assert Checkpoint("rows", path=local, mode="append").catalog[-1].commit_id == catalog[0].commit_id


def test_push_over_a_damaged_remote_copy_of_a_row(
    s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, url = tmp_path / "local", f"{s3_bucket}/repush"
    checkpoint = _write_rows(str(local), range(1, 3))
    assert cli(capsys, "push", str(local), url)[0] == 0
    _first, second = checkpoint.catalog
    payload = f"{url}/commits/{second.commit_id}/p000000.npy"
    write_object(payload, read_object(payload)[:-8])  # truncated remotely: a damaged row there
    with Checkpoint("rows", path=str(local), mode="append") as session:
        session.write(lead_time=3)  # a new local row to push
    third = checkpoint.catalog[-1]

    code = cli_main(["push", str(local), url, "--json"])  # raises FileExistsError today
    capsys.readouterr()
    assert code in (0, 1)
    # The new row made it, and the damaged remote row was not made worse (its payload still exists).
    assert f"commits/{third.commit_id}/{MANIFEST_NAME}" in objects_under(url)
    assert f"commits/{second.commit_id}/p000000.npy" in objects_under(url)


def test_sync_usage_errors_and_unreachable_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local"
    _write_rows(str(local), range(1, 2))
    code, out, err = cli(capsys, "push", str(local), str(tmp_path / "elsewhere"))
    assert code == 2 and "is not a URL" in err and out == ""
    code, out, err = cli(capsys, "pull", str(tmp_path / "elsewhere"), str(local))
    assert code == 2 and "is not a URL" in err
    code, out, err = cli(capsys, "push", str(tmp_path / "missing"), f"{s3_bucket}/x")
    assert code == 2 and str(tmp_path / "missing") in err

    url = f"{s3_bucket}/unreachable"
    # The retries' back-off delays are recorded, not slept: the failures are the same.
    sleeps: list[float] = []
    monkeypatch.setattr(objects, "time", types.SimpleNamespace(sleep=sleeps.append))
    code, out, err = cli(
        capsys,
        "pull",
        url,
        str(tmp_path / "pulled"),
        "-o",
        "endpoint_url=http://127.0.0.1:9",
        "-o",
        'config_kwargs={"retries":{"max_attempts":1}}',
    )
    assert code == 4, (out, err)
    assert url in err
    assert sleeps, "the unreachable store was not retried"
    assert not (tmp_path / "pulled" / "commits").exists() or not any((tmp_path / "pulled" / "commits").iterdir())


# --------------------------------------------------------------------------- 9. a workflow on s3


def test_deterministic_workflow_with_an_s3_checkpoint_resumes_bit_for_bit(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: WarmPython
) -> None:
    pytest.importorskip("zarr")
    pytest.importorskip("xarray")
    harness = importlib.import_module("test_workflows")  # the kill-and-resume harness of the local tests
    monkeypatch.setenv("RESTARTABLE_LEASE_SECONDS", LONG_LEASE)
    script = tmp_path / "wfchild.py"
    script.write_text(harness.CHILD_SOURCE, encoding="utf-8")
    child = harness.Child(script, warm)  # its runs fork from this module's warm server

    a = harness.run_a(tmp_path / "a.zarr", "deterministic", "lorenz96")
    harness.assert_reference_complete(a, "deterministic")
    b, log, ckpt = tmp_path / "b.zarr", tmp_path / "log.jsonl", f"{s3_bucket}/workflow"
    common = dict(level=2, flush_interval=1, mode="append")

    job = harness._job("B1", "deterministic", "lorenz96", b, log, ckpt, **common)
    killed, written = harness._kill_from_parent(child, dict(job, pace=0.1), log, 3, 0.01)
    assert killed.returncode == -signal.SIGKILL, str(killed)
    assert 3 <= written < len(harness.LEADS), "the run was not killed part-way"

    hour = np.timedelta64(1, "h")
    catalog = in_fresh_context(lambda: Checkpoint("wf", path=ckpt, mode="append").catalog)
    assert catalog, "nothing was committed to s3 before the kill"
    committed = int(np.asarray(catalog[-1].lead_time).reshape(-1)[-1] / hour)
    assert committed in harness.LEADS[:written]

    resumed = harness._run_ok(child, [harness._job("B2", "deterministic", "lorenz96", b, log, ckpt, **common)])
    start = resumed.start("B2")
    assert start["exists"] and start["lead"] == committed
    # The commit the kill interrupted is reported as removed, as on a local disk.
    assert [w for w in resumed.report("B2")["warnings"] if w[0] != "CheckpointCleanupWarning"] == []
    harness.assert_stores_equal(b, a)
    remaining = [lead for lead in harness.LEADS if lead > committed]
    assert [lead for _, lead in harness._writes(log, "B2")] == remaining
    # Level 2: the model continued from its restored state instead of recomputing.
    assert [lead for _, lead in harness._yields(log, "B2")] == remaining

    final = in_fresh_context(lambda: Checkpoint("wf", path=ckpt, mode="append").catalog)
    assert int(np.asarray(final[-1].lead_time).reshape(-1)[-1] / hour) == harness.LEADS[-1]
    assert_whole_rows_only(ckpt, [e.commit_id for e in final])
    assert LOCK_NAME not in objects_under(ckpt)


# --------------------------------------------------------------------------- 10. every command on a URL


def test_show_and_gc_work_on_a_url(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{s3_bucket}/commands"
    catalog = _write_rows(url, range(1, 3)).catalog
    code, out, err = cli(capsys, "show", url, "-1", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["commit_id"] == catalog[-1].commit_id and shown["lead_time"] == 2
    assert shown["path"] == f"{url}/commits/{catalog[-1].commit_id}"

    # Leftovers: an interrupted commit's upload, and a file no manifest lists.
    leftover = f"{url}/commits/000000000009-{'a' * 32}/p000000.npy"
    stray = f"{url}/commits/{catalog[0].commit_id}/stray.bin"
    write_object(leftover, b"partial")
    write_object(stray, b"unlisted")
    code, out, err = cli(capsys, "gc", url, "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dry_run"] and set(report["removed"]) == {leftover.rsplit("/", 1)[0], stray}
    keys = {leftover[len(url) + 1 :], stray[len(url) + 1 :]}
    assert keys <= set(objects_under(url))  # a dry run removes nothing
    code, out, err = cli(capsys, "gc", url)
    assert code == 0, err
    assert not keys & set(objects_under(url))
    assert [e.commit_id for e in Checkpoint("rows", path=url, mode="append").catalog] == [e.commit_id for e in catalog]
