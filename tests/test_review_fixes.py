"""Regression tests for behaviours fixed after review of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restartable import (
    Checkpoint,
    CheckpointFallbackWarning,
    CheckpointSerializationError,
    bind_checkpoint_state,
)
from restartable.distributed import detect_rank_and_world_size


@dataclass
class Slow:
    step: int = 0
    big: np.ndarray = field(default_factory=lambda: np.arange(1000.0))


@dataclass
class Info:
    value: int = 3


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_unchanged_arrays_are_not_shared_by_default(store: Path) -> None:
    # With linking, one flipped byte would damage every row sharing the file.
    with Checkpoint("slow", path=store, mode="append") as session:
        state = bind_checkpoint_state(Slow())
        for step in (1, 2, 3):
            state.step = step  # the array does not change
            session.write(lead_time=step)
    entries = Checkpoint("slow", path=store, mode="append").catalog
    payloads = [entry.path / "p000000.npy" for entry in entries]
    assert all(p.stat().st_nlink == 1 for p in payloads)
    _flip_byte(payloads[-1])
    with pytest.warns(CheckpointFallbackWarning, match=entries[-1].commit_id):
        with Checkpoint("slow", path=store, mode="append") as session:
            restored = bind_checkpoint_state(Slow(step=-1))
            assert session.commit_id == entries[-2].commit_id
    assert restored.step == 2


@pytest.mark.parametrize("name", ["a/b", "/abs", "..", ".", "x\\y"])
def test_name_cannot_escape_the_store_root(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Checkpoint(name)


def test_metadata_may_not_hold_dataclasses(store: Path) -> None:
    with Checkpoint("meta", path=store) as session:
        session.write(lead_time=1)
        with pytest.raises(CheckpointSerializationError, match="Info"):
            session.write(lead_time=2, info=Info())
        # The failed boundary is not recorded: the session goes on cleanly.
        assert session.write_count == 1
        entry = session.write(lead_time=3)
        assert entry is not None and "info" not in entry.metadata and entry.write_count == 2
    entries = Checkpoint("meta", path=store).catalog
    assert [e.lead_time for e in entries] == [3]


def test_a_lone_local_rank_means_a_serial_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect_rank_and_world_size() == (0, 1)
    checkpoint = Checkpoint("serial")
    assert (checkpoint.rank, checkpoint.world_size) == (0, 1)
