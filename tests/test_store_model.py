"""Random commits, crashes, retention changes and reopenings against a model of what must be visible.

A Hypothesis state machine drives a writer on a real store (memory and a
local directory) through a fault-injecting wrapper; after every step the
rows readers see are compared with a simple model: the committed rows the
retention policy keeps (the newest ``keep``, and the newest pinned row).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from restartable.errors import CheckpointCleanupWarning
from restartable.store import (
    FaultyRowStore,
    LocalRowStore,
    MemoryRowStore,
    RowStore,
    RowWriter,
    SimulatedCrash,
    Snapshot,
    scan_rows,
    verify_row,
)

# Crashing at one of these leaves the row unpublished; at any later one it is published.
_BEFORE_PUBLISH = {"stage", "write_payload", "finish_payloads", "publish"}


@dataclass(frozen=True)
class _Row:
    sequence: int
    step: int
    pinned: bool


def _retained(rows: list[_Row], keep: int | None) -> list[_Row]:
    if keep is None:
        return rows
    pinned = next((row for row in reversed(rows) if row.pinned), None)
    return [row for index, row in enumerate(rows) if index >= len(rows) - keep or row is pinned]


class StoreModel(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[_Row] = []
        self.uncertain = False  # a crash interrupted retention: older rows may or may not be gone
        self.step = 0
        self.keep: int | None = 2
        self.writer: RowWriter | None = None
        self.faulty: FaultyRowStore | None = None

    @initialize()
    def open_store(self) -> None:
        if self.backend == "memory":
            self.name = f"model-{uuid.uuid4().hex}"
            self.store: RowStore = MemoryRowStore(self.name)
        else:
            self.directory = tempfile.mkdtemp(prefix="restartable-model-")
            self.store = LocalRowStore(self.directory, durable=False)
        self._open_writer()

    def _open_writer(self) -> None:
        self.faulty = FaultyRowStore(self.store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointCleanupWarning)  # what a crash left is removed
            self.writer = RowWriter(self.faulty, keep=self.keep)

    def _commit(self, pin: bool) -> None:
        assert self.writer is not None
        self.step += 1
        payload = np.full(3, self.step, dtype=np.int32)
        row = self.writer.persist(Snapshot(body={"step": self.step}, payloads=[payload], pin=pin))
        self.rows = _retained([*self.rows, _Row(row.sequence, self.step, pin)], self.keep)
        self.uncertain = False

    @rule(pin=st.booleans())
    def commit(self, pin: bool) -> None:
        self._commit(pin)

    @rule(k=st.integers(min_value=1, max_value=8), pin=st.booleans())
    def crash_during_commit(self, k: int, pin: bool) -> None:
        assert self.writer is not None and self.faulty is not None
        self.faulty.arm(k, crash=True)
        try:
            self._commit(pin)
        except SimulatedCrash:
            crashed_at = self.faulty.log[-1]
            if crashed_at not in _BEFORE_PUBLISH:
                sequence = self.rows[-1].sequence + 1 if self.rows else None
                published = [row for row in scan_rows(self.store).rows if row.body["step"] == self.step]
                assert len(published) == 1, f"crash at {crashed_at} after publishing: the row must be there"
                assert sequence is None or published[0].sequence >= sequence
                self.rows = [*self.rows, _Row(published[0].sequence, self.step, pin)]
                self.uncertain = True
            with contextlib.suppress(SimulatedCrash):
                self.writer.close()
            self._open_writer()  # the restarted job
        else:
            self.faulty.disarm()

    @rule(keep=st.one_of(st.none(), st.integers(min_value=1, max_value=3)))
    def reopen(self, keep: int | None) -> None:
        assert self.writer is not None
        self.writer.close()
        self.keep = keep
        self._open_writer()

    @precondition(lambda self: self.rows)
    @rule()
    def restart_from_an_older_row(self) -> None:
        assert self.writer is not None
        target = self.rows[0].sequence if self.uncertain else self.rows[len(self.rows) // 2].sequence
        assert self.writer.restart_after(target) == []
        self.rows = [row for row in self.rows if row.sequence <= target]

    @invariant()
    def readers_see_what_the_model_says(self) -> None:
        if not hasattr(self, "store"):
            return
        scan = scan_rows(self.store)
        assert scan.problems == []
        seen = [(row.sequence, row.body["step"]) for row in scan.rows]
        expected = [(row.sequence, row.step) for row in self.rows]
        if self.uncertain:
            assert set(seen) <= set(expected) and seen[-1] == expected[-1], (seen, expected)
            self.rows = [row for row in self.rows if (row.sequence, row.step) in set(seen)]
        else:
            assert seen == expected
        for row in scan.rows:
            assert verify_row(self.store, row.name) == []
            assert row.read_payload(0).tolist() == [row.body["step"]] * 3

    def teardown(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(SimulatedCrash):
                self.writer.close()
        if self.backend == "memory" and hasattr(self, "name"):
            MemoryRowStore.forget(self.name)
        elif hasattr(self, "directory"):
            shutil.rmtree(self.directory, ignore_errors=True)


def test_an_older_pinned_row_is_kept_again_once_a_restart_retires_the_newer_pin() -> None:
    """The case Hypothesis found: pins made while retention was off, then a restart before the newer pin."""
    name = f"model-{uuid.uuid4().hex}"
    store = MemoryRowStore(name)
    try:

        def commit(writer: RowWriter, step: int, pin: bool) -> int:
            snapshot = Snapshot(body={"step": step}, payloads=[np.full(3, step, dtype=np.int32)], pin=pin)
            return writer.persist(snapshot).sequence

        writer = RowWriter(store, keep=None)
        first_pin = commit(writer, 1, pin=True)
        middle = commit(writer, 2, pin=False)
        commit(writer, 3, pin=True)
        writer.close()
        writer = RowWriter(store, keep=1)
        assert writer.restart_after(middle) == []
        newest = commit(writer, 4, pin=False)
        writer.close()
        assert [row.sequence for row in scan_rows(store).rows] == [first_pin, newest]
    finally:
        MemoryRowStore.forget(name)


class LocalStoreModel(StoreModel):
    backend = "local"


_SETTINGS = settings(max_examples=25, stateful_step_count=15, deadline=None)

TestMemoryStoreModel = StoreModel.TestCase
TestMemoryStoreModel.settings = _SETTINGS
TestLocalStoreModel = LocalStoreModel.TestCase
TestLocalStoreModel.settings = _SETTINGS

pytestmark = pytest.mark.filterwarnings("ignore::restartable.errors.CheckpointCleanupWarning")
