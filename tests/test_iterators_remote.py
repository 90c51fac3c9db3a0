"""Iterator checkpoints on object stores: a real S3-protocol server (moto, 127.0.0.1) and fsspec's memory store.

The same front end and the same guarantees as on a local disk: a restore
continues exactly where the saved iterator was, retention keeps the newest
steps only once the new one is committed, damaged rows are skipped with a
warning, and ``restartable ls`` / ``verify`` read the rows.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest

from conftest import run_python
from restartable import Checkpoint, CheckpointFallbackWarning
from restartable.cli import main as cli_main
from restartable.iterators import IteratorCheckpoint, ShuffledArrayIterator

fsspec = pytest.importorskip("fsspec")

DATA = np.arange(200, dtype=np.int64)


@pytest.fixture(params=["s3", "memory"])
def url(request: pytest.FixtureRequest) -> Any:
    """A fresh prefix on S3 (moto) or on fsspec's in-process memory store."""
    if request.param == "s3":
        yield f"{request.getfixturevalue('s3_module_bucket')}/{uuid.uuid4().hex}/pipeline/iterator"
        return
    root = f"memory://{uuid.uuid4().hex}"
    yield f"{root}/pipeline/iterator"
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def fresh() -> ShuffledArrayIterator:
    return ShuffledArrayIterator(DATA, batch_size=8, seed=3)


def objects(url: str) -> dict[str, int]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    found = fs.find(root, detail=True, withdirs=False) if fs.exists(root) else {}
    return {path[len(root.rstrip("/")) + 1 :]: info["size"] for path, info in found.items()}


def corrupt(url: str, key: str) -> None:
    """Flip the last byte of one object, keeping its size (only a checksum can tell)."""
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{key}"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF
    fs.pipe_file(path, bytes(data))


@pytest.mark.parametrize("async_checkpointing", [False, True], ids=["sync", "async"])
def test_save_and_restore_on_an_object_store(url: str, async_checkpointing: bool) -> None:
    reference = fresh()
    expected = {}
    ckpt = IteratorCheckpoint(url, async_checkpointing=async_checkpointing)
    it = fresh()
    for step in range(1, 5):
        next(it), next(reference)
        where = ckpt.save_to_directory(it, step=step, keep=2, metadata={"epoch": step // 3, "note": f"s{step}"})
        assert where.startswith(url + "/commits/")
        expected[step] = next(fresh_copy(reference))
    ckpt.wait_until_finished()

    listed = ckpt.list_checkpoints()
    assert sorted(listed) == [3, 4], "keep=2 must leave the two newest steps"
    assert all(where.startswith(url + "/commits/") for where in listed.values())
    assert ckpt.get_latest_step() == 4 and ckpt.get_metadata() == {"epoch": 1, "note": "s4"}
    assert ckpt.get_metadata(3) == {"epoch": 1, "note": "s3"}
    assert {key.split("/")[1] for key in objects(url) if key.startswith("commits/")} == {
        where.rsplit("/", 1)[-1] for where in listed.values()
    }, "retired rows must leave no object behind"

    # A new process would do exactly this: a fresh checkpoint object, a fresh iterator.
    for step in (4, 3):
        restored = IteratorCheckpoint(url).restore(fresh(), step=step)
        assert np.array_equal(next(restored), expected[step])
    latest = IteratorCheckpoint(url).restore_latest(fresh())
    assert np.array_equal(next(latest), expected[4])
    ckpt.close()


def fresh_copy(it: ShuffledArrayIterator) -> ShuffledArrayIterator:
    """An iterator in the same position as ``it``, without touching ``it``."""
    copy = fresh()
    copy.set_state(it.get_state())
    return copy


def test_overwrite_on_an_object_store(url: str) -> None:
    ckpt = IteratorCheckpoint(url)
    it = fresh()
    next(it)
    ckpt.save_to_directory(it, step=1, keep=None)
    with pytest.raises(ValueError, match="already saved"):
        ckpt.save_to_directory(it, step=1, keep=None)
    next(it)
    expected = next(fresh_copy(it))
    old = ckpt.list_checkpoints()[1]
    new = ckpt.save_to_directory(it, step=1, overwrite=True, keep=None)
    assert new != old and ckpt.list_checkpoints() == {1: new}
    assert np.array_equal(next(ckpt.restore(fresh(), step=1)), expected)
    assert not any(key.startswith(f"commits/{old.rsplit('/', 1)[-1]}/") for key in objects(url))


class Windowed:
    """An iterator whose state holds an array (a payload of its own in the row)."""

    def __init__(self) -> None:
        self.i = 0

    def __next__(self) -> np.ndarray:
        self.i += 1
        return np.arange(self.i, self.i + 1000)

    def get_state(self) -> dict[str, Any]:
        return {"i": self.i, "window": np.arange(self.i, self.i + 1000)}

    def set_state(self, state: dict[str, Any]) -> None:
        assert np.array_equal(state["window"], np.arange(state["i"], state["i"] + 1000))
        self.i = state["i"]


def test_a_damaged_newest_row_falls_back_to_the_step_before(url: str) -> None:
    ckpt = IteratorCheckpoint(url)
    it = Windowed()
    next(it)
    ckpt.save_to_directory(it, step=1, keep=None)
    next(it)
    newest = ckpt.save_to_directory(it, step=2, keep=None)
    payload = next(key for key in objects(url) if key.startswith(f"commits/{newest.rsplit('/', 1)[-1]}/p"))
    corrupt(url, payload)

    with pytest.warns(CheckpointFallbackWarning, match="step 2.*falling back to step 1"):
        restored = IteratorCheckpoint(url).restore_latest(Windowed())
    assert restored.i == 1
    with pytest.raises(Exception, match="checksum"):
        IteratorCheckpoint(url).restore(Windowed(), step=2)


def test_command_line_reads_iterator_rows_on_an_object_store(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = IteratorCheckpoint(url)
    it = fresh()
    for step in (10, 20):
        next(it)
        ckpt.save_to_directory(it, step=step, keep=None)
    assert cli_main(["verify", url]) == 0
    capsys.readouterr()
    assert cli_main(["ls", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = listed[0]["rows"] if isinstance(listed, list) else listed["rows"]
    assert len(rows) == 2


SAVE_CHILD = r"""
import sys
from restartable import CheckpointLockedError
from restartable.iterators import IteratorCheckpoint

class Counter:
    def __init__(self):
        self.i = 7
    def get_state(self):
        return {"i": self.i}
    def set_state(self, state):
        self.i = state["i"]

try:
    IteratorCheckpoint(sys.argv[1]).save_to_directory(Counter(), step=1)
except CheckpointLockedError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_second_writer_on_the_same_url_is_refused_once_the_lease_wait_is_over(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3_bucket}/locked/iterator"
    with Checkpoint("other", path=url, mode="append") as session:  # holds the prefix's lease, renewing it
        session.flush(lead_time=1)
        monkeypatch.setenv("RESTARTABLE_LEASE_WAIT", "0.5")  # the child waits 0.5 s, not 35
        done = run_python(SAVE_CHILD, url, check=False, timeout=120)
        assert done.returncode == 3, done.stderr
        assert url in done.stdout and "being written by another writer" in done.stdout
    assert IteratorCheckpoint(url).list_checkpoints() == {}
    assert [entry.lead_time for entry in Checkpoint("other", path=url, mode="append").catalog] == [1]
