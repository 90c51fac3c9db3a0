"""Iterator and pipeline checkpoints (``restartable.iterators``): datarax's API on restartable's engine.

Real files, real fsyncs, real torch objects. Faults are injected by
replacing ``os.fsync`` / ``os.rename`` (the engine calls them as ``os.<name>``)
or ``RowWriter.persist``; damage is done by flipping bytes on disk.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
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
    CheckpointSerializationError,
    CheckpointWriteError,
    codec,
)
from restartable.cli import main as cli_main
from restartable.iterators import (
    Checkpointable,
    CheckpointableIterator,
    EngineHandler,
    IteratorCheckpoint,
    IteratorCheckpointHandler,
    PipelineCheckpoint,
    ShuffledArrayIterator,
    StateDictAdapter,
)
from restartable.store import RowWriter, verify_row
from support import first_payload

HAVE_PROC_FD = os.path.isdir("/proc/self/fd")


# --------------------------------------------------------------------------- helpers


class Counter:
    """A minimal checkpointable iterator (0, 1, 2, ...) whose state holds an array payload."""

    def __init__(self, start: int = 0) -> None:
        self.i = start

    def __iter__(self) -> Counter:
        return self

    def __next__(self) -> int:
        value = self.i
        self.i += 1
        return value

    def get_state(self) -> dict[str, Any]:
        return {"i": self.i, "history": np.arange(8, dtype=np.int64) + self.i}

    def set_state(self, state: dict[str, Any]) -> None:
        assert (state["history"] == np.arange(8) + state["i"]).all()
        self.i = state["i"]


class OnlyGet:
    def get_state(self) -> int:
        return 1


class OnlySet:
    def set_state(self, state: Any) -> None:
        pass


class Nothing:
    pass


def advance_and_save(ckpt: IteratorCheckpoint, it: Counter, steps: list[int], **kwargs: Any) -> None:
    for step in steps:
        next(it)
        ckpt.save_to_directory(it, step=step, **kwargs)


def flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def row_dirs(base: Path) -> list[Path]:
    return sorted((base / "commits").iterdir())


def leftovers(base: Path) -> list[str]:
    return sorted(n for n in os.listdir(base) if n.startswith((".staging-", ".trash-")))


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def fail_staging_fsync(monkeypatch: pytest.MonkeyPatch, err: int = errno.ENOSPC) -> list[str]:
    """Make every fsync of a file or directory of a commit in progress fail with ``err``."""
    real = os.fsync
    hits: list[str] = []

    def fsync(fd: int) -> None:
        path = fd_path(fd)
        if "/.staging-" in path:
            hits.append(path)
            raise OSError(err, os.strerror(err), path)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


def data_2d(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.int64)
    return np.stack([i, 7 * i, -i], axis=1)


def take(it: Any, count: int) -> list[Any]:
    return [next(it) for _ in range(count)]


def same_batches(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- ShuffledArrayIterator


def test_every_epoch_is_a_new_permutation() -> None:
    it = ShuffledArrayIterator(np.arange(50), batch_size=8, seed=3)
    batches = take(it, 4 * 7)
    orders = []
    for epoch in range(4):
        chunk = batches[7 * epoch : 7 * epoch + 7]
        assert [len(b) for b in chunk] == [8] * 6 + [2]  # the last batch is smaller: batches never straddle epochs
        orders.append(np.concatenate(chunk))
        assert sorted(orders[-1].tolist()) == list(range(50))
    assert it.epoch == 3
    assert len({tuple(order.tolist()) for order in orders}) == 4


def test_shards_split_each_epoch_evenly_and_disjointly() -> None:
    data = np.arange(103)
    shards = [ShuffledArrayIterator(data, seed=11, num_shards=4, shard_index=k) for k in range(4)]
    for epoch in range(3):
        parts = [np.array([next(it) for _ in range(it.elements_per_epoch)]) for it in shards]
        assert all(len(p) == 103 // 4 for p in parts)
        union = np.concatenate(parts)
        assert len(set(union.tolist())) == len(union)  # disjoint
        assert all(it.epoch == epoch for it in shards)
    # Same seed, same permutation: the shards interleave one global order.
    whole = ShuffledArrayIterator(data, seed=11)
    order = np.array([next(whole) for _ in range(103)])
    again = [ShuffledArrayIterator(data, seed=11, num_shards=4, shard_index=k) for k in range(4)]
    for k, it in enumerate(again):
        assert [next(it) for _ in range(25)] == order[:100][k::4].tolist()


def test_batches_drop_remainder_and_single_elements() -> None:
    data = data_2d(30)
    it = ShuffledArrayIterator(data, batch_size=8, drop_remainder=True, seed=0)
    assert it.batches_per_epoch == 3
    batches = take(it, 7)
    assert all(b.shape == (8, 3) for b in batches)
    assert it.epoch == 2
    single = ShuffledArrayIterator(data, seed=0)
    element = next(single)
    assert element.shape == (3,) and element[1] == 7 * element[0]


def test_num_epochs_bounds_iteration_and_resumes_to_the_same_end() -> None:
    data = np.arange(20)
    it = ShuffledArrayIterator(data, batch_size=6, num_epochs=3, seed=5)
    everything = list(it)
    assert len(everything) == 3 * 4 and sum(len(b) for b in everything) == 60
    with pytest.raises(StopIteration):
        next(it)
    it = ShuffledArrayIterator(data, batch_size=6, num_epochs=3, seed=5)
    head = take(it, 9)
    state = it.get_state()
    resumed = ShuffledArrayIterator(data, batch_size=6, num_epochs=3, seed=999)
    resumed.set_state(state)
    assert same_batches(head + list(resumed), everything)


def test_unshuffled_keeps_the_data_order() -> None:
    it = ShuffledArrayIterator(np.arange(10), batch_size=4, shuffle=False, num_shards=2, shard_index=1)
    assert [b.tolist() for b in take(it, 3)] == [[1, 3, 5, 7], [9], [1, 3, 5, 7]]


def test_npy_shard_directory_equals_the_concatenated_array(tmp_path: Path) -> None:
    data = data_2d(100)
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, (lo, hi) in zip(["a", "b", "c", "d"], [(0, 13), (13, 50), (50, 51), (51, 100)], strict=True):
        np.save(shards / f"{name}.npy", data[lo:hi])
    (shards / "notes.txt").write_text("not a shard")
    from_dir = ShuffledArrayIterator(shards, batch_size=9, seed=4, num_shards=3, shard_index=2)
    from_array = ShuffledArrayIterator(data, batch_size=9, seed=4, num_shards=3, shard_index=2)
    assert from_dir.num_elements == 100
    assert same_batches(take(from_dir, 25), take(from_array, 25))
    state = from_dir.get_state()
    other = ShuffledArrayIterator(data, batch_size=9, seed=0, num_shards=3, shard_index=2)
    other.set_state(state)  # the state describes positions, not files
    assert same_batches(take(other, 10), take(from_dir, 10))


def test_bad_shard_directories_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.npy"):
        ShuffledArrayIterator(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((3, 2)))
    np.save(mixed / "b.npy", np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"b\.npy"):
        ShuffledArrayIterator(mixed)
    objects = tmp_path / "objects"
    objects.mkdir()
    np.save(objects / "a.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        ShuffledArrayIterator(objects)  # never unpickled


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": True},
        {"num_shards": 0},
        {"num_shards": 2, "shard_index": 2},
        {"shard_index": -1},
        {"num_epochs": 0},
        {"num_shards": 11},  # fewer elements than shards
        {"batch_size": 11, "drop_remainder": True},  # not one whole batch per epoch
    ],
)
def test_invalid_iterator_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ShuffledArrayIterator(np.arange(10), **kwargs)


def test_state_must_match_the_configuration_but_not_the_shard_index() -> None:
    data = np.arange(40)
    it = ShuffledArrayIterator(data, batch_size=4, seed=1, num_shards=2, shard_index=0)
    take(it, 7)
    state = it.get_state()
    for kwargs, field in [
        ({"num_shards": 4}, "num_shards"),
        ({"batch_size": 5}, "batch_size"),
        ({"shuffle": False}, "shuffle"),
    ]:
        base = {"batch_size": 4, "num_shards": 2, "seed": 1}
        with pytest.raises(ValueError, match=field):
            ShuffledArrayIterator(data, **{**base, **kwargs}).set_state(state)
    with pytest.raises(ValueError, match="num_elements"):
        ShuffledArrayIterator(np.arange(41), batch_size=4, num_shards=2).set_state(state)
    with pytest.raises(ValueError, match="not saved by a ShuffledArrayIterator"):
        ShuffledArrayIterator(data).set_state({"i": 3})
    with pytest.raises(ValueError, match="MT19937"):
        ShuffledArrayIterator(
            data, batch_size=4, num_shards=2, seed=np.random.Generator(np.random.MT19937(1))
        ).set_state(state)
    # Every rank holds the same state, so rank 1 can resume from rank 0's.
    rank0 = take(it, 5)
    rank1 = ShuffledArrayIterator(data, batch_size=4, seed=77, num_shards=2, shard_index=1)
    rank1.set_state(state)
    reference = ShuffledArrayIterator(data, batch_size=4, seed=1, num_shards=2, shard_index=1)
    take(reference, 7)
    assert same_batches(take(rank1, 5), take(reference, 5))
    assert not same_batches(rank0, take(reference, 5))


def test_state_is_pickle_free_and_small() -> None:
    it = ShuffledArrayIterator(np.arange(100_000), batch_size=64, seed=2)
    take(it, 3)
    state = it.get_state()
    encoded = codec.encode(state)
    json.dumps(encoded.document)  # plain JSON
    assert encoded.payloads == []  # PCG64's state is ints: no array, no permutation stored
    assert codec.decode(encoded.document, encoded.payloads.__getitem__) == state


# --------------------------------------------------------------------------- codec: pipeline states


BIT_GENERATORS = [np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937, np.random.Philox, np.random.SFC64]


@pytest.mark.parametrize("bit_generator", BIT_GENERATORS, ids=lambda cls: cls.__name__)
def test_numpy_generator_state_round_trips(bit_generator: type) -> None:
    rng = np.random.Generator(bit_generator(12345))
    rng.random(17)
    rng.integers(0, 10, size=3)  # leaves a buffered uint32 on some generators
    state = rng.bit_generator.state
    encoded = codec.encode(state, root="rng")
    document = json.loads(json.dumps(encoded.document))  # through real JSON text
    restored = codec.decode(document, encoded.payloads.__getitem__)
    twin = np.random.Generator(bit_generator(0))
    twin.bit_generator.state = restored
    assert np.array_equal(twin.random(1000), rng.random(1000))
    assert np.array_equal(twin.integers(0, 2**63, size=100), rng.integers(0, 2**63, size=100))


class RichState:
    """An iterator whose state holds bytes, huge ints, a numpy generator's state and int keys."""

    def __init__(self) -> None:
        self.rng = np.random.Generator(np.random.Philox(7))
        self.token = b"\x00\xffcursor\x80"
        self.offset = 2**200 + 1
        self.seen = {3: "three", 10**30: "big"}

    def get_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "token": self.token, "offset": self.offset, "seen": self.seen}

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.token, self.offset, self.seen = state["token"], state["offset"], state["seen"]


def test_bytes_big_ints_and_generator_states_through_a_checkpoint(store: Path) -> None:
    source = RichState()
    source.rng.random(5)
    IteratorCheckpoint(store).save_to_directory(source)
    target = RichState()
    target.token, target.offset, target.seen = b"", 0, {}
    IteratorCheckpoint(store).restore(target)
    assert target.token == source.token and type(target.token) is bytes
    assert target.offset == 2**200 + 1
    assert target.seen == {3: "three", 10**30: "big"}
    assert np.array_equal(target.rng.random(10), source.rng.random(10))


# --------------------------------------------------------------------------- saving and listing


def test_step_none_is_the_step_after_the_latest(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    assert ckpt.get_latest_step() is None and not ckpt.has_checkpoint() and ckpt.list_checkpoints() == {}
    it = Counter()
    path = ckpt.save_to_directory(it, keep=5)
    assert Path(path).parent == store / "commits" and Path(path).is_dir()
    assert ckpt.get_latest_step() == 0
    ckpt.save_to_directory(it, step=41, keep=5)
    ckpt.save_to_directory(it, keep=5)
    assert list(ckpt.list_checkpoints()) == [0, 41, 42]
    assert ckpt.has_checkpoint()


def test_list_checkpoints_is_sorted_by_step_and_maps_to_directories(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    it = Counter()
    for step in [5, 2, 9, 0, 7]:
        ckpt.save_to_directory(it, step=step, keep=None)
    listed = ckpt.list_checkpoints()
    assert list(listed) == [0, 2, 5, 7, 9]
    assert all(Path(p).parent == store / "commits" and verify_row(Path(p)) == [] for p in listed.values())
    assert ckpt.get_latest_step() == 9
    # A fresh reader (another process would be the same) sees the same thing.
    assert IteratorCheckpoint(store).list_checkpoints() == listed


def test_restore_returns_the_iterator_and_continues_exactly(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    it = ShuffledArrayIterator(data_2d(57), batch_size=5, seed=8, num_shards=2, shard_index=1)
    take(it, 13)
    ckpt.save_to_directory(it, step=13)
    expected = take(it, 40)
    fresh = ShuffledArrayIterator(data_2d(57), batch_size=5, seed=0, num_shards=2, shard_index=1)
    assert ckpt.restore(fresh) is fresh
    assert same_batches(take(fresh, 40), expected)
    again = ShuffledArrayIterator(data_2d(57), batch_size=5, seed=0, num_shards=2, shard_index=1)
    assert ckpt.restore_latest(again) is again
    assert same_batches(take(again, 40), expected)


def test_restore_a_given_step(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    it = Counter()
    advance_and_save(ckpt, it, [0, 1, 2, 3], keep=None)
    for step in range(4):
        target = Counter()
        ckpt.restore(target, step=step)
        assert target.i == step + 1
    np_step = Counter()
    ckpt.restore(np_step, step=np.int64(2))
    assert np_step.i == 3


# --------------------------------------------------------------------------- every ValueError


def test_saving_without_get_state_names_the_method(store: Path) -> None:
    ckpt = PipelineCheckpoint(store)
    for obj in (OnlySet(), Nothing()):
        with pytest.raises(ValueError, match="get_state"):
            ckpt.save_to_directory(obj)
        with pytest.raises(ValueError, match="get_state"):
            ckpt.save_to_step(obj, step=1)  # checked even when the step is not due
    assert not (store / "commits").exists() or ckpt.list_checkpoints() == {}


def test_restoring_without_set_state_names_the_method(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Counter())
    for obj in (OnlyGet(), Nothing()):
        with pytest.raises(ValueError, match="set_state"):
            ckpt.restore(obj)
        with pytest.raises(ValueError, match="set_state"):
            ckpt.restore_latest(obj)


def test_restoring_when_nothing_is_saved(store: Path, tmp_path: Path) -> None:
    for base in (store, tmp_path / "does-not-exist"):
        ckpt = IteratorCheckpoint(base)
        with pytest.raises(ValueError, match="no iterator checkpoint"):
            ckpt.restore(Counter())
        with pytest.raises(ValueError, match="no iterator checkpoint"):
            ckpt.restore_latest(Counter())
        with pytest.raises(ValueError):
            ckpt.get_metadata()
    assert not (tmp_path / "does-not-exist").exists()  # reading creates nothing


def test_restoring_a_step_that_is_not_saved(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    advance_and_save(ckpt, Counter(), [0, 1], keep=None)
    with pytest.raises(ValueError, match=r"step 7 .*saved steps: 0, 1"):
        ckpt.restore(Counter(), step=7)


def test_saving_an_existing_step_needs_overwrite(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    it = Counter(10)
    ckpt.save_to_directory(it, step=3)
    before = row_dirs(store)
    with pytest.raises(ValueError, match="overwrite=True"):
        ckpt.save_to_directory(Counter(99), step=3)
    with pytest.raises(ValueError, match="overwrite=True"):
        PipelineCheckpoint(store).save_to_step(Counter(99), step=3, interval=1)
    # The engine handler checks too, under the writer lock (another writer may have saved it).
    with pytest.raises(ValueError, match="overwrite=True"):
        EngineHandler().save(store, {"i": 1}, step=3, keep=1, overwrite=False, metadata={})
    assert row_dirs(store) == before and leftovers(store) == []
    restored = Counter()
    ckpt.restore(restored, step=3)
    assert restored.i == 10


@pytest.mark.parametrize(
    "metadata",
    [
        {"loss": [1.0]},
        {"loss": None},
        {"loss": {"a": 1}},
        {"loss": b"bytes"},
        {"loss": np.arange(3)},
        {"loss": 1 + 2j},
        {1: 1.0},
        [("loss", 1.0)],
    ],
    ids=["list", "none", "dict", "bytes", "array", "complex", "int-key", "not-a-mapping"],
)
def test_metadata_values_are_limited_to_scalars(store: Path, metadata: Any) -> None:
    ckpt = PipelineCheckpoint(store)
    with pytest.raises(ValueError, match="metadata"):
        ckpt.save_to_directory(Counter(), metadata=metadata)
    with pytest.raises(ValueError, match="metadata"):
        ckpt.save_to_step(Counter(), step=1, interval=1000, metadata=metadata)  # checked even when not due
    assert ckpt.list_checkpoints() == {}


@pytest.mark.parametrize(
    "kwargs",
    [{"step": -1}, {"step": True}, {"step": "3"}, {"step": 1.0}, {"keep": 0}, {"keep": -2}, {"keep": 1.5}],
)
def test_invalid_step_and_keep(store: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IteratorCheckpoint(store).save_to_directory(Counter(), **kwargs)


@pytest.mark.parametrize("interval", [0, -5, 2.5, True])
def test_invalid_interval(store: Path, interval: Any) -> None:
    with pytest.raises(ValueError, match="interval"):
        PipelineCheckpoint(store).save_to_step(Counter(), step=10, interval=interval)


def test_a_state_that_needs_pickle_is_refused_and_writes_nothing(store: Path) -> None:
    class Lambda:
        def get_state(self) -> Any:
            return {"fn": lambda x: x}

    with pytest.raises(CheckpointSerializationError, match=r"state\['fn'\]"):
        IteratorCheckpoint(store).save_to_directory(Lambda())
    assert leftovers(store) == [] and IteratorCheckpoint(store).list_checkpoints() == {}


def test_url_base_dir_is_kept_as_given() -> None:
    # Object stores are tested in test_iterators_remote.py; nothing is touched here.
    assert IteratorCheckpoint("s3://bucket/checkpoints").base_dir == "s3://bucket/checkpoints"


# --------------------------------------------------------------------------- overwrite, keep, interval


def test_overwrite_replaces_the_step_after_the_new_copy_is_durable(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Counter(1), step=0, keep=None)
    ckpt.save_to_directory(Counter(2), step=1, keep=None)
    old = Path(ckpt.list_checkpoints()[1])
    new = Path(ckpt.save_to_directory(Counter(20), step=1, overwrite=True, keep=None))
    assert new != old and not old.exists() and new.is_dir()
    assert ckpt.list_checkpoints() == {0: str(row_dirs(store)[0]), 1: str(new)}
    restored = Counter()
    ckpt.restore(restored, step=1)
    assert restored.i == 20
    assert len(row_dirs(store)) == 2 and leftovers(store) == []


def test_overwrite_whose_retirement_fails_keeps_both_copies_and_reads_the_new(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Counter(1), step=0)
    real = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if "/.trash-" in os.fspath(dst):
            raise OSError(errno.EIO, "injected", os.fspath(dst))
        real(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        with pytest.warns(CheckpointCleanupWarning, match="could not retire"):
            new = ckpt.save_to_directory(Counter(2), step=0, overwrite=True)
    assert len(row_dirs(store)) == 2  # a crash between publish and retirement looks the same
    assert ckpt.list_checkpoints() == {0: new}
    restored = Counter()
    IteratorCheckpoint(store).restore(restored)
    assert restored.i == 2
    ckpt.save_to_directory(Counter(3), keep=1)  # the next save retires both old copies
    assert list(ckpt.list_checkpoints()) == [1] and len(row_dirs(store)) == 1


def test_keep_retires_the_oldest_steps(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    it = Counter()
    advance_and_save(ckpt, it, list(range(6)), keep=3)
    assert list(ckpt.list_checkpoints()) == [3, 4, 5]
    assert len(row_dirs(store)) == 3 and leftovers(store) == []
    advance_and_save(ckpt, it, [6])  # save_to_directory's default keep=1
    assert list(ckpt.list_checkpoints()) == [6]
    advance_and_save(ckpt, it, [7, 8], keep=None)
    assert list(ckpt.list_checkpoints()) == [6, 7, 8]


def test_keep_counts_steps_not_save_order(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    for step in [10, 30, 20]:
        ckpt.save_to_directory(Counter(step), step=step, keep=None)
    ckpt.save_to_directory(Counter(40), step=40, keep=2)
    assert list(ckpt.list_checkpoints()) == [30, 40]
    # The step just saved is always kept, even when it is older than the others.
    ckpt.save_to_directory(Counter(5), step=5, keep=2)
    assert list(ckpt.list_checkpoints()) == [5, 40]


@pytest.mark.skipif(not HAVE_PROC_FD, reason="needs /proc/self/fd to map descriptors to paths")
@pytest.mark.parametrize("keep", [1, 3])
def test_a_failed_save_retires_nothing(store: Path, monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    ckpt = IteratorCheckpoint(store)
    it = Counter()
    advance_and_save(ckpt, it, [0, 1, 2], keep=3)
    before = ckpt.list_checkpoints()
    with monkeypatch.context() as m:
        hits = fail_staging_fsync(m)
        next(it)
        with pytest.raises(CheckpointWriteError, match="Earlier rows are intact") as info:
            ckpt.save_to_directory(it, keep=keep)
        assert info.value.errno == errno.ENOSPC and hits
    assert ckpt.list_checkpoints() == before  # never fewer steps than before a failed save
    assert leftovers(store) == []
    restored = Counter()
    IteratorCheckpoint(store).restore(restored)
    assert restored.i == 3
    ckpt.save_to_directory(it, keep=keep)  # the disk has room again
    assert list(ckpt.list_checkpoints()) == [0, 1, 2, 3][-keep:]


def test_save_to_step_saves_every_interval(store: Path) -> None:
    ckpt = PipelineCheckpoint(store)
    it = Counter()
    saved = {}
    for step in range(0, 7001):
        next(it)
        path = ckpt.save_to_step(it, step)  # interval=1000, keep=5
        if step % 1000:
            assert path is None
        else:
            assert path is not None
            saved[step] = path
    assert ckpt.list_checkpoints() == {s: saved[s] for s in (3000, 4000, 5000, 6000, 7000)}
    restored = Counter()
    ckpt.restore(restored, step=5000)
    assert restored.i == 5001
    assert ckpt.save_to_step(it, 7500, interval=500, keep=2) is not None
    assert list(ckpt.list_checkpoints()) == [7000, 7500]


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trip(store: Path) -> None:
    ckpt = PipelineCheckpoint(store)
    metadata = {"epoch": 3, "loss": 0.125, "tag": "warm-up", "done": False, "big": 2**70, "nan": float("nan")}
    ckpt.save_to_step(Counter(), 1000, metadata=metadata)
    ckpt.save_to_step(
        Counter(), 2000, metadata={"np_int": np.int64(5), "np_float": np.float32(0.5), "np_bool": np.bool_(True)}
    )
    for reader in (ckpt, PipelineCheckpoint(store)):
        got = reader.get_metadata(1000)
        assert list(got) == list(metadata)
        assert all(type(got[k]) is type(metadata[k]) for k in metadata)
        assert {k: v for k, v in got.items() if k != "nan"} == {k: v for k, v in metadata.items() if k != "nan"}
        assert np.isnan(got["nan"])
        latest = reader.get_metadata()
        assert latest == {"np_int": 5, "np_float": 0.5, "np_bool": True}
        assert [type(v) for v in latest.values()] == [int, float, bool]
    with pytest.raises(ValueError, match="step 5"):
        ckpt.get_metadata(5)


def test_no_metadata_is_an_empty_dict(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Counter())
    assert ckpt.get_metadata() == {}


# --------------------------------------------------------------------------- damage


def test_damaged_newest_step_falls_back_to_the_previous_with_a_warning(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    advance_and_save(ckpt, Counter(), [0, 1, 2], keep=None)
    newest = Path(ckpt.list_checkpoints()[2])
    payload = first_payload(newest)
    flip_byte(payload)
    restored = Counter()
    reader = IteratorCheckpoint(store)
    with pytest.warns(CheckpointFallbackWarning, match=r"step 2 .*damaged.*falling back to step 1"):
        assert reader.restore(restored) is restored
    assert restored.i == 2
    latest = Counter()
    with pytest.warns(CheckpointFallbackWarning, match="falling back to step 1"):
        IteratorCheckpoint(store).restore_latest(latest)
    assert latest.i == 2
    with pytest.raises(CheckpointCorruptError, match=re.escape(payload.name)) as info:
        IteratorCheckpoint(store).restore(Counter(), step=2)
    assert isinstance(info.value, ValueError)
    # The reader that found the damage no longer offers the step; others find it on restore.
    assert list(reader.list_checkpoints()) == [0, 1]
    assert cli_main(["verify", "-q", str(store)]) == 1


def test_damaged_newest_manifest_is_skipped_with_a_warning(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    advance_and_save(ckpt, Counter(), [0, 1, 2], keep=None)
    flip_byte(Path(ckpt.list_checkpoints()[2]) / "manifest.json", offset=40)
    reader = IteratorCheckpoint(store)
    with pytest.warns(CheckpointFallbackWarning, match="damaged"):
        assert reader.get_latest_step() == 1
    restored = Counter()
    reader.restore(restored)  # warned once per row and reader
    assert restored.i == 2
    # The damaged row counts as the oldest for retention: it goes first.
    reader.save_to_directory(Counter(50), keep=2)
    assert len(row_dirs(store)) == 2
    assert list(IteratorCheckpoint(store).list_checkpoints()) == [1, 2]


def test_every_step_damaged(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    advance_and_save(ckpt, Counter(), [0, 1], keep=None)
    for path in ckpt.list_checkpoints().values():
        flip_byte(first_payload(Path(path)))
    with pytest.warns(CheckpointFallbackWarning):
        with pytest.raises(CheckpointCorruptError, match="no whole iterator checkpoint"):
            IteratorCheckpoint(store).restore(Counter())


# --------------------------------------------------------------------------- asynchronous saves


def blocked_persist(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make ``RowWriter.persist`` wait for ``gate``; ``entered`` is set once it is called."""
    gate, entered = threading.Event(), threading.Event()
    real = RowWriter.persist

    def persist(self: RowWriter, snapshot: Any, **kwargs: Any) -> Any:
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        return real(self, snapshot, **kwargs)

    monkeypatch.setattr(RowWriter, "persist", persist)
    return gate, entered


def test_async_save_returns_before_the_row_is_durable(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = IteratorCheckpoint(store, async_checkpointing=True)
    it = Counter()
    ckpt.save_to_directory(it)  # step 0, durable before the gate closes
    ckpt.wait_until_finished()
    gate, entered = blocked_persist(monkeypatch)
    next(it)
    # A save that waited for the blocked persist would fail in it ("the test never opened the gate").
    path = Path(ckpt.save_to_directory(it, keep=2))
    assert entered.wait(5)
    # Not published yet: no reader sees it, and the row directory does not exist.
    assert not path.exists()
    assert IteratorCheckpoint(store).list_checkpoints() == {0: str(row_dirs(store)[0])}
    it.i = 1000  # mutating the iterator after the save returned must not change what is saved
    gate.set()
    ckpt.wait_until_finished()
    assert path.is_dir() and verify_row(path) == []
    assert ckpt.list_checkpoints() == {0: str(row_dirs(store)[0]), 1: str(path)}
    restored = Counter()
    IteratorCheckpoint(store).restore(restored)
    assert restored.i == 1
    ckpt.close()


def test_async_snapshot_copies_arrays(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class ArrayState:
        def __init__(self) -> None:
            self.buffer = np.arange(1000, dtype=np.float64)

        def get_state(self) -> dict[str, Any]:
            return {"buffer": self.buffer}  # the live array, not a copy

        def set_state(self, state: dict[str, Any]) -> None:
            self.buffer = state["buffer"]

    ckpt = IteratorCheckpoint(store, async_checkpointing=True)
    gate, _ = blocked_persist(monkeypatch)
    source = ArrayState()
    ckpt.save_to_directory(source)
    source.buffer += 1  # in place, while the save is in flight
    gate.set()
    ckpt.wait_until_finished()
    target = ArrayState()
    IteratorCheckpoint(store).restore(target)
    assert np.array_equal(target.buffer, np.arange(1000, dtype=np.float64))


@pytest.mark.skipif(not HAVE_PROC_FD, reason="needs /proc/self/fd to map descriptors to paths")
@pytest.mark.parametrize(
    "next_call", ["wait_until_finished", "save_to_directory", "get_latest_step", "restore", "close"]
)
def test_async_background_failure_is_raised(store: Path, monkeypatch: pytest.MonkeyPatch, next_call: str) -> None:
    ckpt = IteratorCheckpoint(store, async_checkpointing=True)
    it = Counter()
    advance_and_save(ckpt, it, [0, 1], keep=2)
    ckpt.wait_until_finished()
    before = IteratorCheckpoint(store).list_checkpoints()
    with monkeypatch.context() as m:
        fail_staging_fsync(m)
        next(it)
        ckpt.save_to_directory(it, keep=1)  # returns: the failure happens in the background
        call = {
            "wait_until_finished": lambda: ckpt.wait_until_finished(),
            "save_to_directory": lambda: ckpt.save_to_directory(it, keep=1),
            "get_latest_step": lambda: ckpt.get_latest_step(),
            "restore": lambda: ckpt.restore(Counter()),
            "close": lambda: ckpt.close(),
        }[next_call]
        with pytest.raises(CheckpointWriteError, match="background commit failed") as info:
            call()
        assert info.value.errno == errno.ENOSPC
    assert IteratorCheckpoint(store).list_checkpoints() == before  # keep=1 retired nothing
    assert leftovers(store) == []
    # Raised once; the checkpoint goes on working.
    assert ckpt.get_latest_step() == 1
    ckpt.save_to_directory(it, keep=1)
    ckpt.close()
    assert list(IteratorCheckpoint(store).list_checkpoints()) == [2]


def test_async_saves_in_a_row_and_context_manager(store: Path) -> None:
    with PipelineCheckpoint(store, async_checkpointing=True) as ckpt:
        it = ShuffledArrayIterator(data_2d(40), batch_size=3, seed=np.random.Generator(np.random.MT19937(5)))
        for step in range(1, 301):
            next(it)
            ckpt.save_to_step(it, step, interval=50, keep=3)
        expected = take(it, 20)
    assert list(IteratorCheckpoint(store).list_checkpoints()) == [200, 250, 300]
    fresh = ShuffledArrayIterator(data_2d(40), batch_size=3, seed=np.random.Generator(np.random.MT19937(0)))
    IteratorCheckpoint(store).restore_latest(fresh)
    assert same_batches(take(fresh, 20), expected)


# --------------------------------------------------------------------------- state_dict adapter (torch)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()


def test_state_dict_objects_work_without_wrappers(tmp_path: Path) -> None:
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    batches = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    for x in batches[:3]:
        train_step(model, optimizer, x)
        scheduler.step()
    stores = {name: IteratorCheckpoint(tmp_path / name) for name in ("model", "optimizer", "scheduler")}
    stores["model"].save_to_directory(model)
    stores["optimizer"].save_to_directory(optimizer)
    stores["scheduler"].save_to_directory(scheduler)
    for name in stores:  # pickle-free: a JSON manifest, .npy payloads and packs of raw arrays only
        files = {p.suffix for p in (tmp_path / name / "commits").rglob("*") if p.is_file()}
        assert files <= {".json", ".npy", ".bin"}

    model2 = make_model(1)
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=2, gamma=0.5)
    assert stores["model"].restore(model2) is model2
    stores["optimizer"].restore(optimizer2)
    stores["scheduler"].restore(scheduler2)
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    for x in batches[3:]:
        train_step(model, optimizer, x)
        scheduler.step()
        train_step(model2, optimizer2, x)
        scheduler2.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_adapter_keeps_module_version_metadata() -> None:
    model = make_model(0)
    state = StateDictAdapter(model).get_state()
    assert type(state["state_dict"]) is dict and state["module_metadata"]["1"]["version"] == 2
    encoded = codec.encode(state)
    decoded = codec.decode(encoded.document, encoded.payloads.__getitem__)
    target = make_model(3)
    StateDictAdapter(target).set_state(decoded)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="state_dict"):
        StateDictAdapter(target).set_state({"i": 1})
    with pytest.raises(ValueError):
        StateDictAdapter(Nothing())


def test_get_state_wins_over_state_dict(store: Path) -> None:
    class Both(Counter):
        def state_dict(self) -> dict[str, Any]:
            raise AssertionError("get_state must be used")

        def load_state_dict(self, state: Any) -> None:
            raise AssertionError("set_state must be used")

    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Both(4))
    restored = Both()
    ckpt.restore(restored)
    assert restored.i == 4


def test_protocols_are_runtime_checkable() -> None:
    it = ShuffledArrayIterator(np.arange(4))
    assert isinstance(it, CheckpointableIterator) and isinstance(it, Checkpointable)
    assert isinstance(Counter(), CheckpointableIterator)
    assert not isinstance(OnlyGet(), Checkpointable)
    assert isinstance(EngineHandler(), IteratorCheckpointHandler)


# --------------------------------------------------------------------------- pluggable handler


class MemoryHandler:
    """Another format: states kept in a dict (the protocol of restartable.iterators.handler)."""

    def __init__(self) -> None:
        self.saved: dict[Any, dict[int, tuple[Any, dict[str, Any]]]] = {}
        self.calls: list[str] = []

    def save(
        self, directory: Any, state: Any, *, step: int, keep: int | None, overwrite: bool, metadata: dict[str, Any]
    ) -> str:
        self.calls.append(f"save {step} keep={keep} overwrite={overwrite}")
        steps = self.saved.setdefault(directory, {})
        steps[step] = (state, metadata)
        for old in sorted(steps)[: -keep if keep else 0]:
            del steps[old]
        return f"{directory}#{step}"

    def restore(self, directory: Any, step: int | None = None) -> Any:
        steps = self.saved.get(directory, {})
        if not steps:
            raise ValueError("nothing saved")
        return steps[max(steps) if step is None else step][0]

    def list_checkpoints(self, directory: Any) -> dict[int, str]:
        return {step: f"{directory}#{step}" for step in sorted(self.saved.get(directory, {}))}


def test_a_custom_handler_replaces_the_engine(tmp_path: Path) -> None:
    handler = MemoryHandler()
    ckpt = PipelineCheckpoint("memory://run-1", handler=handler, async_checkpointing=True)
    assert ckpt.base_dir == "memory://run-1" and ckpt.handler is handler
    it = Counter()
    for step in range(0, 40, 10):
        next(it)
        assert ckpt.save_to_step(it, step, interval=10, keep=2) == f"memory://run-1#{step}"
    assert list(ckpt.list_checkpoints()) == [20, 30]
    with pytest.raises(ValueError, match="overwrite"):
        ckpt.save_to_step(it, 30, interval=10)  # the front end enforces the rule for every handler
    restored = Counter()
    ckpt.restore_latest(restored)
    assert restored.i == 4
    with pytest.raises(NotImplementedError, match="read_metadata"):
        ckpt.get_metadata()
    ckpt.wait_until_finished()  # optional methods may be missing
    ckpt.close()
    assert handler.calls[0] == "save 0 keep=2 overwrite=False"
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the engine underneath


def test_cli_lists_steps_and_verifies(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = PipelineCheckpoint(store)
    it = ShuffledArrayIterator(data_2d(30), batch_size=4, seed=np.random.Generator(np.random.MT19937(2)))
    for step in range(0, 3001, 1000):
        next(it)
        ckpt.save_to_step(it, step, metadata={"loss": 0.5})
    capsys.readouterr()
    assert cli_main(["ls", str(store)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("row"))
    assert header.split()[:3] == ["row", "sequence", "step"]
    steps = [line.split()[2] for line in out.splitlines()[2:] if line.strip()]
    assert steps == ["0", "1000", "2000", "3000"]
    assert "loss=0.5" in out
    assert cli_main(["ls", "--json", str(store)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in report[0]["rows"]] == [0, 1000, 2000, 3000]
    assert cli_main(["show", str(store), "-1"]) == 0
    shown = capsys.readouterr().out
    assert "step: 3000" in shown and "ShuffledArrayIterator" in shown
    assert cli_main(["verify", str(store)]) == 0
    assert "4 row(s) checked, 0 damaged" in capsys.readouterr().out
    flip_byte(first_payload(Path(ckpt.list_checkpoints()[3000])))
    assert cli_main(["verify", str(store)]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_catalog_readers_understand_iterator_rows(store: Path) -> None:
    ckpt = IteratorCheckpoint(store)
    ckpt.save_to_directory(Counter(), step=7, metadata={"tag": "x"})
    entries = Checkpoint("reader", path=store).catalog
    assert len(entries) == 1 and entries[0].metadata == {"tag": "x"} and entries[0].state_ids == ("iterator",)


def test_one_writer_at_a_time(store: Path) -> None:
    from restartable import CheckpointLockedError

    with Checkpoint("holder", path=store):  # holds the writer lock of the directory
        with pytest.raises(CheckpointLockedError):
            IteratorCheckpoint(store).save_to_directory(Counter())
    IteratorCheckpoint(store).save_to_directory(Counter())


def test_writer_additions_name_and_retire_rows(store: Path) -> None:
    """The engine additions the iterator front end uses: ``persist(uid=...)``, ``row_path`` and ``retire``."""
    from restartable.store import Snapshot

    body = {"checkpoint": "x", "rank": 0, "world_size": 1, "level": 0, "mode": "append", "write_count": 0,
            "metadata": {}, "states": []}  # fmt: skip
    writer = RowWriter(store, keep=None)
    try:
        uid = "ab" * 16
        expected = writer.row_path(uid)
        first = writer.persist(Snapshot(body=body, payloads=[np.arange(3)]), uid=uid)
        assert first.path == expected and expected.is_dir()
        with pytest.raises(ValueError, match="hex"):
            writer.persist(Snapshot(body=body, payloads=[]), uid="not-hex")
        second = writer.persist(Snapshot(body=body, payloads=[]))
        assert writer.retire([first.path, store / "commits" / "missing"]) == []
        assert row_dirs(store) == [second.path] and leftovers(store) == []
    finally:
        writer.close()
    # The lock file names the last writer; locking again from this process rewrites nothing.
    assert (store / ".lock").read_text() == f"{os.getpid()}\n"
    again = RowWriter(store)
    again.close()
    assert (store / ".lock").read_text() == f"{os.getpid()}\n"
