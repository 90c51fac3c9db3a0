"""The file-system work of one commit does not depend on how many rows exist.

Every relevant function of the module :mod:`os` is wrapped with a counter
(the real function still runs); inside one open session, the operations of a
single commit are counted when 1, 100 and 400 rows exist. The counts must
be exactly equal. No timing is involved.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint, bind_checkpoint_state

OPS = (
    "listdir",
    "scandir",
    "stat",
    "lstat",
    "open",
    "close",
    "read",
    "write",
    "rename",
    "replace",
    "mkdir",
    "unlink",
    "rmdir",
    "fsync",
    "link",
)


class OpCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self.active = False
        for name in OPS:
            real = getattr(os, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                if self.active:
                    self.counts[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(os, name, wrapper)

    @contextmanager
    def measure(self) -> Iterator[Counter[str]]:
        self.counts = Counter()
        self.active = True
        try:
            yield self.counts
        finally:
            self.active = False


@dataclass
class CostState:
    step: int = 0
    data: np.ndarray = field(default_factory=lambda: np.zeros(128))


# commit number -> rows that exist before it
CHECKPOINTS = (2, 101, 401)
LAST = CHECKPOINTS[-1]


def run_commits(
    store: Path, counter: OpCounter, *, mode: str, history_size: int | None, state: str | None
) -> dict[int, Counter[str]]:
    """401 commits in one session; the ops of commits 2, 101 and 401 (a steady state for history 5 too)."""
    measured: dict[int, Counter[str]] = {}
    measure_at = set(CHECKPOINTS) | ({7} if history_size else set())
    with Checkpoint("cost", path=store, mode=mode, history_size=history_size, link_unchanged=True) as session:
        bound = bind_checkpoint_state(CostState()) if state else None
        for i in range(1, LAST + 1):
            if bound is not None:
                bound.step = i
                if state == "changing":
                    bound.data = np.full(128, float(i))
            if i in measure_at:
                with counter.measure() as counts:
                    entry = session.write(lead_time=i)
                measured[i] = Counter(counts)
            else:
                entry = session.write(lead_time=i)
            assert entry is not None and entry.lead_time == i
    entries = Checkpoint("cost", path=store, mode=mode).catalog
    expected_rows = {("append", None): LAST, ("overwrite", None): 1, ("append", 5): 5}[(mode, history_size)]
    assert len(entries) == expected_rows
    assert entries[-1].lead_time == LAST
    return measured


@pytest.mark.parametrize(
    "mode, history_size, retires",
    [("append", None, 0), ("overwrite", None, 1), ("append", 5, 1)],
    ids=["append-all", "overwrite", "append-history-5"],
)
def test_metadata_only_commit_cost_is_constant(
    store: Path, monkeypatch: pytest.MonkeyPatch, mode: str, history_size: int | None, retires: int
) -> None:
    counter = OpCounter(monkeypatch)
    measured = run_commits(store, counter, mode=mode, history_size=history_size, state=None)
    first_steady = 7 if history_size else 2
    reference = measured[first_steady]
    for i in CHECKPOINTS:
        if i >= first_steady:
            assert measured[i] == reference, (
                f"commit {i}: {dict(measured[i])} != commit {first_steady}: {dict(reference)}"
            )
    # What the design promises for one commit: no listing, one mkdir, the
    # manifest and two directories fsynced, one rename to publish and one
    # per retired row.
    assert reference["listdir"] == 0
    assert reference["mkdir"] == 1
    assert reference["fsync"] == 3
    assert reference["rename"] == 1 + retires
    assert reference["link"] == 0
    if not retires:
        assert reference["scandir"] == 0 and reference["unlink"] == 0 and reference["rmdir"] == 0
    else:
        assert reference["rmdir"] >= 1  # the retired row was deleted


@pytest.mark.parametrize("state", ["changing", "unchanged"])
def test_commit_cost_with_a_bound_array_is_constant(store: Path, monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    counter = OpCounter(monkeypatch)
    measured = run_commits(store, counter, mode="append", history_size=None, state=state)
    reference = measured[2]
    for i in CHECKPOINTS[1:]:
        assert measured[i] == reference, f"commit {i}: {dict(measured[i])} != commit 2: {dict(reference)}"
    assert reference["listdir"] == 0
    if state == "changing":
        # the payload is written and fsynced, plus the manifest and two directories
        assert reference["fsync"] == 4 and reference["link"] == 0
    else:
        # an unchanged array is hard-linked from the previous row, not written
        assert reference["fsync"] == 3 and reference["link"] == 1
