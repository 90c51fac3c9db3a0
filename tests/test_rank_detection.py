"""How rank and world size are read from the launcher's environment."""

from __future__ import annotations

import pytest

from restartable import Checkpoint
from restartable.distributed import detect_rank_and_world_size


def test_a_lone_local_rank_means_a_serial_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect_rank_and_world_size() == (0, 1)
    checkpoint = Checkpoint("serial")
    assert (checkpoint.rank, checkpoint.world_size) == (0, 1)
