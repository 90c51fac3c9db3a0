"""Rows do not share payload files: damage to one row leaves the others whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint, CheckpointFallbackWarning, bind_checkpoint_state

# This module damages and inspects named .npy payload files (see conftest.one_file_per_array).
pytestmark = pytest.mark.usefixtures("one_file_per_array")


@dataclass
class Slow:
    step: int = 0
    big: np.ndarray = field(default_factory=lambda: np.arange(1000.0))


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
