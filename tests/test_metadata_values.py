"""What a row's metadata may hold, and what a refused value does to the session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from restartable import Checkpoint, CheckpointSerializationError


@dataclass
class Info:
    value: int = 3


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
